"""The kiosk KPI processor, in memory: offline from silence, alarms, availability and session rates."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from services.kiosk.processors import T_PERIPHERAL, KioskKpiProcessor
from shared.contracts.kiosk import (
    HeartbeatReceived,
    KioskRegistered,
    PeripheralStatusChanged,
    SessionEnded,
)
from shared.stream import run_in_memory
from shared.testing import received

MON = datetime(2024, 5, 6, tzinfo=UTC).timestamp()  # a Monday
H = 3600
ALL_DAY = [{"days": [1, 2, 3, 4, 5, 6, 7], "open": "00:00", "close": "24:00"}]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def reg(kiosk, district, partition, hours=ALL_DAY):
    return received(
        KioskRegistered,
        {
            "kiosk_id": kiosk,
            "building": "Tòa nhà",
            "address": "1 Phố",
            "district": district,
            "commune": None,
            "opening_hours": hours,
            "peripherals": ["touchscreen", "printer"],
            "software_version": "2.1",
            "in_service_since": iso(MON - 30 * 24 * H),
            "active": True,
            "version": 1,
        },
        partition=partition,
    )


def hbs(kiosk, start, end, partition):
    out, t = [], start
    while t <= end:
        out.append(
            received(
                HeartbeatReceived,
                {"kiosk_id": kiosk, "at": iso(t), "app_version": "2.1"},
                partition=partition,
            )
        )
        t += 60
    return out


def session(kiosk, i, start, outcome, rating=None, partition=0):
    return received(
        SessionEnded,
        {
            "session_id": f"s{i}",
            "kiosk_id": kiosk,
            "journey": "print_result",
            "started_at": iso(start),
            "ended_at": iso(start + 90),
            "outcome": outcome,
            "rating": rating,
            "failure_reason": "device_fault" if outcome == "failed" else None,
        },
        partition=partition,
    )


def printer(kiosk, t, paper, partition=0):
    return received(
        PeripheralStatusChanged,
        {"kiosk_id": kiosk, "peripheral": "printer", "state": "online", "paper": paper, "at": iso(t)},
        partition=partition,
    )


def payloads(events, topic):
    return [orjson.loads(e.value) for e in events if e.topic == topic]


def kpi(events, kpi_id, code, window_seconds=H, window_start=MON + H):
    """The one observation of a KPI for an area and window (the hour 01:00 UTC by default)."""
    start = iso(window_start).replace("+00:00", "Z")
    found = [
        p
        for p in payloads(events, "ioc.kiosk.kpis")
        if p["kpi"] == kpi_id
        and p["scope_code"] == code
        and p["window_seconds"] == window_seconds
        and p["window_start"] == start
    ]
    assert len(found) == 1, (kpi_id, code, found)
    return found[0]


@pytest.fixture
def scenario():
    """K-A (district BD, partition 0) works all hour; K-B (HK, partition 1) goes silent at 01:30 UTC."""
    now = MON + H + 3540
    events = [reg("K-A", "BD", 0), reg("K-B", "HK", 1)]
    events += hbs("K-A", MON + H, now, 0) + hbs("K-B", MON + H, MON + 1.5 * H, 1)
    outcomes = ["completed"] * 7 + ["abandoned"] * 2 + ["failed"]
    ratings = [5, 4, 3] + [None] * 7
    events += [
        session("K-A", i, MON + H + i * 60, o, r)
        for i, (o, r) in enumerate(zip(outcomes, ratings, strict=True))
    ]
    events += [printer("K-A", MON + 1.25 * H, "out"), printer("K-A", MON + 1.75 * H, "full")]
    proc = KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=30)
    states, out = run_in_memory(proc, events, datetime.fromtimestamp(now, UTC))
    return proc, states, out, now


def test_kpis_per_district_and_partition(scenario):
    _, _, out, _ = scenario
    assert kpi(out, "kiosk.technical_availability", "BD")["value"] == 100.0
    hk = kpi(out, "kiosk.technical_availability", "HK")
    assert (hk["numerator"], hk["denominator"]) == (1800.0, 3540.0)  # 01:00-01:30 of 01:00-01:59
    assert hk["value"] == pytest.approx(1800 / 3540 * 100)
    assert kpi(out, "kiosk.session_success_rate", "BD")["value"] == 70.0
    assert kpi(out, "kiosk.abandonment_rate", "BD")["value"] == 20.0
    assert kpi(out, "kiosk.satisfaction_score", "BD")["value"] == 4.0
    f = kpi(out, "kiosk.faults_per_1000_sessions", "BD")
    assert (f["numerator"], f["denominator"], f["value"]) == (1.0, 10.0, 100.0)
    assert kpi(out, "kiosk.mttr_seconds.paper_out", "BD")["value"] == 1800.0
    spk = kpi(out, "kiosk.sessions_per_kiosk_hour", "BD")
    assert spk["value"] == pytest.approx(10 / (3540 / 3600))
    # No paper for 30 of the 59 minutes: printing unavailable then; looking up procedures was fine.
    assert kpi(out, "kiosk.functional_availability.print_result", "BD")["value"] == pytest.approx(
        1740 / 3540 * 100
    )
    assert kpi(out, "kiosk.functional_availability.lookup_procedure", "BD")["value"] == 100.0
    # City observations are per partition, marked with it, and mergeable by sum of parts.
    cities = [
        p
        for p in payloads(out, "ioc.kiosk.kpis")
        if p["kpi"] == "kiosk.technical_availability"
        and p["scope_level"] == "city"
        and p["window_seconds"] == H
    ]
    # The hour before (closed on this first emit) is published too: in service, scheduled, never heard from.
    assert sorted(
        (p["window_start"][11:16], p["partition"], p["numerator"], p["denominator"]) for p in cities
    ) == [
        ("00:00", 0, 0.0, 3600.0),
        ("00:00", 1, 0.0, 3600.0),
        ("01:00", 0, 3540.0, 3540.0),
        ("01:00", 1, 1800.0, 3540.0),
    ]
    assert kpi(out, "kiosk.kiosks_offline", "HK")["value"] == 1.0
    assert kpi(out, "kiosk.kiosks_offline", "BD")["value"] == 0.0
    # Monday's Hanoi day started at 17:00 UTC on Sunday.
    assert kpi(out, "kiosk.sessions", "BD", 86400, MON - 7 * H)["numerator"] == 10.0
    # No kiosk id anywhere in KPI observations.
    assert not any(
        "K-A" in e.value.decode() or "K-B" in e.value.decode() for e in out if e.topic == "ioc.kiosk.kpis"
    )


def test_silence_declares_offline_and_heartbeats_bring_it_back(scenario):
    proc, states, out, now = scenario
    changes = {p["kiosk_id"]: p["state"] for p in payloads(out, "ioc.kiosk.state")}
    assert changes == {"K-A": "online", "K-B": "offline"}
    alarms = payloads(out, "ioc.kiosk.alarms")
    assert [(a["alarm_type"], a["state"], a["source_id"], a["severity"]) for a in alarms] == [
        ("kiosk_offline", "raised", "K-B", "major")
    ]
    # Nothing new while it stays silent.
    st = states[1]
    assert payloads(proc.emit(st, datetime.fromtimestamp(now + 5, UTC)), "ioc.kiosk.alarms") == []
    # Heartbeats return 10 minutes after detection: online again, alarm cleared, repair time measured.
    back = now + 600
    for ev in hbs("K-B", back, back, 1):
        proc.apply(ev, st)
    out2 = proc.emit(st, datetime.fromtimestamp(back + 1, UTC))
    assert [p["state"] for p in payloads(out2, "ioc.kiosk.state")] == ["online"]
    assert [(a["alarm_type"], a["state"]) for a in payloads(out2, "ioc.kiosk.alarms")] == [
        ("kiosk_offline", "cleared")
    ]
    mttr = [
        p
        for p in payloads(out2, "ioc.kiosk.kpis")
        if p["kpi"] == "kiosk.mttr_seconds.kiosk_offline"
        and p["scope_code"] == "HK"
        and p["window_seconds"] == H
    ]
    assert [(p["numerator"], p["denominator"]) for p in mttr] == [(600.0, 1.0)]


def test_offline_after_hours_raises_no_alarm_until_opening():
    # Open 08:00-17:00 local (01:00-10:00 UTC); the kiosk stops at 10:30 UTC (after closing).
    hours = [{"days": [1, 2, 3, 4, 5], "open": "08:00", "close": "17:00"}]
    proc = KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=30)
    events = [reg("K-C", "TH", 0, hours), *hbs("K-C", MON + 10 * H, MON + 10.5 * H, 0)]
    states, out = run_in_memory(proc, events, datetime.fromtimestamp(MON + 12 * H, UTC))
    assert [p["state"] for p in payloads(out, "ioc.kiosk.state")] == ["offline"]
    assert payloads(out, "ioc.kiosk.alarms") == []
    tuesday_open = MON + 25 * H + 60
    later = proc.emit(states[0], datetime.fromtimestamp(tuesday_open, UTC))
    assert [(a["alarm_type"], a["state"]) for a in payloads(later, "ioc.kiosk.alarms")] == [
        ("kiosk_offline", "raised")
    ]


def test_peripheral_faults_raise_and_clear_alarms():
    proc = KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=30)
    # The kiosk reports (heartbeats): a registered kiosk that never reported would be offline too (issue #37).
    st_events = [reg("K-D", "BD", 0), *hbs("K-D", MON + H - 120, MON + H, 0), printer("K-D", MON + H, "out")]
    states, out = run_in_memory(proc, st_events, datetime.fromtimestamp(MON + H + 10, UTC))
    assert [(a["alarm_id"], a["state"], a["severity"]) for a in payloads(out, "ioc.kiosk.alarms")] == [
        ("kiosk:paper_out:K-D:printer", "raised", "minor")
    ]
    for hb in hbs("K-D", MON + H + 60, MON + H + 900, 0):
        proc.apply(hb, states[0])
    proc.apply(printer("K-D", MON + H + 900, "full"), states[0])
    out2 = proc.emit(states[0], datetime.fromtimestamp(MON + H + 920, UTC))
    cleared = payloads(out2, "ioc.kiosk.alarms")
    assert [(a["state"], a["at"]) for a in cleared] == [
        ("cleared", iso(MON + H + 900).replace("+00:00", "Z"))
    ]
    assert "a:K-D" not in states[0]


def test_old_windows_are_pruned():
    proc = KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=30)
    events = [reg("K-E", "BD", 0), session("K-E", 1, MON + H, "completed")]
    states, _ = run_in_memory(proc, events, datetime.fromtimestamp(MON + 1.5 * H, UTC))
    assert states[0].keys("s:3600:")
    proc.emit(states[0], datetime.fromtimestamp(MON + 3.5 * H, UTC))
    assert not states[0].keys("s:3600:")  # two hours later the hour is neither current nor previous
    assert states[0].keys("s:86400:")


class EveryKioskEveryEmit(KioskKpiProcessor):
    """The reference: every emit evaluates every kiosk and republishes every KPI (no memory between emits)."""

    def emit(self, state, now):
        self.forget_emitted([state.partition])
        return super().emit(state, now)


def _keep_latest_kpis(out, latest: dict) -> None:
    """Record in ``latest`` the newest figures of each KPI observation published in ``out``."""
    for d in payloads(out, "ioc.kiosk.kpis"):
        key = (d["kpi"], d["scope_code"], d["window_seconds"], d["window_start"], d["partition"])
        latest[key] = (d["numerator"], d["denominator"], d["value"])


def _day_of_kiosks(seed: int):
    """Six kiosks on two partitions over 26 hours: heartbeats that stop and resume (some late), opening hours
    with nights, printer faults, sessions, a registry change; yields (time, events of the last minute)."""
    import random

    rnd = random.Random(seed)
    office = [{"days": [1, 2, 3, 4, 5, 6], "open": "07:30", "close": "17:00"}]
    kiosks = {f"K{i}": (i % 2, ALL_DAY if i % 3 == 0 else office) for i in range(6)}
    up = dict.fromkeys(kiosks, True)
    t = MON - 2 * H
    first = [reg(k, ("BD", "HK")[i % 2], p, hours) for i, (k, (p, hours)) in enumerate(kiosks.items())]
    yield t, first
    for step in range(26 * 60):
        t += 60
        events = []
        for i, (k, (p, _)) in enumerate(kiosks.items()):
            if rnd.random() < 0.01:
                up[k] = not up[k]
            if up[k]:
                lag = 400 if i == 5 and step % 300 < 30 else 0  # a gateway catching up with old heartbeats
                events.append(
                    received(
                        HeartbeatReceived,
                        {"kiosk_id": k, "at": iso(t - lag), "app_version": "2.1"},
                        partition=p,
                    )
                )
            if rnd.random() < 0.01:
                events.append(printer(k, t - 5, rnd.choice(("out", "jammed", "full", "full")), partition=p))
            if up[k] and rnd.random() < 0.05:
                events.append(
                    session(
                        k,
                        f"{step}-{i}",
                        t - 120,
                        rnd.choice(("completed", "abandoned", "failed")),
                        rnd.choice((None, 3, 5)),
                        partition=p,
                    )
                )
        if step == 600:
            events.append(reg("K1", "HK", kiosks["K1"][0], ALL_DAY))
            events[-1].data["version"] = 2
        yield t, events


def test_incremental_emit_gives_the_full_evaluation_results():
    """Evaluating only the kiosks that can have changed and skipping unchanged KPIs publishes the same state
    changes and alarms, in the same order, and leaves the same latest KPIs and the same state as evaluating
    every kiosk and publishing every KPI on every emit, across restarts (state reloaded, memory lost)."""
    import random

    from shared.stream import State

    rnd = random.Random(3)
    fast, ref = (
        KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=300),
        EveryKioskEveryEmit(heartbeat_timeout_s=180, kpi_interval_s=300),
    )
    fast_states = {p: State(p) for p in (0, 1)}
    ref_states = {p: State(p) for p in (0, 1)}
    fast_kpis: dict = {}
    ref_kpis: dict = {}
    transitions = 0
    for t, events in _day_of_kiosks(5):
        now = datetime.fromtimestamp(t + rnd.choice((0, 20, 45)), UTC)
        for p in (0, 1):
            mine = [e for e in events if e.partition == p]
            fast.apply_batch(mine, fast_states[p])
            ref.apply_batch(mine, ref_states[p])
            got, want = fast.emit(fast_states[p], now), ref.emit(ref_states[p], now)
            moves = [(e.topic, e.value) for e in got if e.topic != "ioc.kiosk.kpis"]
            assert moves == [(e.topic, e.value) for e in want if e.topic != "ioc.kiosk.kpis"]
            transitions += len(moves)
            _keep_latest_kpis(got, fast_kpis)
            _keep_latest_kpis(want, ref_kpis)
            assert fast_kpis == ref_kpis
            if rnd.random() < 0.01:  # restart: state reloaded from the changelog, memory gone
                fast.forget_emitted([p])
                fast_states[p] = State(p, orjson.loads(orjson.dumps(fast_states[p].snapshot())))
    assert transitions > 20
    for p in (0, 1):
        assert orjson.loads(orjson.dumps(fast_states[p].snapshot())) == orjson.loads(
            orjson.dumps(ref_states[p].snapshot())
        )


def _day_with_same_instant_changes(seed: int):
    """``_day_of_kiosks`` plus, now and then, two changes of one printer at the same instant (a fault and its
    end, as a gateway with second resolution reports them)."""
    for i, (t, events) in enumerate(_day_of_kiosks(seed)):
        if i % 97 == 50:
            k, p = f"K{i % 6}", i % 6 % 2
            events += [printer(k, t - 2, "jammed", partition=p), printer(k, t - 2, "full", partition=p)]
        yield t, events


def _run_kiosks(processor, workload):
    """Apply each minute's events per partition and emit; (states, outputs other than KPIs, latest KPIs)."""
    from shared.stream import State

    states = {p: State(p) for p in (0, 1)}
    moves, latest = [], {}
    for t, batches in workload:
        for p in (0, 1):
            processor.apply_batch(batches[p], states[p])
            out = processor.emit(states[p], datetime.fromtimestamp(t + 20, UTC))
            moves += [(e.topic, e.value) for e in out if e.topic != "ioc.kiosk.kpis"]
            _keep_latest_kpis(out, latest)
    return states, moves, latest


def test_events_delivered_again_change_nothing():
    """Why the kiosk processor needs no de-duplication window (``dedup_window = 0``): copies of any events
    already applied, delivered again in any later batch (same-instant peripheral changes included), leave the
    state and the outputs exactly as they were."""
    import random

    assert KioskKpiProcessor.dedup_window == 0
    workload = [
        (t, {p: [e for e in events if e.partition == p] for p in (0, 1)})
        for t, events in _day_with_same_instant_changes(11)
    ]
    rng = random.Random(7)
    delivered: dict[int, list] = {0: [], 1: []}
    again = []
    for t, batches in workload:
        redelivering = {}
        for p, batch in batches.items():
            delivered[p] += batch
            copies = rng.sample(delivered[p], min(len(delivered[p]), 5))
            # the copies of the same-instant changes, after them: a stale copy must not undo the later change
            copies += [e for e in batch if e.type == T_PERIPHERAL]
            redelivering[p] = batch + copies
        again.append((t, redelivering))
    once = _run_kiosks(KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=300), workload)
    twice = _run_kiosks(KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=300), again)
    assert sum(1 for topic, _ in once[1] if topic == "ioc.kiosk.alarms") > 10
    assert twice[1] == once[1]
    assert twice[2] == once[2]
    for p in (0, 1):
        assert twice[0][p].snapshot() == once[0][p].snapshot()


def test_unchanged_kpis_are_not_republished():
    proc = KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=30)
    events = [reg("K-F", "BD", 0), session("K-F", 1, MON + H, "completed")]
    states, out = run_in_memory(proc, events, datetime.fromtimestamp(MON + 1.5 * H, UTC))
    assert any(p["kpi"] == "kiosk.sessions" for p in payloads(out, "ioc.kiosk.kpis"))
    again = proc.emit(states[0], datetime.fromtimestamp(MON + 1.5 * H + 40, UTC))
    kpis = {p["kpi"] for p in payloads(again, "ioc.kiosk.kpis")}
    assert "kiosk.sessions" not in kpis  # no new session
    assert "kiosk.technical_availability" in kpis  # scheduled time went on


def test_payloads_are_exactly_what_the_contract_models_dump(scenario):
    """KPI observations, state changes and alarms are built as dicts: each must be a valid payload of its
    contract, byte for byte what the model would have dumped."""
    from shared.contracts.base import EVENT_TYPES
    from shared.contracts.cloudevents import headers_dict

    _, _, out, _ = scenario
    assert {e.topic for e in out} == {"ioc.kiosk.kpis", "ioc.kiosk.state", "ioc.kiosk.alarms"}
    for e in out:
        model = EVENT_TYPES[headers_dict(e.headers)["ce_type"].decode()].model
        assert orjson.dumps(model.model_validate_json(e.value).model_dump(mode="json")) == e.value
        if e.topic == "ioc.kiosk.kpis":  # an observation's CloudEvents time is when it was observed
            assert headers_dict(e.headers)["ce_time"].decode() == orjson.loads(e.value)["observed_at"]


def test_kpi_definitions_declare_how_long_a_window_is_revised():
    """The kiosk processor re-publishes the current window and the one that just ended (then prunes), so a
    window is revised at most one window length after its end; the definitions tell the city at least that."""
    from shared.kpis import all_definitions

    kiosk = [d for d in all_definitions().values() if d.domain == "kiosk"]
    assert kiosk
    for d in kiosk:
        for w in d.windows:
            assert d.revisable_for(w) >= w, (d.id, w)
