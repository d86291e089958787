"""Unit tests of the traffic stream processor with run_in_memory: measures, state, alarms, KPIs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.traffic.processors import TrafficSignalProcessor
from services.traffic.settings import TrafficSettings
from shared.contracts.traffic import HiResEventsLogged, IntersectionConfigured
from shared.stream import State, run_in_memory
from shared.testing import received

from .test_domain import REGISTRY, T0, two_cycles


@pytest.fixture
def proc() -> TrafficSignalProcessor:
    """A fresh processor: it remembers what it published (``changed_since_emitted``), as a worker does."""
    return TrafficSignalProcessor(TrafficSettings())


def registry_event(cid="C1", iid="I1", district="BD"):
    return received(
        IntersectionConfigured,
        {
            "intersection_id": iid,
            "controller_id": cid,
            "name": "Kim Mã - Giảng Võ",
            "district": district,
            "lat": 21.03,
            "lon": 105.82,
            "revision": 1,
            **REGISTRY,
        },
    )


def hires(events, cid="C1", iid="I1", district="BD", offset=0):
    return received(
        HiResEventsLogged,
        {
            "controller_id": cid,
            "intersection_id": iid,
            "district": district,
            "events": [
                {"t": datetime.fromtimestamp(t / 1000, UTC).isoformat(), "code": c, "param": p}
                for t, c, p in events
            ],
        },
        offset=offset,
    )


def payloads(out, type_suffix):
    res = []
    for ev in out:
        ce_type = dict(ev.headers)["ce_type"].decode()
        if ce_type.endswith(type_suffix):
            res.append(orjson.loads(ev.value))
    return res


def end_of_bin_event():
    # event time 1206 s: past the bin end + 300 s grace + 5 s reorder hold
    return [
        (round((T0 + timedelta(seconds=1200)).timestamp() * 1000), 43, 4),
        (round((T0 + timedelta(seconds=1206)).timestamp() * 1000), 43, 4),
    ]


def test_measures_and_kpis_from_chunks_split_across_records(proc):
    events = two_cycles()
    half = len(events) // 2
    evs = [
        registry_event(),
        hires(events[:half], offset=1),
        hires(events[half:], offset=2),
        hires(end_of_bin_event(), offset=3),
    ]
    _, out = run_in_memory(proc, evs, now=T0 + timedelta(seconds=1210))
    measures = payloads(out, "phase_measures.computed.v1")
    p2 = next(m for m in measures if m["phase"] == 2)
    assert p2["intersection_id"] == "I1" and p2["district"] == "BD"
    assert p2["bin_start"].startswith("2024-05-01T08:00:00")
    assert (p2["arrivals"], p2["arrivals_on_green"], p2["split_failures"], p2["split_failure_cycles"]) == (
        7,
        3,
        1,
        2,
    )
    assert p2["ped_delay_seconds_avg"] == pytest.approx(24)
    # the 08:00 bin's observations (the 08:15 bin, opened by the end-of-bin events, is live as well)
    kpis = {
        (k["kpi"], k["scope_level"], k["scope_code"]): k
        for k in payloads(out, "kpi.observed.v1")
        if k["kpi"] == "traffic.signals_in_fault" or k["window_start"].startswith("2024-05-01T08:00:00")
    }
    aog = kpis[("traffic.arrivals_on_green_ratio", "district", "BD")]
    assert (aog["numerator"], aog["denominator"]) == (3.0, 7.0)
    assert aog["value"] == pytest.approx(300 / 7)
    sf = kpis[("traffic.split_failure_ratio", "city", "HN")]
    assert sf["value"] == pytest.approx(50.0) and sf["window_seconds"] == 900
    assert kpis[("traffic.volume_vehicles", "city", "HN")]["numerator"] == 8.0  # 7 advance + 1 count
    assert kpis[("traffic.intersections_reporting", "district", "BD")]["numerator"] == 1.0
    assert kpis[("traffic.ped_delay_seconds", "district", "BD")]["value"] == pytest.approx(24)
    assert kpis[("traffic.signals_in_fault", "city", "HN")]["numerator"] == 0.0
    assert all(k["partition"] == 0 for k in kpis.values())
    states = payloads(out, "signal_state.changed.v1")
    assert states and states[-1]["intersection_id"] == "I1"


def test_events_wait_for_registry_then_use_detector_config(proc):
    # hi-res arrives before the registry record: arrivals still classified once the configuration is known
    evs = [hires(two_cycles(), offset=1), registry_event(), hires(end_of_bin_event(), offset=2)]
    _, out = run_in_memory(proc, evs, now=T0 + timedelta(seconds=1210))
    p2 = next(m for m in payloads(out, "phase_measures.computed.v1") if m["phase"] == 2)
    assert p2["arrivals"] == 7


def test_without_registry_events_wait_30_s_of_arrival_time_then_count_anyway(proc):
    ev = hires([*two_cycles(), *end_of_bin_event()])
    states, out = run_in_memory(proc, [ev], now=datetime.fromtimestamp(ev.timestamp_ms / 1000 + 10, UTC))
    assert payloads(out, "phase_measures.computed.v1") == []  # held: the configuration may still come
    later = list(proc.emit(states[0], datetime.fromtimestamp(ev.timestamp_ms / 1000 + 31, UTC)))
    p2 = next(m for m in payloads(later, "phase_measures.computed.v1") if m["phase"] == 2)
    assert p2["cycles"] == 2 and p2["arrivals"] == 0  # no detector configuration: no arrivals known


def test_open_bin_is_not_published_before_grace(proc):
    evs = [registry_event(), hires(two_cycles(), offset=1)]
    _, out = run_in_memory(proc, evs, now=T0 + timedelta(seconds=200))
    assert payloads(out, "phase_measures.computed.v1") == []


def test_alarms_and_signals_in_fault(proc):
    t = round(T0.timestamp() * 1000)
    evs = [registry_event(), hires([(t, 1, 2), (t + 1000, 173, 1), (t + 20_000, 87, 2), (t + 30_000, 43, 2)])]
    states, out = run_in_memory(proc, evs, now=T0 + timedelta(seconds=40))
    alarms = payloads(out, "alarm.changed.v1")
    assert {(a["alarm_id"], a["state"], a["severity"]) for a in alarms} == {
        ("traffic:controller_flash:I1", "raised", "major"),
        ("traffic:detector_fault:I1:2", "raised", "minor"),
    }
    assert all(a["source_id"] == "I1" and a["district"] == "BD" for a in alarms)
    faults = {
        (k["scope_level"], k["scope_code"]): k["numerator"]
        for k in payloads(out, "kpi.observed.v1")
        if k["kpi"] == "traffic.signals_in_fault"
    }
    assert faults == {("district", "BD"): 1.0, ("city", "HN"): 1.0}
    state = payloads(out, "signal_state.changed.v1")[-1]
    assert state["flash"] is True and {p["color"] for p in state["phases"]} == {"flashing"}
    # a second emit with nothing new publishes nothing again
    assert list(proc.emit(states[0], T0 + timedelta(seconds=41))) == []


def test_comm_loss_raised_on_silence_and_cleared_on_next_event(proc):
    t = round(T0.timestamp() * 1000)
    ev = hires([(t, 1, 2)])
    states, _ = run_in_memory(proc, [registry_event(), ev], now=T0)
    st = states[0]
    silent_until = datetime.fromtimestamp(ev.timestamp_ms / 1000 + 301, UTC)
    out = list(proc.emit(st, silent_until))
    raised = payloads(out, "alarm.changed.v1")
    assert [(a["alarm_type"], a["state"]) for a in raised] == [("comm_loss", "raised")]
    again = hires([(t + 400_000, 8, 2)])
    proc.apply(again, st)
    soon_after = datetime.fromtimestamp(again.timestamp_ms / 1000 + 1, UTC)
    cleared = payloads(list(proc.emit(st, soon_after)), "alarm.changed.v1")
    assert [(a["alarm_type"], a["state"]) for a in cleared] == [("comm_loss", "cleared")]


def test_every_published_kpi_is_defined_with_its_unit(proc):
    from pathlib import Path

    import shared.kpis as kpis_pkg
    from shared.kpis import load_file

    defs = {d.id: d for d in load_file(Path(kpis_pkg.__file__).parent / "traffic.yaml")}
    evs = [registry_event(), hires([*two_cycles(), *end_of_bin_event()])]
    _, out = run_in_memory(proc, evs, now=T0 + timedelta(seconds=1210))
    seen = {(k["kpi"], k["unit"]) for k in payloads(out, "kpi.observed.v1")}
    for ev in out:  # an observation's CloudEvents time is when it was observed
        if ev.type.endswith("kpi.observed.v1"):
            assert dict(ev.headers)["ce_time"].decode() == orjson.loads(ev.value)["observed_at"]
    assert {kpi for kpi, _ in seen} == set(defs)
    for kpi, unit in seen:
        assert defs[kpi].unit == unit
        assert defs[kpi].combine in ("sum", "ratio")


# --- live (provisional) KPIs of the open bin ------------------------------------------------------------------
def ms(seconds: float) -> int:
    return round((T0 + timedelta(seconds=seconds)).timestamp() * 1000)


def bin_kpis(out, window="2024-05-01T08:00:00"):
    """District/city roll-ups of one window, by (kpi, level, code) (the latest of each, as consumers keep)."""
    return {
        (k["kpi"], k["scope_level"], k["scope_code"]): k
        for k in payloads(out, "kpi.observed.v1")
        if k["kpi"] != "traffic.signals_in_fault" and k["window_start"].startswith(window)
    }


def feed(proc, state, events, offset):
    proc.apply(hires(events, offset=offset), state)


def test_provisional_kpis_follow_the_cycles_complete_in_the_open_bin_then_the_final_supersedes_them():
    proc = TrafficSignalProcessor(TrafficSettings())
    events = two_cycles()
    first = [e for e in events if e[0] <= ms(80)]  # through cycle 1 (red at 64 s) and its split-failure check
    rest = [e for e in events if e[0] > ms(80)]
    states, out = run_in_memory(
        proc, [registry_event(), hires(first, offset=1)], now=T0 + timedelta(seconds=81)
    )
    st = states[0]
    published = list(out)  # everything published, in order: consumers keep the latest per key
    assert payloads(out, "phase_measures.computed.v1") == []  # measures stay final-only
    live = bin_kpis(out)
    # cycle 1 alone: arrivals at the stop bar 15, 25 (red: 15 + 5 s delay), 35, 55 (green), 61 (yellow)
    aog = live[("traffic.arrivals_on_green_ratio", "district", "BD")]
    assert (aog["numerator"], aog["denominator"]) == (2.0, 5.0)
    assert aog["value"] == pytest.approx(40.0) and aog["window_seconds"] == 900 and aog["partition"] == 0
    # no split-failure cycle yet: cycle 1 is evaluated when the next green (94 s) closes it (issue #35)
    sf = live[("traffic.split_failure_ratio", "city", "HN")]
    assert (sf["numerator"], sf["denominator"], sf["value"]) == (0.0, 0.0, None)
    assert live[("traffic.volume_vehicles", "district", "BD")]["numerator"] == 6.0  # advance 10..62 s
    assert live[("traffic.approach_delay_seconds", "city", "HN")]["value"] == pytest.approx(20 / 5)
    assert live[("traffic.ped_delay_seconds", "city", "HN")]["value"] is None  # no walk served yet
    assert live[("traffic.intersections_reporting", "city", "HN")]["numerator"] == 1.0
    # event time 0-75 s: minute 0 is over and had data; the current minute is not counted yet
    assert live[("traffic.data_completeness_ratio", "city", "HN")]["value"] == pytest.approx(100.0)
    assert {k for k, _, _ in live} == set(BIN_KPI_IDS)

    # throttled: 10 s more event time (a minute of wall time) publishes no new roll-up
    feed(proc, st, [e for e in rest if e[0] <= ms(90)], 2)
    assert bin_kpis(proc.emit(st, T0 + timedelta(seconds=141))) == {}

    # both cycles complete (plus cycle 2's split-failure check at 133 s): 30 s of event time later, updated
    feed(proc, st, [e for e in rest if e[0] > ms(90)] + [(ms(145), 43, 4)], 3)
    out = list(proc.emit(st, T0 + timedelta(seconds=146)))
    published += out
    assert payloads(out, "phase_measures.computed.v1") == []
    live = bin_kpis(out)
    aog = live[("traffic.arrivals_on_green_ratio", "city", "HN")]
    assert (aog["numerator"], aog["denominator"]) == (3.0, 7.0)  # cycle 2 adds 67 s (red), 105 s (green)
    assert aog["value"] == pytest.approx(300 / 7)
    # cycle 1 evaluated at the green of 94 s; cycle 2 waits for the green of 150 s, beyond the reorder hold
    sf = live[("traffic.split_failure_ratio", "district", "BD")]
    assert (sf["numerator"], sf["denominator"], sf["value"]) == (1.0, 1.0, 100.0)
    assert live[("traffic.volume_vehicles", "city", "HN")]["numerator"] == 8.0
    assert live[("traffic.approach_delay_seconds", "city", "HN")]["value"] == pytest.approx((20 + 27) / 7)
    assert live[("traffic.ped_delay_seconds", "city", "HN")]["value"] == pytest.approx(24)
    # nothing new: nothing published again
    assert bin_kpis(proc.emit(st, T0 + timedelta(seconds=300))) == {}

    # bin end + grace passed: the full-bin measures and the final roll-up (same window) are published
    feed(proc, st, end_of_bin_event(), 4)
    out = list(proc.emit(st, T0 + timedelta(seconds=1210)))
    # only what changed since the last provisional observations is published again (the split failures too:
    # cycle 2 was evaluated after the last provisional roll-up)
    assert set(bin_kpis(out)) == {
        (k, level, code)
        for k in ("traffic.data_completeness_ratio", "traffic.split_failure_ratio")
        for level, code in (("district", "BD"), ("city", "HN"))
    }
    published += out
    final = bin_kpis(published)
    aog = final[("traffic.arrivals_on_green_ratio", "district", "BD")]
    assert (aog["numerator"], aog["denominator"]) == (3.0, 7.0)
    assert final[("traffic.split_failure_ratio", "city", "HN")]["value"] == pytest.approx(50.0)
    assert final[("traffic.volume_vehicles", "city", "HN")]["numerator"] == 8.0
    # the final completeness covers all 15 minutes: data in minutes 0, 1, 2 only
    assert final[("traffic.data_completeness_ratio", "city", "HN")]["value"] == pytest.approx(300 / 15)
    p2 = next(m for m in payloads(out, "phase_measures.computed.v1") if m["phase"] == 2)
    assert (p2["arrivals"], p2["arrivals_on_green"], p2["split_failures"], p2["split_failure_cycles"]) == (
        7,
        3,
        1,
        2,
    )
    # the next bin (opened by the end-of-bin events) is live in its own window
    assert bin_kpis(out, "2024-05-01T08:15:00")


BIN_KPI_IDS = (
    "traffic.volume_vehicles",
    "traffic.arrivals_on_green_ratio",
    "traffic.split_failure_ratio",
    "traffic.approach_delay_seconds",
    "traffic.ped_delay_seconds",
    "traffic.intersections_reporting",
    "traffic.data_completeness_ratio",
    "traffic.red_light_running_actuations",
    "traffic.ped_actuations",
    "traffic.detectors_unhealthy",
    "traffic.ped_volume_estimate",
)


def test_final_measures_and_kpis_are_the_same_with_and_without_live_kpis():
    def run(live_seconds):
        proc = TrafficSignalProcessor(TrafficSettings(live_kpi_seconds=live_seconds))
        events = two_cycles()
        states, outs = run_in_memory(proc, [registry_event()], now=T0)
        st = states[0]
        outs = list(outs)
        for i, t in enumerate(range(0, 181, 10)):  # records of 10 s of events, an emit after each
            chunk = [e for e in events if ms(t) <= e[0] < ms(t + 10)] or [(ms(t), 43, 4)]
            feed(proc, st, chunk, i + 1)
            outs += proc.emit(st, T0 + timedelta(seconds=t + 10))
        feed(proc, st, end_of_bin_event(), 99)
        final_out = list(proc.emit(st, T0 + timedelta(seconds=1210)))
        return outs, final_out

    live_outs, live_final = run(30.0)
    off_outs, off_final = run(0)
    assert bin_kpis(off_outs) == {} and bin_kpis(live_outs)  # provisional KPIs only when live
    assert (
        payloads(live_outs, "phase_measures.computed.v1")
        == payloads(off_outs, "phase_measures.computed.v1")
        == []
    )

    def measures(out):
        return sorted(
            (m["phase"], {k: v for k, v in m.items() if k != "computed_at"})
            for m in payloads(out, "phase_measures.computed.v1")
        )

    assert measures(live_final) == measures(off_final) and len(measures(live_final)) == 2

    def values(out):
        return {k: (v["numerator"], v["denominator"], v["value"]) for k, v in bin_kpis(out).items()}

    # what consumers hold (the latest per key) is the same; with live KPIs the final emit re-publishes only the
    # observations the closed bin changed
    assert values([*live_outs, *live_final]) == values([*off_outs, *off_final]) == values(off_final)
    assert values(off_final)[("traffic.arrivals_on_green_ratio", "city", "HN")] == (
        3.0,
        7.0,
        pytest.approx(300 / 7),
    )
    assert len(bin_kpis(live_final)) < len(bin_kpis(off_final))


def test_window_value_keeps_other_open_bins_when_one_intersection_closes_first():
    proc = TrafficSignalProcessor(TrafficSettings())
    a = two_cycles()
    b = [(t + 5_000, c, p) for t, c, p in two_cycles()]  # I2 in another district, 5 s later
    evs = [
        registry_event(),
        registry_event("C2", "I2", "HK"),
        hires(a, offset=1),
        hires(b, "C2", "I2", "HK", offset=2),
    ]
    states, published = run_in_memory(proc, evs, now=T0 + timedelta(seconds=200))
    st = states[0]
    # I1's bin closes (its event time passes 08:15 + grace); I2's does not yet
    proc.apply(hires(end_of_bin_event(), offset=3), st)
    out = list(proc.emit(st, T0 + timedelta(seconds=1210)))
    assert {m["intersection_id"] for m in payloads(out, "phase_measures.computed.v1")} == {"I1"}
    published += out
    k = bin_kpis(published)
    assert (
        k[("traffic.arrivals_on_green_ratio", "district", "BD")]["numerator"],
        k[("traffic.arrivals_on_green_ratio", "district", "BD")]["denominator"],
    ) == (3.0, 7.0)
    # I2's open bin counts with its complete cycles: the city value does not dip to I1 alone
    city = k[("traffic.arrivals_on_green_ratio", "city", "HN")]
    assert (city["numerator"], city["denominator"]) == (6.0, 14.0)
    assert k[("traffic.intersections_reporting", "city", "HN")]["numerator"] == 2.0
    proc.apply(hires([(ms(1206), 43, 4), (ms(1212), 43, 4)], "C2", "I2", "HK", offset=4), st)
    out = list(proc.emit(st, T0 + timedelta(seconds=1215)))
    assert {m["intersection_id"] for m in payloads(out, "phase_measures.computed.v1")} == {"I2"}
    published += out
    city = bin_kpis(published)[("traffic.arrivals_on_green_ratio", "city", "HN")]
    assert (city["numerator"], city["denominator"]) == (6.0, 14.0)


# --- batching, exact payloads, republishing only what changed --------------------------------------------------
def simulated_log(minutes: int = 40):
    """Registry records and the time-ordered logs of three simulated controllers over ``minutes`` (event time)."""
    import random

    from services.traffic.simulator import build_intersections

    start = T0.timestamp()
    items, sims = build_intersections(0.01, random.Random(5), start)
    regs = [received(IntersectionConfigured, {**item, "revision": 1}) for item in items]
    logs = {}
    for item, sim in zip(items, sims, strict=True):
        logs[item["controller_id"]] = (
            item,
            sorted(
                {(round(t * 1000), code, param) for t, code, param in sim.events_until(start + minutes * 60)}
            ),
        )
    return regs, logs


def hires_of(item, events, offset):
    return hires(
        events,
        cid=item["controller_id"],
        iid=item["intersection_id"],
        district=item["district"],
        offset=offset,
    )


def latest_kpis(out):
    """What a consumer holds: the latest observation per (kpi, scope, window), without its observation time."""
    return {
        (k["key"], k["window_start"]): {f: v for f, v in k.items() if f != "observed_at"}
        for k in payloads(out, "kpi.observed.v1")
        if k["kpi"] != "traffic.signals_in_fault"
    }


def test_batched_records_give_the_same_results_as_one_event_per_record():
    regs, logs = simulated_log()
    later = datetime.now(UTC) + timedelta(seconds=2000)  # every controller silent: all bins close

    # reference: one record per event, applied one by one, a single emit at the end
    per_event = [*regs]
    for item, events in logs.values():
        per_event += [hires_of(item, [e], len(per_event)) for e in events]
    _, ref = run_in_memory(TrafficSignalProcessor(TrafficSettings()), per_event, now=later)

    # records of 10 s of a controller's events, fetched in batches through apply_batch, emits in between
    proc = TrafficSignalProcessor(TrafficSettings())
    state = State(0)
    proc.apply_batch(regs, state)
    chunks: dict[tuple[int, str], list] = {}
    for cid, (_, events) in logs.items():
        for e in events:
            chunks.setdefault((e[0] // 10_000, cid), []).append(e)
    records = [hires_of(logs[cid][0], chunk, i) for i, ((_, cid), chunk) in enumerate(sorted(chunks.items()))]
    out = []
    for i in range(0, len(records), 7):
        proc.apply_batch(records[i : i + 7], state)
        out += proc.emit(state, T0 + timedelta(seconds=i))
    out += proc.emit(state, later)

    def measures(o):
        return sorted(
            orjson.dumps({k: v for k, v in m.items() if k != "computed_at"}, option=orjson.OPT_SORT_KEYS)
            for m in payloads(o, "phase_measures.computed.v1")
        )

    assert (
        measures(out) == measures(ref) and len(measures(ref)) >= 3 * 4 * 3
    )  # 3 controllers × 4 phases × 3 bins
    assert latest_kpis(out) == latest_kpis(ref)

    def by_source(o, type_suffix):  # controllers are emitted in the order the partition first saw them
        return sorted(orjson.dumps(a, option=orjson.OPT_SORT_KEYS) for a in payloads(o, type_suffix))

    assert by_source(out, "alarm.changed.v1") == by_source(ref, "alarm.changed.v1")
    last_state = {s["intersection_id"]: s for s in payloads(out, "signal_state.changed.v1")}
    assert by_source(ref, "signal_state.changed.v1") == sorted(
        orjson.dumps(s, option=orjson.OPT_SORT_KEYS) for s in last_state.values()
    )


def test_every_output_is_exactly_its_contract_models_dump():
    from shared.contracts.base import EVENT_TYPES

    regs, logs = simulated_log(20)
    evs = [*regs, *(hires_of(item, events, i) for i, (item, events) in enumerate(logs.values()))]
    evs.append(hires_of(regs[0].data, [(ms(3 * 60 * 60), 43, 2)], 99))  # past bin end + grace: bins close
    _, out = run_in_memory(TrafficSignalProcessor(TrafficSettings()), evs, now=T0 + timedelta(hours=3))
    kinds = set()
    for ev in out:
        etype = EVENT_TYPES[ev.type]
        payload = orjson.loads(ev.value)
        dumped = etype.model.model_validate(payload).model_dump(mode="json")
        assert list(payload.items()) == list(dumped.items()), ev.type  # same values, types and field order
        assert ev.value == orjson.dumps(dumped)
        kinds.add(ev.type.split(".")[2])
    assert kinds >= {"signal_state", "phase_measures", "kpi"}


def test_unchanged_kpis_are_not_published_again_until_the_partition_is_reloaded(proc):
    states, out = run_in_memory(
        proc,
        [registry_event(), hires([*two_cycles(), (ms(145), 43, 4)], offset=1)],
        now=T0 + timedelta(seconds=150),
    )
    st = states[0]
    first = bin_kpis(out)
    assert len(first) == 2 * len(BIN_KPI_IDS)  # district BD and the city
    # 40 s more event time (controller calls only: no cycle completes) makes the window due again: same values
    feed(proc, st, [(ms(180), 43, 4)], 2)
    assert bin_kpis(proc.emit(st, T0 + timedelta(seconds=200))) == {}
    # the runtime forgets what was published when it reloads the partition: everything is published once more
    proc.forget_emitted([0])
    feed(proc, st, [(ms(220), 43, 4)], 3)
    again = bin_kpis(proc.emit(st, T0 + timedelta(seconds=260)))
    assert {k: (v["numerator"], v["denominator"]) for k, v in again.items()} == {
        k: (v["numerator"], v["denominator"]) for k, v in first.items()
    }


def test_fast_time_text_paths_match_the_datetime_library():
    import random

    from services.traffic.domain import from_ms, iso_ms
    from services.traffic.processors import _ms

    rnd = random.Random(11)
    for _ in range(20_000):
        t = (
            rnd.randrange(1_500_000_000_000, 2_100_000_000_000) // rnd.choice((1, 1000)) * 1
        )  # ms and whole seconds
        t = t if t > 10**12 else t * 1000
        text = iso_ms(t)
        assert text == from_ms(t).isoformat().replace("+00:00", "Z")
        assert _ms(text) == t == round(datetime.fromisoformat(text).timestamp() * 1000)
    for text in ("2024-05-01T08:00:00.123456Z", "2024-05-01T15:00:00+07:00", "2024-05-01T08:00:00.5+00:00"):
        assert _ms(text) == round(datetime.fromisoformat(text).timestamp() * 1000)


def test_kpi_definitions_declare_how_long_late_bins_revise_a_window():
    """The city keeps a window as long as its KPI definition says the source may revise it; late bins still
    merge into a district window ``KPI_WINDOW_RETENTION_MS`` behind the newest one."""
    from services.traffic.processors import KPI_WINDOW_RETENTION_MS
    from shared.kpis import all_definitions

    traffic = [d for d in all_definitions().values() if d.domain == "traffic"]
    assert traffic
    for d in traffic:
        for w in d.windows:
            assert d.revisable_for(w) * 1000 >= KPI_WINDOW_RETENTION_MS, (d.id, w)


def test_a_backfill_is_measured_apart_and_completed_by_its_final_chunk(proc):
    """History (backfill chunks) gets its own engine: no live signal state or alarms from it, the live
    controller's bins are not disturbed, and its final chunk publishes every bin without any wait."""
    t0 = round(T0.timestamp() * 1000)
    live = hires([(t0 + 3 * 3600_000, 1, 2)], offset=1)  # the controller is live three hours later
    history = [*two_cycles(), (t0 + 30_000, 173, 1)]  # a flash in the history raises no alarm now

    def backfill(events, final, offset):
        ev = hires(events, offset=offset)
        ev.data["backfill"], ev.data["final"] = True, final
        return ev

    states, out = run_in_memory(
        proc,
        [registry_event(), live, backfill(history[:20], False, 2), backfill(history[20:], True, 3)],
        now=T0 + timedelta(hours=3, seconds=1),
    )
    measures = payloads(out, "phase_measures.computed.v1")
    p2 = next(m for m in measures if m["phase"] == 2)
    assert p2["bin_start"].startswith("2024-05-01T08:00:00")
    assert (p2["arrivals"], p2["arrivals_on_green"], p2["split_failures"], p2["split_failure_cycles"]) == (
        7,
        3,
        1,
        2,
    )
    assert payloads(out, "alarm.changed.v1") == []
    # the signal state published is the live one (green at 11:00), untouched by the history
    (state,) = payloads(out, "signal_state.changed.v1")
    assert state["flash"] is False and state["at"].startswith("2024-05-01T11:00:00")
    assert [k for k in states[0].keys("b:")] == []  # the finished backfill's state is gone
    live_state = states[0].get("c:C1")  # the live controller holds only its own event (in the reorder hold)
    assert [e[0] for e in live_state["buf"]] == [t0 + 3 * 3600_000] and not live_state["eng"].get("bins")
