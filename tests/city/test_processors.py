"""The city KPI processor with the in-memory reference runtime: merge, statuses, breach and no-signal alarms."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.city.processors import CityKpiProcessor, domain_kpi_topics
from shared.contracts import EVENT_TYPES
from shared.contracts.city import CityAlarmChanged, CityKpiUpdated
from shared.contracts.common import kpi_key
from shared.stream import State, run_in_memory
from shared.testing import received

NOW = datetime(2024, 5, 1, 10, 14, tzinfo=UTC)
W0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def obs(
    kpi_et,
    kpi,
    code,
    n,
    d=None,
    *,
    partition=0,
    level="district",
    window=W0,
    seconds=900,
    observed=NOW - timedelta(minutes=1),
    kafka_partition=0,
):
    value = (n / d if d else None) if d is not None else n
    payload = {
        "kpi": kpi,
        "scope_level": level,
        "scope_code": code,
        "window_start": window.isoformat(),
        "window_seconds": seconds,
        "value": value,
        "numerator": n,
        "denominator": d,
        "unit": "x",
        "partition": partition,
        "observed_at": observed.isoformat(),
        "key": kpi_key(kpi, level, code),
    }
    return received(kpi_et, payload, partition=kafka_partition)


def decoded(events, model):
    et = model.__ioc_event_type__
    out = []
    for e in events:
        if e.topic == et.topic:
            out.append(model.model_validate(orjson.loads(e.value)))  # every output is a valid contract
    return out


@pytest.fixture
def processor(test_domain, definitions):
    return CityKpiProcessor(
        definitions,
        topics=domain_kpi_topics(["citytest"]),
        district_silence=timedelta(minutes=30),
        domain_silence=timedelta(minutes=15),
    )


def test_reads_only_the_requested_domain_topics(processor):
    assert processor.topics == ("ioc.citytest.kpis",)


def test_partials_of_every_source_partition_merge_and_latest_per_partition_wins(processor, test_domain):
    kpi_et, _ = test_domain
    events = [
        obs(
            kpi_et,
            "citytest.availability",
            "D01",
            90.0,
            100.0,
            partition=0,
            observed=NOW - timedelta(minutes=5),
        ),
        obs(kpi_et, "citytest.availability", "D01", 299.0, 300.0, partition=1),
        # a newer observation of partition 0 replaces its older one...
        obs(
            kpi_et,
            "citytest.availability",
            "D01",
            95.0,
            100.0,
            partition=0,
            observed=NOW - timedelta(minutes=2),
        ),
        # ...and an older one arriving late does not
        obs(
            kpi_et,
            "citytest.availability",
            "D01",
            10.0,
            100.0,
            partition=0,
            observed=NOW - timedelta(minutes=9),
        ),
    ]
    _, out = run_in_memory(processor, events, NOW)
    kpis = decoded(out, CityKpiUpdated)
    assert len(kpis) == 1
    k = kpis[0]
    assert (k.kpi, k.scope_level, k.scope_code, k.window_seconds) == (
        "citytest.availability",
        "district",
        "D01",
        900,
    )
    assert k.value == pytest.approx((95 + 299) / 400)  # 0.985
    assert (k.numerator, k.denominator, k.partitions) == (394.0, 400.0, 2)
    assert k.status == "ok" and k.target == 0.98 and k.domain == "citytest" and k.unit == "ratio"
    assert k.key == "citytest.availability|district|D01"
    assert decoded(out, CityAlarmChanged) == []


def test_unchanged_groups_are_not_republished(processor, test_domain):
    kpi_et, _ = test_domain
    state = State(0)
    processor.apply(obs(kpi_et, "citytest.energy_kwh", "HN", 12.0, level="city"), state)
    first = processor.emit(state, NOW)
    assert [e.topic for e in first] == ["ioc.city.kpis"]
    assert processor.emit(state, NOW + timedelta(seconds=5)) == []
    processor.apply(obs(kpi_et, "citytest.energy_kwh", "HN", 3.0, level="city", partition=2), state)
    again = decoded(processor.emit(state, NOW + timedelta(seconds=10)), CityKpiUpdated)
    assert [(k.scope_level, k.value) for k in again] == [("city", 15.0)]


def test_breach_is_judged_on_complete_windows_with_on_delay_deadband_and_off_delay(processor, test_domain):
    """citytest.availability: higher is better, warning 0.95, critical 0.90, primary window 900 s. Default
    rule (services/city/alarming.py): deadband |0.90 - 0.95| / 10 = 0.005, on- and off-delay one window
    (900 s), at least 20 in the denominator, a window judged once settled 900 s after its end. Worked by hand,
    window by window."""
    kpi_et, _ = test_domain
    state = State(0)
    alarm_id = "city:kpi_breach:citytest.availability:district:D05"

    def window(i, n, d=100.0):
        start = W0 + timedelta(minutes=15 * i)
        processor.apply(
            obs(
                kpi_et,
                "citytest.availability",
                "D05",
                n,
                d,
                window=start,
                observed=start + timedelta(minutes=14),
            ),
            state,
        )

    def alarms_at(t):  # (breach alarms: the feed is sparse, so no-signal alarms come and go meanwhile)
        alarms = decoded(processor.emit(state, t), CityAlarmChanged)
        return [(a.alarm_id, a.state, a.severity) for a in alarms if a.alarm_type == "kpi_breach"]

    window(0, 88.0)  # W0 10:00-10:15: 0.88 < 0.90, critical, but still filling at 10:14
    out = processor.emit(state, NOW)
    assert decoded(out, CityKpiUpdated)[0].status == "critical"  # the tile shows the value as it is...
    assert decoded(out, CityAlarmChanged) == []  # ...but the filling window is never judged
    # 10:30:10: W0 is complete and settled (ended 10:15, + 900 s): breach pending since 10:15, on-delay not over
    assert alarms_at(W0 + timedelta(minutes=30, seconds=10)) == []
    window(1, 89.0)  # W1 10:15-10:30: 0.89, critical again
    window(
        2, 99.0
    )  # at 10:45:10 W1 has settled (W2 has not): W1 ends 10:30, 10:30 - 10:15 = 900 s ≥ 900 s → raise
    assert alarms_at(W0 + timedelta(minutes=45, seconds=10)) == [(alarm_id, "raised", "critical")]
    assert alarms_at(W0 + timedelta(minutes=45, seconds=20)) == []  # each complete window is judged once
    # W2 0.902 ≥ 0.90 is only "warning", but 0.902 - 0.005 = 0.897 < 0.90: the deadband keeps it critical
    window(2, 90.2)
    window(3, 99.0)
    assert alarms_at(W0 + timedelta(minutes=60, seconds=10)) == []
    assert state.get("j:" + alarm_id)["lvl"] == 2
    # W3 0.99 is normal: clear pending since 11:00; W4 0.99 too: 11:15 - 11:00 = 900 s ≥ off-delay → cleared
    window(4, 99.0)
    assert alarms_at(W0 + timedelta(minutes=75, seconds=10)) == []
    window(5, 99.0)
    assert alarms_at(W0 + timedelta(minutes=90, seconds=10)) == [(alarm_id, "cleared", "critical")]


def test_a_window_with_too_little_data_is_not_judged(processor, test_domain):
    kpi_et, _ = test_domain
    state = State(0)
    for i in range(4):  # 3 of 10 (0.3, critical), but 10 < the 20 a ratio needs in its denominator
        start = W0 + timedelta(minutes=15 * i)
        processor.apply(obs(kpi_et, "citytest.availability", "D06", 3.0, 10.0, window=start), state)
    assert decoded(processor.emit(state, W0 + timedelta(hours=2)), CityAlarmChanged) == []
    assert state.get("j:city:kpi_breach:citytest.availability:district:D06") is None


def test_breach_alarms_only_on_the_primary_window(processor, test_domain):
    kpi_et, _ = test_domain
    state = State(0)
    processor.apply(obs(kpi_et, "citytest.availability", "D05", 50.0, 100.0, seconds=86400), state)
    out = processor.emit(state, NOW)
    assert decoded(out, CityKpiUpdated)[0].status == "critical"
    assert decoded(out, CityAlarmChanged) == []


def test_no_signal_for_a_district_and_for_a_whole_domain(processor, test_domain):
    kpi_et, _ = test_domain
    state = State(0)
    last = NOW
    processor.emit(state, last)  # the worker watches from here (silence it did not watch does not count)
    processor.apply(obs(kpi_et, "citytest.energy_kwh", "D07", 1.0, observed=last), state)
    processor.apply(
        obs(kpi_et, "citytest.energy_kwh", "D08", 1.0, observed=last + timedelta(minutes=20)), state
    )
    assert decoded(processor.emit(state, last + timedelta(minutes=20)), CityAlarmChanged) == []
    # 31 minutes after D07's last KPI: D07 is silent (district rule: 30 min); the domain is not (D08 at +20)
    alarms = decoded(processor.emit(state, last + timedelta(minutes=31)), CityAlarmChanged)
    assert [(a.alarm_id, a.state, a.severity, a.district) for a in alarms] == [
        ("city:no_signal:citytest:D07", "raised", "major", "D07")
    ]
    assert decoded(processor.emit(state, last + timedelta(minutes=32)), CityAlarmChanged) == []  # once
    # nothing at all for 15 minutes after the last KPI: the whole domain is silent
    alarms = decoded(processor.emit(state, last + timedelta(minutes=36)), CityAlarmChanged)
    assert [(a.alarm_id, a.severity, a.district) for a in alarms] == [
        ("city:no_signal:citytest:HN", "critical", None)
    ]
    # D07 reports again: both alarms clear
    processor.apply(
        obs(
            kpi_et,
            "citytest.energy_kwh",
            "D07",
            1.0,
            observed=last + timedelta(minutes=37),
            window=W0 + timedelta(minutes=30),
        ),
        state,
    )
    alarms = decoded(processor.emit(state, last + timedelta(minutes=37)), CityAlarmChanged)
    assert sorted((a.alarm_id, a.state) for a in alarms) == [
        ("city:no_signal:citytest:D07", "cleared"),
        ("city:no_signal:citytest:HN", "cleared"),
    ]


def test_commune_observations_count_as_signal_but_are_not_published(processor, test_domain):
    kpi_et, _ = test_domain
    _, out = run_in_memory(
        processor, [obs(kpi_et, "citytest.energy_kwh", "D01-01", 1.0, level="commune")], NOW
    )
    assert out == []


def _windows(state: State, code: str = "D01") -> list[datetime]:
    return sorted(
        datetime.fromisoformat(k.rsplit("|", 1)[1])
        for k in state.keys(f"g:citytest.energy_kwh|district|{code}|")
    )


def test_windows_are_kept_as_long_as_late_data_may_revise_them_judged_in_event_time(processor, test_domain):
    """citytest.energy_kwh quarter hours may be revised 2 h after their end (tests/city/kpis.yaml): the city keeps
    a window while it starts within 15 min + 2 h + SKEW_MARGIN (1 h) of its series' newest window, whatever the
    wall clock says, then forgets it and ignores its late partials instead of publishing them alone."""
    kpi_et, _ = test_domain
    state = State(0)
    horizon = timedelta(hours=3, minutes=15)
    newest = W0 + horizon
    for window in (W0, newest):
        processor.apply(obs(kpi_et, "citytest.energy_kwh", "D01", 10.0, window=window), state)
    processor.emit(state, NOW + timedelta(days=6))  # six days later by the wall clock: nothing is forgotten
    assert _windows(state) == [W0, newest]
    newer = newest + timedelta(minutes=15)
    processor.apply(obs(kpi_et, "citytest.energy_kwh", "D01", 10.0, window=newer), state)
    processor.emit(state, NOW + timedelta(days=6, minutes=2))
    assert _windows(state) == [newest, newer]
    ignored = processor.late_ignored
    late = NOW + timedelta(days=6, minutes=3)
    processor.apply(
        obs(kpi_et, "citytest.energy_kwh", "D01", 11.0, partition=1, window=W0, observed=late), state
    )
    assert decoded(processor.emit(state, late), CityKpiUpdated) == []
    # A window the city never held, but older than a series keeps: its other partials could be forgotten before
    # they arrive, so it is ignored too (D02 has nothing forgotten, only a newest window).
    processor.apply_batch(
        [obs(kpi_et, "citytest.energy_kwh", "D02", 10.0, window=newer, observed=late)], state
    )
    assert len(decoded(processor.emit(state, late), CityKpiUpdated)) == 1
    processor.apply_batch([obs(kpi_et, "citytest.energy_kwh", "D02", 10.0, window=W0, observed=late)], state)
    assert decoded(processor.emit(state, late), CityKpiUpdated) == []
    assert processor.late_ignored == ignored + 2
    # within the horizon, a window never held is taken (late data of a quarter nobody reported before)
    processor.apply(
        obs(kpi_et, "citytest.energy_kwh", "D02", 4.0, window=W0 + timedelta(minutes=15), observed=late),
        state,
    )
    (update,) = decoded(processor.emit(state, late), CityKpiUpdated)
    assert (update.window_start, update.value) == (W0 + timedelta(minutes=15), 4.0)


def test_a_late_partial_of_an_older_window_is_merged_with_the_others(processor, test_domain):
    """A head-end system delivers a reading 2 hours late: the meter processor re-publishes that quarter's
    partial of its partition. The city must merge it with the other partitions' partials of the quarter, not
    publish it alone (which would overwrite the city's figure for that quarter with a fraction of it)."""
    kpi_et, _ = test_domain
    state = State(0)
    w1 = W0 + timedelta(minutes=15)
    for p in (0, 1):
        processor.apply(obs(kpi_et, "citytest.energy_kwh", "D01", 10.0, partition=p, window=W0), state)
        processor.apply(obs(kpi_et, "citytest.energy_kwh", "D01", 10.0, partition=p, window=w1), state)
    processor.emit(state, NOW)
    later = NOW + timedelta(hours=2)
    processor.emit(state, later)  # prunes, but by event time W0 is one quarter behind the newest
    processor.apply(
        obs(
            kpi_et,
            "citytest.energy_kwh",
            "D01",
            11.0,
            partition=0,
            window=W0,
            observed=later - timedelta(seconds=1),
        ),
        state,
    )
    (update,) = decoded(processor.emit(state, later + timedelta(seconds=1)), CityKpiUpdated)
    assert (update.window_start, update.value, update.partitions) == (W0, 21.0, 2)


def test_a_series_silent_for_a_week_is_forgotten_and_takes_only_newer_windows(processor, test_domain):
    kpi_et, _ = test_domain
    state = State(0)
    w1 = W0 + timedelta(minutes=15)
    for window in (W0, w1):
        processor.apply(obs(kpi_et, "citytest.energy_kwh", "D03", 10.0, window=window), state)
    processor.emit(state, NOW)
    processor.emit(state, NOW + timedelta(days=6, hours=23))
    assert _windows(state, "D03") == [W0, w1]
    week = NOW + timedelta(days=7)
    processor.emit(state, week)
    assert _windows(state, "D03") == []
    processor.apply(
        obs(kpi_et, "citytest.energy_kwh", "D03", 1.0, partition=1, window=w1, observed=week), state
    )
    assert decoded(processor.emit(state, week), CityKpiUpdated) == []
    w2 = w1 + timedelta(minutes=15)
    processor.apply(
        obs(kpi_et, "citytest.energy_kwh", "D03", 1.0, partition=1, window=w2, observed=week), state
    )
    (update,) = decoded(processor.emit(state, week), CityKpiUpdated)
    assert (update.window_start, update.value) == (w2, 1.0)


# Batches, changed-only publication, reloads ------------------------------------------------------------------
def _batches_with_late_and_repeated_partials(cycles: int = 40, per_cycle: int = 300):
    """The perf driver's city mix, plus per batch a few partials again with unchanged figures (newer time), a
    few late ones (older time, other figures) and a few of older windows (kept or forgotten by the city), so
    every branch of the fold is taken."""
    from bench.city_processor_cpu import generate

    rnd = random.Random(3)
    workload = generate(cycles, per_cycle, repeat=0.5)
    for c, (_, batches) in enumerate(workload):
        for p, events in batches.items():
            extra = []
            for e in rnd.sample(events, min(10, len(events))):
                d = dict(e.data)
                t = datetime.fromisoformat(d["observed_at"].replace("Z", "+00:00"))
                if rnd.random() < 0.2:
                    # a window one, ~30 hours or ~40 days older: kept or forgotten depending on its KPI
                    w = d["window_seconds"]
                    back = rnd.choice([w, 30 * 3600, 40 * 86400]) // w * w or w
                    start = datetime.fromisoformat(d["window_start"].replace("Z", "+00:00"))
                    d["window_start"] = (start - timedelta(seconds=back)).isoformat()
                    d["observed_at"] = (t + timedelta(seconds=0.1)).isoformat()
                elif rnd.random() < 0.5:
                    d["observed_at"] = (t + timedelta(seconds=0.1)).isoformat()
                else:
                    d["observed_at"] = (t - timedelta(seconds=rnd.choice([0.5, 1, 3]))).isoformat()
                    d["numerator"] = d["numerator"] + 1000.0
                    d["value"] = None if d["denominator"] else d["numerator"]
                extra.append(received(EVENT_TYPES[e.type], d, partition=p))
            events += extra
            rnd.shuffle(events) if c % 7 == 3 else None
    return workload


def _run(processor, workload, *, batch: bool):
    states = {p: State(p) for p in range(3)}
    emitted = []
    for now, batches in workload:
        for p, events in batches.items():
            if batch:
                processor.apply_batch(events, states[p])
            else:
                for e in events:
                    processor.apply(e, states[p])
            emitted.append(processor.emit(states[p], now + timedelta(seconds=0.2)))
    return states, emitted


def _published(emitted):
    """(last published figures per group, each alarm's sequence of changes, KPI updates published)."""
    last, alarms, n = {}, {}, 0
    for out in emitted:
        for e in out:
            d = orjson.loads(e.value)
            if e.topic == "ioc.city.kpis":
                n += 1
                last[
                    (d["kpi"], d["scope_level"], d["scope_code"], d["window_seconds"], d["window_start"])
                ] = (
                    d["value"],
                    d["numerator"],
                    d["denominator"],
                    d["status"],
                    d["partitions"],
                    d["updated_at"],
                )
            else:
                alarms.setdefault(d["alarm_id"], []).append((d["state"], d["severity"], d["at"]))
    return last, alarms, n


def test_batches_give_exactly_the_per_event_results(monkeypatch):
    from services.city import processors
    from services.city.domain import load_definitions

    monkeypatch.setattr(processors, "PRUNE_EVERY", timedelta(seconds=2))  # forget windows all along the run
    workload = _batches_with_late_and_repeated_partials()
    defs = load_definitions()
    batch, per_event = CityKpiProcessor(defs, topics=("x",)), CityKpiProcessor(defs, topics=("x",))
    batch_states, batch_out = _run(batch, workload, batch=True)
    event_states, event_out = _run(per_event, workload, batch=False)
    assert batch.late_ignored > 0 and per_event.late_ignored > 0
    assert sum(len(s.keys("floor:")) for s in batch_states.values()) > 10
    for p in batch_states:
        assert batch_states[p].snapshot() == event_states[p].snapshot()
    assert _published(batch_out) == _published(event_out)
    # and emits after which nothing changed publish nothing: fewer updates than groups x emits
    assert _published(batch_out)[2] < sum(len(b) for _, batches in workload for b in batches.values())


def test_same_figures_again_are_not_republished_but_count_as_signal(processor, test_domain):
    kpi_et, _ = test_domain
    state = State(0)
    processor.apply_batch([obs(kpi_et, "citytest.energy_kwh", "D07", 5.0, observed=NOW)], state)
    assert len(decoded(processor.emit(state, NOW), CityKpiUpdated)) == 1
    later = NOW + timedelta(minutes=20)
    processor.apply_batch([obs(kpi_et, "citytest.energy_kwh", "D07", 5.0, observed=later)], state)
    assert processor.emit(state, later) == []
    # 31 minutes after the first partial, but 11 after the repeated one: D07 is not silent
    assert processor.emit(state, NOW + timedelta(minutes=31)) == []
    alarms = decoded(processor.emit(state, later + timedelta(minutes=31)), CityAlarmChanged)
    assert sorted((a.alarm_id, a.state) for a in alarms) == [
        ("city:no_signal:citytest:D07", "raised"),
        ("city:no_signal:citytest:HN", "raised"),
    ]
    # a partial that changes a part whose merged figures end where they were publishes nothing either
    processor.apply_batch(
        [
            obs(kpi_et, "citytest.energy_kwh", "D07", 2.0, observed=later, partition=1),
            obs(kpi_et, "citytest.energy_kwh", "D07", 3.0, observed=later, partition=0),
        ],
        state,
    )
    (k,) = decoded(processor.emit(state, later), CityKpiUpdated)
    assert (k.value, k.partitions) == (5.0, 2)
    later += timedelta(seconds=1)
    processor.apply_batch(
        [
            obs(kpi_et, "citytest.energy_kwh", "D07", 3.0, observed=later, partition=1),
            obs(kpi_et, "citytest.energy_kwh", "D07", 2.0, observed=later, partition=0),
        ],
        state,
    )
    assert decoded(processor.emit(state, later), CityKpiUpdated) == []


def test_a_reloaded_state_publishes_every_group_once_again(processor, test_domain):
    kpi_et, _ = test_domain
    state = State(0)
    processor.apply_batch([obs(kpi_et, "citytest.energy_kwh", code, 1.0) for code in ("D01", "D02")], state)
    assert len(processor.emit(state, NOW)) == 2
    assert processor.emit(state, NOW) == []
    # what the runtime does on a restart or rebalance: a new State from the changelog, memory forgotten
    reloaded = State(0, state.snapshot())
    processor.forget_emitted([0])
    assert sorted(k.scope_code for k in decoded(processor.emit(reloaded, NOW), CityKpiUpdated)) == [
        "D01",
        "D02",
    ]
    assert processor.emit(reloaded, NOW) == []


def test_a_state_of_the_earlier_layout_is_converted(processor, test_domain):
    kpi_et, _ = test_domain
    group = f"citytest.availability|district|D05|900|{W0.isoformat()}"
    observed = (NOW - timedelta(minutes=1)).isoformat()
    legacy = State(
        0,
        {
            f"g|{group}": {"0": {"n": 88.0, "d": 100.0, "v": 0.88, "o": observed, "u": "x"}},
            f"dirty|{group}": 1,
            "latest|citytest.availability|district|D05|900": W0.isoformat(),
            "seen|citytest|HN": observed,
            "seen|citytest|D05": observed,
            "alarm|city:kpi_breach:citytest.availability:district:D05": "critical",
            "meta|pruned_at": NOW.isoformat(),
        },
    )
    out = processor.emit(legacy, NOW)
    (k,) = decoded(out, CityKpiUpdated)
    assert (k.value, k.status) == (0.88, "critical")
    assert decoded(out, CityAlarmChanged) == []  # the alarm raised before the upgrade is still known
    assert not [key for key in legacy.keys() if "|" in key.split(":", 1)[0]]
    processor.apply(obs(kpi_et, "citytest.availability", "D05", 99.0, 100.0, observed=NOW), legacy)
    # W0 complete (0.99): the alarm raised before the upgrade is remembered, its clear pending (off-delay)
    later = decoded(processor.emit(legacy, W0 + timedelta(minutes=31)), CityAlarmChanged)
    assert [a for a in later if a.alarm_type == "kpi_breach"] == []
    memory = legacy.get("j:city:kpi_breach:citytest.availability:district:D05")
    assert (memory["lvl"], memory["cand"]) == (2, 0)
    assert legacy.get("seen:all") == {"citytest|HN": NOW.isoformat(), "citytest|D05": NOW.isoformat()}


def test_observations_delivered_again_change_nothing():
    """Why the city processor needs no de-duplication window (``dedup_window = 0``): any observation applied
    again, in any later batch, leaves the state and the outputs as they were."""
    from services.city.domain import load_definitions

    assert CityKpiProcessor.dedup_window == 0
    # As in production, where ``observed_at`` is the emitting worker's clock (microseconds) and one worker
    # emits a source partition at a time, no two different observations of one group and source partition
    # share a time: the perf mix's times are made distinct (order between different times is kept).
    workload = []
    for i, (t, batches) in enumerate(_batches_with_late_and_repeated_partials()):
        distinct = {}
        for p, batch in batches.items():
            distinct[p] = []
            for j, e in enumerate(batch):
                d = dict(e.data)
                at = datetime.fromisoformat(d["observed_at"].replace("Z", "+00:00"))
                d["observed_at"] = (at + timedelta(microseconds=(i * 1000 + j) % 100_000 + 1)).isoformat()
                distinct[p].append(received(EVENT_TYPES[e.type], d, partition=p))
        workload.append((t, distinct))
    defs = load_definitions()
    once, once_out = _run(CityKpiProcessor(defs, topics=("x",)), workload, batch=True)
    rng = random.Random(7)
    delivered: dict[int, list] = {}
    again = []
    for t, batches in workload:
        redelivering = {}
        for p, batch in batches.items():
            seen = delivered.setdefault(p, [])
            seen += batch
            # copies of events this partition already delivered, this batch's included, in any order
            redelivering[p] = batch + rng.sample(seen, min(len(seen), 20))
        again.append((t, redelivering))
    twice, twice_out = _run(CityKpiProcessor(defs, topics=("x",)), again, batch=True)
    for p in once:
        assert twice[p].snapshot() == once[p].snapshot()
    assert _published(twice_out)[:2] == _published(once_out)[:2]


def test_windows_still_receiving_partials_are_not_judged(processor, test_domain):
    """A source catching up through past windows: every window has ended, but its partials keep arriving
    (other partitions, late readings). Nothing is judged until a window has been quiet for 60 s; then only the
    newest quiet one, whose end is past its settle time."""
    kpi_et, _ = test_domain
    state = State(0)
    now = W0 + timedelta(hours=3)
    for i in range(6):  # W0 .. W0+75 min, all long over, all critical (0.5), just received
        start = W0 + timedelta(minutes=15 * i)
        processor.apply(
            obs(kpi_et, "citytest.availability", "D09", 50.0, 100.0, window=start, observed=now), state
        )
    alarms = decoded(processor.emit(state, now), CityAlarmChanged)
    assert [a for a in alarms if a.alarm_type == "kpi_breach"] == []
    assert state.get("j:city:kpi_breach:citytest.availability:district:D09") is None  # nothing quiet yet
    processor.emit(state, now + timedelta(seconds=61))
    memory = state.get("j:city:kpi_breach:citytest.availability:district:D09")
    # judged once, on the newest window (W0 + 75 min): a breach pending, not raised on one judgement
    assert (memory["w"], memory["lvl"], memory["cand"]) == ((W0 + timedelta(minutes=75)).isoformat(), 0, 2)
