"""Meter domain: reading validation (VEE), event normalisation, interruption pairing, IEEE 1366 formulas."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.meter.domain import (
    DEDUP_HORIZON_INTERVALS,
    Limits,
    MeterEventIn,
    MeterInfo,
    caidi_minutes,
    classify_interruption,
    expected_intervals,
    feeder_in_outage,
    maifi,
    normalise_event,
    saidi_minutes,
    saifi,
    undo_registers,
    validate_events,
    validate_readings,
)

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
NOW = datetime(2024, 5, 2, 0, 0, tzinfo=UTC)
REGISTRY = {
    "M1": MeterInfo("M1", 1, "BD", "BD-01", "F1", None, date(2024, 1, 1), 900),
    "M2": MeterInfo("M2", 4, "BD", "BD-02", "F1", "T1", date(2024, 1, 1), 900),
    "H1": MeterInfo("H1", 1, "HK", "HK-01", "F2", None, date(2024, 1, 1), 3600),
}


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def reading(meter="M1", minutes=0, value=100.0, obis="1-0:1.8.0", unit="kWh", quality="measured", end=None):
    """A schema-valid reading as the batch parser gives it (a ReadingItem dict)."""
    return {
        "meter_id": meter,
        "obis": obis,
        "interval_end": end or iso(T0 + timedelta(minutes=minutes)),
        "value": value,
        "unit": unit,
        "quality": quality,
    }


def run(readings, registers=None, limits=Limits()):
    registers = {} if registers is None else registers
    out = validate_readings(list(enumerate(readings)), REGISTRY, registers, NOW, limits)
    return out, registers


def codes(out):
    return [(e.index, e.code, e.field) for e in out.errors]


def test_register_deltas_and_enrichment():
    out, regs = run(
        [reading(value=100.0), reading(minutes=15, value=100.75), reading(minutes=30, value=101.0)]
    )
    assert out.errors == [] and out.duplicates == 0
    payloads = [p for _, p in out.accepted]
    assert [p["delta"] for p in payloads] == [None, 0.75, 0.25]
    assert payloads[0]["flags"] == ["first_read"]
    assert payloads[1] == {
        "meter_id": "M1",
        "obis": "1-0:1.8.0",
        "interval_end": "2024-05-01T10:15:00Z",
        "interval_seconds": 900,
        "value": 100.75,
        "unit": "kWh",
        "quality": "measured",
        "flags": [],
        "delta": 0.75,
        "district": "BD",
        "commune": "BD-01",
        "feeder": "F1",
        "customers": 1,
    }
    end = int((T0 + timedelta(minutes=30)).timestamp())
    # bits: 30 min (bit 0), 15 min (bit 1), 0 min (bit 2) all seen
    t0, t15 = end - 1800, end - 900
    # ... no zero-consumption run, and the two values before the newest kept for the both-neighbours check
    assert regs[("M1", "1-0:1.8.0")] == (end, 0b111, 101.0, end, 0, t0, 100.0, t15, 100.75)


def test_rollover_is_accepted_with_the_wrapped_delta():
    # 6-digit register: 999,990 kWh then 5 kWh → 15 kWh consumed across the rollover.
    out, _ = run([reading(value=999_990.0), reading(minutes=15, value=5.0)])
    assert out.errors == []
    second = out.accepted[1][1]
    assert second["delta"] == pytest.approx(15.0)
    assert "rollover" in second["flags"]


def test_register_going_backwards_is_rejected():
    out, regs = run([reading(value=500.0), reading(minutes=15, value=499.0)])
    assert codes(out) == [(1, "register_backwards", "value")]
    assert regs[("M1", "1-0:1.8.0")][2] == 500.0


def test_implausible_jump_uses_max_demand_over_elapsed_time():
    # 250 kW for 15 minutes = 62.5 kWh; 30 minutes = 125 kWh.
    out, _ = run(
        [
            reading(value=100.0),
            reading(minutes=15, value=162.6),
            reading(minutes=15, value=162.4),
            reading(minutes=45, value=162.4 + 125.1),
        ]
    )
    assert codes(out) == [(1, "implausible_jump", "value"), (3, "implausible_jump", "value")]
    assert out.accepted[1][1]["delta"] == pytest.approx(62.4)


def test_duplicate_same_value_counts_conflicting_value_rejected():
    out, _ = run([reading(value=10.0), reading(value=10.0), reading(value=11.0)])
    assert out.duplicates == 1
    assert codes(out) == [(2, "conflict", "value")]
    assert len(out.accepted) == 1


def test_late_reading_accepted_once_then_duplicate_and_too_late():
    regs: dict = {}
    run([reading(value=10.0), reading(minutes=45, value=13.0)], regs)
    out, _ = run(
        [reading(minutes=15, value=11.0), reading(minutes=15, value=11.0), reading(minutes=30, value=14.0)],
        regs,
    )
    assert len(out.accepted) == 1 and out.accepted[0][1]["flags"] == ["late"]
    assert out.accepted[0][1]["delta"] is None
    assert out.duplicates == 1
    # 14 kWh at 10:30 is above the 13 kWh already accepted at 10:45
    assert codes(out) == [(2, "register_backwards", "value")]
    far = -15 * (DEDUP_HORIZON_INTERVALS + 1) + 45
    out, _ = run([reading(minutes=far, value=1.0)], regs)
    assert codes(out) == [(0, "too_late", "interval_end")]


def test_item_level_rejections_say_which_field_and_why():
    out, _ = run(
        [
            reading(meter="NOPE"),
            reading(obis="1-0:9.9.9"),
            reading(unit="MWh"),
            reading(end=iso(NOW + timedelta(hours=1)), value=1.0),
            reading(end="2023-12-31T00:00:00Z", value=1.0),
            reading(minutes=7),
            reading(meter="H1", minutes=15),  # hourly meter: 10:15 is off its grid
            reading(obis="1-0:32.7.0", unit="V", value=900.0),
        ]
    )
    assert codes(out) == [
        (0, "unknown_entity", "meter_id"),
        (1, "unknown_obis", "obis"),
        (2, "invalid_unit", "unit"),
        (3, "future", "interval_end"),
        (4, "before_installation", "interval_end"),
        (5, "misaligned", "interval_end"),
        (6, "misaligned", "interval_end"),
        (7, "implausible_value", "value"),
    ]
    assert all(e.reason for e in out.errors) and out.accepted == []


def test_wh_converted_to_kwh_and_quality_flag_kept():
    out, _ = run(
        [
            reading(value=100_000.0, unit="Wh"),
            reading(minutes=15, value=100_500.0, unit="Wh", quality="estimated"),
        ]
    )
    assert out.accepted[1][1]["value"] == pytest.approx(100.5)
    assert out.accepted[1][1]["delta"] == pytest.approx(0.5)
    assert out.accepted[1][1]["flags"] == ["estimated"]


def test_missing_interval_is_published_without_value_and_deduplicated():
    out, _ = run(
        [
            reading(value=10.0),
            reading(minutes=15, value=None, quality="missing"),
            reading(minutes=30, value=10.5),
        ]
    )
    assert out.errors == []
    assert out.accepted[1][1]["value"] is None
    # VEE: the 0.5 kWh consumed across the gap (10:00 → 10:30) is spread evenly over its two intervals; the
    # missing 10:15 interval gets an estimated reading (register interpolated), the 10:30 reading keeps its share
    assert out.accepted[2][1]["delta"] == pytest.approx(0.25)
    assert out.accepted[2][1]["flags"] == ["gap"]
    assert [(e["interval_end"], e["quality"], e["value"], e["delta"], e["flags"]) for e in out.estimates] == [
        ("2024-05-01T10:15:00Z", "estimated", pytest.approx(10.25), pytest.approx(0.25), ["gap_estimate"])
    ]


def test_value_required_unless_missing():
    out, _ = run(
        [
            reading(value=None),
            reading(value=None, quality="estimated"),
            reading(value=None, quality="missing"),
        ]
    )
    assert codes(out) == [(0, "invalid", "value"), (1, "invalid", "value")]
    assert len(out.accepted) == 1 and out.accepted[0][1]["value"] is None


def test_interval_end_must_be_a_time_with_offset_on_the_grid():
    # 10:15 in UTC+07:00 is 03:15Z (on the grid); no offset, not a time, and a fraction of a second are errors.
    out, _ = run(
        [
            reading(end="2024-05-01T10:15:00+07:00"),
            reading(end="2024-05-01T10:30:00"),
            reading(end="yesterday"),
            reading(end="2024-05-01T10:45:00.5Z"),
        ]
    )
    assert out.accepted[0][1]["interval_end"] == "2024-05-01T03:15:00Z"
    assert codes(out) == [
        (1, "invalid", "interval_end"),
        (2, "invalid", "interval_end"),
        (3, "misaligned", "interval_end"),
    ]
    assert "timezone" in out.errors[0].reason


def test_undo_restores_previous_states_unless_moved_on():
    regs: dict = {}
    run([reading(value=10.0)], regs)
    before = regs[("M1", "1-0:1.8.0")]
    out, _ = run([reading(minutes=15, value=11.0), reading(meter="M2", value=5.0)], regs)
    applied = {k: regs[k] for k in out.previous}
    undo_registers(regs, out.previous, applied)
    assert regs == {("M1", "1-0:1.8.0"): before}


# --------------------------------------------------------------------------------------------- events
def test_vendor_and_standard_codes_normalised():
    assert normalise_event(1, "1").event == "power_down"
    assert normalise_event(None, "last-gasp").event == "power_down"
    assert normalise_event(None, "REV_ENERGY").event == "reverse_energy_detected"
    assert normalise_event(None, "REV_ENERGY").category == "tamper"
    assert normalise_event(42, "X42").event == "magnetic_field_detected"
    assert normalise_event(None, "44").event == "meter_cover_opened"
    assert normalise_event(62, "RD").event == "disconnected"
    assert normalise_event(999, "WHATEVER") is None


def ev(meter, seconds, code=None, raw="1"):
    return MeterEventIn(meter_id=meter, at=T0 + timedelta(seconds=seconds), code=code, raw_code=raw)


def test_power_down_up_pairing_momentary_vs_sustained():
    items = [
        ev("M1", 299, 2, "2"),
        ev("M1", 0, 1, "1"),  # out of order in the batch
        ev("M2", 0, None, "LAST_GASP"),
        ev("M2", 300, None, "POWER_RESTORED"),
    ]
    out = validate_events(list(enumerate(items)), REGISTRY, {}, {}, {"F1": 200}, NOW)
    assert out.errors == []
    assert [p["event"] for _, p in out.accepted] == ["power_up", "power_down", "power_down", "power_up"]
    kinds = {i["meter_id"]: (i["kind"], i["duration_seconds"], i["customers"]) for i in out.interruptions}
    # IEEE 1366-2012: an interruption of 5 minutes or less is momentary, so exactly 300 s is momentary.
    assert kinds == {"M1": ("momentary", 299.0, 1), "M2": ("momentary", 300.0, 4)}
    t0 = int(T0.timestamp() * 1000)
    assert out.timelines == {  # nothing pending; the interruptions remembered to recognise repeats
        "M1": {"p": [], "c": [[t0, t0 + 299_000]]},
        "M2": {"p": [], "c": [[t0, t0 + 300_000]]},
    }
    assert [(s["meter_id"], s["supply"]) for s in out.supply_changes] == [
        ("M1", "lost"),
        ("M2", "lost"),
        ("M1", "restored"),
        ("M2", "restored"),
    ]
    assert out.supply_changes[0]["feeder_meters"] == 200


def test_power_up_closes_outage_opened_in_an_earlier_batch_and_duplicates_dropped():
    down_ms = int(T0.timestamp() * 1000)
    seen = {("M1", down_ms, "1"): None}
    items = [
        ev("M1", 0, 1, "1"),
        ev("M1", 3600, 2, "2"),
        ev("M1", 3600, 2, "2"),
        ev("M9", 1, 1, "1"),
        ev("M1", 10, 250, "NOPE"),
    ]
    timelines = {"M1": {"p": [[down_ms, "d"]], "c": []}}
    out = validate_events(list(enumerate(items)), REGISTRY, timelines, seen, {}, NOW)
    assert out.duplicates == 2
    assert [(e.index, e.code) for e in out.errors] == [(3, "unknown_entity"), (4, "unknown_code")]
    assert out.interruptions[0]["duration_seconds"] == 3600.0
    assert out.interruptions[0]["started_at"] == "2024-05-01T10:00:00Z"


def test_power_up_without_power_down_gives_no_interruption():
    out = validate_events([(0, ev("M1", 0, 2, "2"))], REGISTRY, {}, {}, {}, NOW)
    assert out.interruptions == [] and len(out.accepted) == 1


# ------------------------------------------------------------------------------------------- formulas
def test_ieee_1366_hand_computed():
    # N_T = 10 customers. Sustained: 1 customer × 30 min, 8 customers × 10 min. Momentary: 1 customer.
    ci, cmi, mi = 1 + 8, 1 * 30 + 8 * 10, 1
    assert saifi(ci, 10) == pytest.approx(0.9)
    assert saidi_minutes(cmi, 10) == pytest.approx(11.0)
    assert caidi_minutes(cmi, ci) == pytest.approx(110 / 9)
    assert caidi_minutes(cmi, ci) == pytest.approx(saidi_minutes(cmi, 10) / saifi(ci, 10))
    assert maifi(mi, 10) == pytest.approx(0.1)
    assert saifi(0, 0) is None and caidi_minutes(0, 0) is None


def test_momentary_boundary_is_five_minutes():
    assert classify_interruption(299.9) == "momentary"
    # IEEE 1366-2012 (definitions, "momentary interruption" / "sustained interruption"): 5 min or less is
    # momentary, sustained means longer than 5 min; the threshold is a setting.
    assert classify_interruption(300) == "momentary"
    assert classify_interruption(300.001) == "sustained"
    assert classify_interruption(60, limit_seconds=59) == "sustained"


def test_expected_intervals():
    day = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp())
    assert expected_intervals(86400, day, {900: 2, 3600: 1}) == 2 * 96 + 24
    assert expected_intervals(900, day, {900: 2, 3600: 1}) == 3  # the hourly meter's interval starts at 00:00
    assert expected_intervals(900, day + 900, {900: 2, 3600: 1}) == 2


def test_feeder_outage_rule():
    assert feeder_in_outage(100, 200)
    assert not feeder_in_outage(99, 200)
    assert not feeder_in_outage(2, 2)  # fewer than 3 meters is not "many"
    assert feeder_in_outage(3, 4)


def test_day_windows_are_hanoi_days_and_quarters_stay_on_the_epoch_grid():
    from services.meter.domain import window_start

    local_midnight = int(datetime(2024, 5, 1, 17, 0, tzinfo=UTC).timestamp())  # 2024-05-02 00:00 in Hanoi
    assert window_start(local_midnight, 86400) == local_midnight
    assert window_start(local_midnight - 1, 86400) == local_midnight - 86400
    assert window_start(local_midnight + 86399, 86400) == local_midnight
    assert window_start(local_midnight + 7 * 60 + 5, 900) == local_midnight
    assert window_start(local_midnight + 15 * 60, 900) == local_midnight + 900
