"""Meter processors with run_in_memory: hand-computed KPI values per district and city, alarms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from services.meter.processors import FeederOutageProcessor, MeterKpiProcessor
from shared.contracts.meter import (
    FeederSupplyChanged,
    InterruptionRecorded,
    MeterEventRecorded,
    MeterReadingRecorded,
    MeterRegistered,
)
from shared.testing import received

# Day windows are Hanoi days: the hand-built cases are laid out in local time (UTC+7), published in UTC.
HANOI = timezone(timedelta(hours=7))
DAY = datetime(2024, 5, 1, tzinfo=HANOI)
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=HANOI)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def registry(meter, district="BD", customers=1, interval=900):
    return received(
        MeterRegistered,
        {
            "meter_id": meter,
            "customers": customers,
            "district": district,
            "commune": f"{district}-01",
            "feeder": "F1",
            "transformer": None,
            "installed_on": "2024-01-01",
            "interval_seconds": interval,
        },
    )


def reading(meter, end: datetime, value, delta, district="BD", quality="measured", obis="1-0:1.8.0"):
    return received(
        MeterReadingRecorded,
        {
            "meter_id": meter,
            "obis": obis,
            "interval_end": iso(end),
            "interval_seconds": 900,
            "value": value,
            "unit": "kWh",
            "quality": quality,
            "flags": [],
            "delta": delta,
            "district": district,
            "commune": f"{district}-01",
            "feeder": "F1",
            "customers": 1,
        },
    )


def meter_event(meter, at: datetime, event, category, district="BD"):
    return received(
        MeterEventRecorded,
        {
            "meter_id": meter,
            "at": iso(at),
            "event": event,
            "category": category,
            "code": None,
            "raw_code": "x",
            "district": district,
            "commune": f"{district}-01",
            "feeder": "F1",
            "customers": 1,
        },
    )


def interruption(meter, start: datetime, minutes: float, customers, district="BD"):
    return received(
        InterruptionRecorded,
        {
            "meter_id": meter,
            "started_at": iso(start),
            "ended_at": iso(start + timedelta(minutes=minutes)),
            "duration_seconds": minutes * 60.0,
            "kind": "momentary" if minutes < 5 else "sustained",
            "customers": customers,
            "district": district,
            "commune": f"{district}-01",
            "feeder": "F1",
        },
    )


def kpis(out):
    """(kpi, scope_code, window_seconds, window_start) → payload of the last observation."""
    result = {}
    for e in out:
        d = orjson.loads(e.value)
        if "kpi" in d:
            result[(d["kpi"], d["scope_code"], d["window_seconds"], d["window_start"])] = d
    return result


def alarms(out):
    return [orjson.loads(e.value) for e in out if e.topic == "ioc.meter.alarms"]


def test_energy_read_success_and_completeness_per_quarter_and_day():
    events = [registry("A"), registry("B"), registry("C", customers=8), registry("H", district="HK")]
    # A: 10:00-10:15 and 10:15-10:30; B: 10:00-10:15 only (estimated 10:15-10:30 does not count as valid)
    events += [
        reading("A", DAY.replace(hour=10, minute=15), 100.5, 0.5),
        reading("A", DAY.replace(hour=10, minute=30), 101.25, 0.75),
        reading("B", DAY.replace(hour=10, minute=15), 50.0, 2.0),
        reading("B", DAY.replace(hour=10, minute=30), 51.0, 1.0, quality="estimated"),
        reading("B", DAY.replace(hour=10, minute=30), 230.0, None, obis="1-0:32.7.0"),
        reading("H", DAY.replace(hour=10, minute=15), 7.0, 3.0, district="HK"),
    ]
    _, out = run(events)
    k = kpis(out)
    q10 = iso(DAY.replace(hour=10))
    q1015 = iso(DAY.replace(hour=10, minute=15))
    day = iso(DAY)
    assert k[("meter.energy_kwh", "BD", 900, q10)]["value"] == pytest.approx(2.5)
    assert k[("meter.energy_kwh", "BD", 900, q1015)]["value"] == pytest.approx(1.75)
    assert k[("meter.energy_kwh", "BD", 86400, day)]["value"] == pytest.approx(4.25)
    assert k[("meter.energy_kwh", "HN", 86400, day)]["value"] == pytest.approx(7.25)
    assert k[("meter.peak_demand_kw", "BD", 900, q10)]["value"] == pytest.approx(10.0)  # 2.5 kWh / 0.25 h
    # BD has 3 meters (A, B, C): 10:00 quarter read by A and B
    rs = k[("meter.read_success_rate", "BD", 900, q10)]
    assert (rs["numerator"], rs["denominator"], rs["value"]) == (2.0, 3.0, pytest.approx(200 / 3))
    rs = k[("meter.read_success_rate", "BD", 900, q1015)]
    assert (rs["numerator"], rs["denominator"]) == (1.0, 3.0)
    rs_day = k[("meter.read_success_rate", "HN", 86400, day)]
    assert (rs_day["numerator"], rs_day["denominator"]) == (3.0, 4.0)  # A, B, H of A, B, C, H
    comp = k[("meter.interval_completeness", "BD", 86400, day)]
    assert (comp["numerator"], comp["denominator"]) == (3.0, 3 * 96.0)
    assert comp["value"] == pytest.approx(300 / 288)
    assert (
        comp["unit"] == "%"
        and comp["partition"] == 0
        and comp["key"] == "meter.interval_completeness|district|BD"
    )


def run(events):
    from shared.stream import run_in_memory

    return run_in_memory(MeterKpiProcessor(), events, NOW)


def test_ieee_1366_kpis_hand_computed():
    # BD serves 10 customers: A (1), B (1), C (8). Interruptions starting 08:00-08:15.
    events = [registry("A"), registry("B"), registry("C", customers=8)]
    t = DAY.replace(hour=8, minute=5)
    events += [interruption("A", t, 30, 1), interruption("C", t, 10, 8), interruption("B", t, 2, 1)]
    _, out = run(events)
    k = kpis(out)
    q = iso(DAY.replace(hour=8))
    assert k[("meter.saifi", "BD", 900, q)]["value"] == pytest.approx(0.9)
    assert k[("meter.saidi_minutes", "BD", 900, q)]["value"] == pytest.approx(11.0)
    assert k[("meter.caidi_minutes", "BD", 900, q)]["value"] == pytest.approx(110 / 9)
    assert k[("meter.maifi", "BD", 900, q)]["value"] == pytest.approx(0.1)
    saidi_day = k[("meter.saidi_minutes", "HN", 86400, iso(DAY))]
    assert (saidi_day["numerator"], saidi_day["denominator"]) == (110.0, 10.0)


def test_meters_without_supply_and_tamper_alarms():
    t = DAY.replace(hour=9, minute=1)
    events = [
        registry("A"),
        registry("B"),
        meter_event("A", t, "power_down", "power"),
        meter_event("B", t, "power_down", "power"),
        meter_event("B", t + timedelta(minutes=3), "power_up", "power"),
        meter_event("A", t, "meter_cover_opened", "tamper"),
        meter_event("A", t + timedelta(minutes=1), "meter_cover_opened", "tamper"),
        meter_event("B", t, "magnetic_field_detected", "tamper"),
        meter_event("B", t + timedelta(minutes=2), "magnetic_field_cleared", "tamper"),
    ]
    _, out = run(events)
    k = kpis(out)
    q = iso(DAY.replace(hour=9))
    assert k[("meter.meters_without_supply", "BD", 900, q)]["value"] == 1.0
    assert k[("meter.meters_without_supply", "HN", 900, q)]["value"] == 1.0
    assert k[("meter.tamper_alarms", "BD", 900, q)]["value"] == 3.0
    got = [(a["alarm_id"], a["state"]) for a in alarms(out)]
    assert got == [
        ("meter:tamper_meter_cover:A", "raised"),
        ("meter:tamper_magnetic_field:B", "raised"),
        ("meter:tamper_magnetic_field:B", "cleared"),
    ]


def test_windows_behind_retention_are_ignored_not_reopened():
    events = [
        registry("A"),
        reading("A", DAY.replace(day=3, hour=10), 10.0, 1.0),
        reading("A", DAY.replace(hour=1), 1.0, 5.0),
    ]  # two days late: its quarter is pruned
    states, out = run(events)
    k = kpis(out)
    assert ("meter.energy_kwh", "BD", 900, iso(DAY.replace(hour=0, minute=45))) not in k
    late_ws = int(DAY.replace(hour=0, minute=45).timestamp())
    assert f"agg:900:{late_ws}:BD" not in states[0]
    assert states[0][f"agg:86400:{int(DAY.timestamp())}:BD"]["kwh"] == 5.0  # the day window is still kept


def test_emit_only_changed_windows_and_state_is_json():
    proc = MeterKpiProcessor()
    from shared.stream import State

    st = State(0)
    for e in [registry("A"), reading("A", DAY.replace(hour=10, minute=15), 1.0, 0.5)]:
        proc.apply(e, st)
    first = list(proc.emit(st, NOW))
    assert first
    for ev in first:  # an observation's CloudEvents time is when it was observed
        assert dict(ev.headers)["ce_time"].decode() == orjson.loads(ev.value)["observed_at"]
    assert list(proc.emit(st, NOW)) == []  # nothing changed since
    orjson.dumps(st.snapshot())


def supply(meter, state, feeder_meters=4, at="2024-05-01T10:00:00Z"):
    return received(
        FeederSupplyChanged,
        {
            "feeder": "F1",
            "meter_id": meter,
            "supply": state,
            "at": at,
            "district": "BD",
            "feeder_meters": feeder_meters,
        },
    )


def test_feeder_outage_raised_once_and_cleared():
    from shared.stream import run_in_memory

    events = [
        supply("A", "lost"),
        supply("B", "lost"),
        supply("C", "lost"),
        supply("D", "lost"),
        supply("A", "restored"),
        supply("B", "restored"),
    ]
    _, out = run_in_memory(FeederOutageProcessor(0.5, 3), events, NOW)
    got = [(a["alarm_id"], a["state"], a["severity"]) for a in alarms(out)]
    assert got == [
        ("meter:feeder_outage:F1", "raised", "critical"),
        ("meter:feeder_outage:F1", "cleared", "critical"),
    ]


def _mixed_stream(seed: int = 7) -> list:
    """Registry, readings (some late, estimated, missing, other OBIS, a window behind retention), tamper and
    power events, interruptions and a meter moving district mid-stream, all in one partition."""
    import random

    rnd = random.Random(seed)
    meters = [f"M{i}" for i in range(40)]
    districts = ["BD", "HK", "CG"]
    events = [registry(m, district=districts[i % 3], customers=1 + i % 4) for i, m in enumerate(meters)]
    start = DAY.replace(hour=22)
    for q in range(12):  # crosses midnight: two day windows
        end = start + timedelta(minutes=15 * (q + 1))
        for i, m in enumerate(meters):
            district = districts[i % 3]
            late = rnd.random() < 0.05
            t = end - timedelta(minutes=15 * rnd.randint(1, 8)) if late else end
            quality = rnd.choice(["measured"] * 8 + ["estimated", "missing"])
            events.append(
                reading(
                    m,
                    t,
                    None if quality == "missing" else 100.0 + q,
                    None if quality == "missing" else rnd.random(),
                    district=district,
                    quality=quality,
                    obis="1-0:1.8.0" if rnd.random() > 0.05 else "1-0:32.7.0",
                )
            )
            r = rnd.random()
            if r < 0.02:
                events.append(
                    meter_event(m, end - timedelta(minutes=1), "meter_cover_opened", "tamper", district)
                )
            elif r < 0.04:
                events.append(
                    meter_event(
                        m,
                        end - timedelta(minutes=2),
                        rnd.choice(["power_down", "power_up"]),
                        "power",
                        district,
                    )
                )
            elif r < 0.05:
                events.append(
                    interruption(m, end - timedelta(minutes=30), rnd.choice([2, 20]), 1 + i % 4, district)
                )
        if q == 6:
            events.append(registry("M0", district="HK", customers=3))
    events.append(reading("M1", DAY.replace(day=3, hour=5), 1.0, 1.0, district="HK"))  # jumps the watermark
    events.append(reading("M2", DAY.replace(hour=23), 1.0, 2.0))  # now behind the quarter's retention
    return events


def test_apply_batch_gives_the_per_event_state_and_outputs_exactly():
    """The batched fold (aggregates found once per batch, put once) against the per-event reference, for
    several batch splits: the same state (float sums included) and the same observations."""
    import random

    from shared.stream import State

    events = _mixed_stream()
    ref_proc, ref = MeterKpiProcessor(), State(0)
    for e in events:
        ref_proc.apply(e, ref)
    ref_state = ref.snapshot()
    ref_out = [e.value for e in ref_proc.emit(ref, NOW)]
    for seed in range(4):
        rnd = random.Random(seed)
        proc, st = MeterKpiProcessor(), State(0)
        i = 0
        while i < len(events):
            n = rnd.randint(1, 200)
            proc.apply_batch(events[i : i + n], st)
            i += n
        assert st.snapshot() == ref_state
        assert [e.value for e in proc.emit(st, NOW)] == ref_out
        assert st.snapshot() == ref.snapshot()  # pruned alike


def test_unchanged_kpis_are_not_published_again_until_the_memory_is_forgotten():
    from shared.stream import State

    proc, st = MeterKpiProcessor(), State(0)
    proc.apply_batch(
        [registry("A"), registry("B"), reading("A", DAY.replace(hour=10, minute=15), 1.0, 0.5)], st
    )
    first = kpis(proc.emit(st, NOW))
    # quarter (10 KPIs) + day (9), district + city; meters without supply, district + city, and the two other
    # live figures for the city (a district only while it has an outage)
    assert len(first) == 2 * (10 + 9) + 2 + 2
    # One more reading in the same quarter: energy, reads, completeness and demand move; reliability does not.
    proc.apply_batch([reading("B", DAY.replace(hour=10, minute=15), 2.0, 0.25)], st)
    second = kpis(proc.emit(st, NOW))
    assert {k[0] for k in second} == {
        "meter.energy_kwh",
        "meter.read_success_rate",
        "meter.interval_completeness",
        "meter.peak_demand_kw",
    }
    assert second[("meter.energy_kwh", "BD", 900, iso(DAY.replace(hour=10)))]["value"] == pytest.approx(0.75)
    # The latest value of every KPI is still what the reference computes.
    merged = {**first, **second}
    _, ref = run(
        [
            registry("A"),
            registry("B"),
            reading("A", DAY.replace(hour=10, minute=15), 1.0, 0.5),
            reading("B", DAY.replace(hour=10, minute=15), 2.0, 0.25),
        ]
    )
    assert {k: (v["numerator"], v["denominator"]) for k, v in merged.items()} == {
        k: (v["numerator"], v["denominator"]) for k, v in kpis(ref).items()
    }
    # A reload of the partition (the runtime forgets what was published): the next emit publishes everything.
    proc.forget_emitted([0])
    proc.apply_batch([reading("B", DAY.replace(hour=10, minute=30), 2.5, 0.5)], st)
    assert len(kpis(proc.emit(st, NOW))) >= 9 + 9


def test_day_meters_of_an_older_state_layout_keep_counting():
    """A day aggregate written by an earlier version (its meters as a dict) is moved to the bucket keys."""
    from shared.stream import State

    proc, st = MeterKpiProcessor(), State(0)
    proc.apply_batch([registry("A"), registry("B"), registry("C")], st)
    day = int(DAY.timestamp())
    st[f"agg:86400:{day}:BD"] = {
        "kwh": 1.0,
        "valid": 2,
        "meters": {"A": 1, "B": 1},
        "tamper": 0,
        "ci": 0.0,
        "cmi": 0.0,
        "mi": 0.0,
    }
    st["wm"] = day + 3600
    proc.apply_batch(
        [
            reading("B", DAY.replace(hour=1, minute=15), 2.0, 0.5),
            reading("C", DAY.replace(hour=1, minute=15), 3.0, 0.5),
        ],
        st,
    )
    rs = kpis(proc.emit(st, NOW))[("meter.read_success_rate", "BD", 86400, iso(DAY))]
    assert (rs["numerator"], rs["denominator"]) == (3.0, 3.0)
    assert st[f"agg:86400:{day}:BD"]["meters"] == 3


def test_kpi_definitions_declare_how_long_late_readings_revise_a_window():
    """The city keeps a window as long as its KPI definition says the source may revise it; the meter
    processor folds late readings in for ``RETENTION`` and interruptions for ``RELIABILITY_RETENTION`` after a
    window's end (it keeps the window ``KEPT``, the longer), so the definitions must cover it."""
    from services.meter.processors import KEPT, RELIABILITY_RETENTION, RETENTION
    from shared.kpis import all_definitions

    meter = [d for d in all_definitions().values() if d.domain == "meter"]
    assert meter
    for d in meter:
        for w in d.windows:
            assert d.revisable_for(w) >= max(RETENTION[w], RELIABILITY_RETENTION[w], KEPT[w]), (d.id, w)


def test_readings_no_window_takes_any_more_are_counted_alike_by_batch_and_event():
    from shared.stream import State

    events = [
        registry("A"),
        reading("A", DAY.replace(day=6, hour=10), 10.0, 1.0),
        reading("A", DAY.replace(hour=1), 1.0, 5.0),  # 5 days late: its quarter hour and its day are gone
        reading("A", DAY.replace(day=5, hour=1), 1.0, 5.0),
    ]  # quarter hour gone (> 26 h), day still kept
    for batch in (True, False):
        proc, state = MeterKpiProcessor(), State(0)
        if batch:
            proc.apply_batch(events, state)
        else:
            for e in events:
                proc.apply(e, state)
        assert proc.late_ignored == 1, batch
