"""Interruption pairing by event time, inference from missing reads, VEE (both neighbours, gaps, frozen
registers, decommissioning) and Major Event Days, each against values worked out by hand."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import pytest

from services.meter.domain import (
    DailyReliability,
    Limits,
    MeterEventIn,
    MeterInfo,
    expire_power_timelines,
    reliability_with_and_without_meds,
    validate_events,
    validate_readings,
)
from shared.reliability import major_event_threshold

T0 = datetime(2024, 5, 1, 3, 0, tzinfo=UTC)  # 10:00 in Hanoi
NOW = T0 + timedelta(days=2)
REGISTRY = {
    "M1": MeterInfo("M1", 1, "BD", "BD-01", "F1", None, date(2024, 1, 1), 900),
    "M2": MeterInfo("M2", 3, "BD", "BD-01", "F1", None, date(2024, 1, 1), 900),
    "GONE": MeterInfo("GONE", 1, "BD", "BD-01", "F1", None, date(2024, 1, 1), 900, None, date(2024, 5, 1)),
}


def ev(meter, minutes, code, raw=None):
    return MeterEventIn(
        meter_id=meter, at=T0 + timedelta(minutes=minutes), code=code, raw_code=raw or str(code)
    )


def feed(batches, timelines=None, now=NOW, limits=Limits()):
    """Feed event batches in arrival order as the service does; returns (interruptions, timelines)."""
    timelines = dict(timelines or {})
    found = []
    for batch in batches:
        out = validate_events(list(enumerate(batch)), REGISTRY, timelines, {}, {}, now, limits)
        assert out.errors == []
        found += out.interruptions
        for mid, tl in out.timelines.items():
            if tl is None:
                timelines.pop(mid, None)
            else:
                timelines[mid] = tl
    return found, timelines


def spans(interruptions):
    return [
        (i["meter_id"], i["started_at"], i["duration_seconds"] / 60, i["kind"], i["inferred"])
        for i in interruptions
    ]


# ----------------------------------------------------------------------------------------------- pairing
def test_the_issues_store_and_forward_case_gives_a_30_minute_and_a_momentary_interruption():
    # Down 10:00, up 10:30 (arrives first), then a momentary 2 min at 11:00 the next day. The old pairing
    # dropped the early power-up and booked 10:00 → the next power-up (a 25-hour "interruption").
    found, timelines = feed(
        [
            [ev("M1", 30, 2)],  # power-up 10:30, its power-down still at the head-end
            [ev("M1", 0, 1)],  # power-down 10:00
            [ev("M1", 25 * 60, 1), ev("M1", 25 * 60 + 2, 2)],  # 11:00 next day, 2 minutes
        ]
    )
    assert spans(found) == [
        ("M1", "2024-05-01T03:00:00Z", 30.0, "sustained", False),
        ("M1", "2024-05-02T04:00:00Z", 2.0, "momentary", False),
    ]
    assert [p for p in timelines["M1"]["p"]] == []  # nothing left waiting


def test_repeated_last_gasps_are_one_interruption_whatever_their_arrival():
    found, _ = feed(
        [
            [ev("M2", 0, 1), ev("M2", 1, None, "LAST_GASP")],
            [ev("M2", 20, 2)],
            [ev("M2", 5, None, "PWR_FAIL")],  # a repeat arriving after the interruption closed: ignored
        ]
    )
    # one interruption 10:00 → 10:20 (20 min, sustained, 3 customers)
    assert spans(found) == [("M2", "2024-05-01T03:00:00Z", 20.0, "sustained", False)]
    assert found[0]["customers"] == 3


def test_exactly_five_minutes_is_momentary_and_the_limit_is_a_setting():
    found, _ = feed([[ev("M1", 0, 1), ev("M1", 5, 2)]])
    assert spans(found)[0][2:4] == (5.0, "momentary")  # IEEE 1366-2012: 5 min or less
    found, _ = feed([[ev("M1", 0, 1), ev("M1", 5, 2)]], limits=Limits(momentary_limit_seconds=60))
    assert spans(found)[0][2:4] == (5.0, "sustained")


def test_a_power_up_whose_power_down_never_comes_is_inferred_from_missing_reads():
    _, timelines = feed([[ev("M1", 60, 2)]])  # power-up 11:00, no power-down ever arrives
    assert timelines["M1"]["p"] == [[int((T0 + timedelta(minutes=60)).timestamp() * 1000), "u"]]
    # The register's seen-mask (bit k = the interval ending 15 k minutes before the last, 11:15): reads ending
    # 11:15 (bit 0), 10:15 (bit 4) and 10:00 (bit 5); 10:30, 10:45 and 11:00 are missing.
    q = lambda m: int((T0 + timedelta(minutes=m)).timestamp())  # noqa: E731
    registers = {
        ("M1", "1-0:1.8.0"): (q(75), (1 << 0) | (1 << 4) | (1 << 5), 100.0, q(75), 0, 0, 0.0, 0, 0.0)
    }
    later = T0 + timedelta(minutes=60) + timedelta(days=7, seconds=1)  # past the 7-day pairing horizon
    out = expire_power_timelines(timelines, REGISTRY, registers, later)
    # last read before the power-up ended 10:15; 10:30 and 10:45 are missing → 10:15 → 11:00, 45 min
    assert spans(out.interruptions) == [("M1", "2024-05-01T03:15:00Z", 45.0, "sustained", True)]
    assert out.timelines["M1"]["p"] == []
    # without reads to infer from, it is counted as unpaired
    out = expire_power_timelines(timelines, REGISTRY, {}, later)
    assert out.interruptions == [] and out.unpaired_power_ups == 1


def test_a_repeated_power_up_after_a_closed_interruption_is_not_inferred_again():
    # down 10:20, up 10:59 and a repeated power-up 11:00 with another vendor code: one interruption; the
    # repeat waits for a power-down that never comes, and no read since the restoration → nothing inferred
    found, timelines = feed([[ev("M1", 20, 1), ev("M1", 59, 2), ev("M1", 60, None, "POWER_RESTORED")]])
    assert spans(found) == [("M1", "2024-05-01T03:20:00Z", 39.0, "sustained", False)]
    q = lambda m: int((T0 + timedelta(minutes=m)).timestamp())  # noqa: E731
    registers = {
        ("M1", "1-0:1.8.0"): (q(75), (1 << 0) | (1 << 4) | (1 << 5), 100.0, q(75), 0, 0, 0.0, 0, 0.0)
    }
    later = T0 + timedelta(minutes=60) + timedelta(days=7, seconds=1)
    out = expire_power_timelines(timelines, REGISTRY, registers, later)
    assert out.interruptions == [] and out.unpaired_power_ups == 1


# -------------------------------------------------------------------------------------------------- VEE
def reading(minutes, value, meter="M1", quality="measured"):
    return {
        "meter_id": meter,
        "obis": "1-0:1.8.0",
        "interval_end": (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"),
        "value": value,
        "unit": "kWh",
        "quality": quality,
    }


def run_readings(batches, limits=Limits()):
    registers: dict = {}
    outs = []
    for batch in batches:
        outs.append(validate_readings(list(enumerate(batch)), REGISTRY, registers, NOW, limits))
    return outs, registers


def test_a_late_reading_is_checked_against_both_neighbours():
    outs, _ = run_readings(
        [
            [reading(0, 100.0), reading(30, 102.0)],
            [reading(15, 99.0)],  # below its earlier neighbour (10:00 = 100): the register went backwards
            [reading(15, 102.5)],  # above its later neighbour (10:30 = 102)
            [reading(15, 101.0)],  # between them: accepted, flagged late
        ]
    )
    assert [(e.index, e.code, e.reason) for e in outs[1].errors] == [
        (
            0,
            "register_backwards",
            "late register value is below an earlier accepted one (register going backwards)",
        )
    ]
    assert [e.code for e in outs[2].errors] == ["register_backwards"]
    assert outs[3].errors == [] and outs[3].accepted[0][1]["flags"] == ["late"]


def test_a_two_hour_gap_is_spread_over_its_intervals_as_estimates():
    # 10:00 = 100 kWh, next read 12:00 = 102 kWh: 2 kWh over 8 quarter hours → 0.25 kWh each (1 kW), not
    # 2 kWh in the last quarter hour (8 kW).
    outs, _ = run_readings([[reading(0, 100.0)], [reading(120, 102.0)]])
    last = outs[1].accepted[0][1]
    assert last["delta"] == pytest.approx(0.25) and last["flags"] == ["gap"] and last["quality"] == "measured"
    est = outs[1].estimates
    assert [e["interval_end"][11:16] for e in est] == [
        "03:15",
        "03:30",
        "03:45",
        "04:00",
        "04:15",
        "04:30",
        "04:45",
    ]
    assert all(e["quality"] == "estimated" and e["delta"] == pytest.approx(0.25) for e in est)
    assert [e["value"] for e in est] == pytest.approx([100.25 + 0.25 * k for k in range(7)])
    assert sum(e["delta"] for e in est) + last["delta"] == pytest.approx(2.0)


def test_a_frozen_register_is_flagged_after_the_configured_intervals():
    batch = [reading(15 * k, 500.0) for k in range(6)]  # the register does not move for 5 intervals
    outs, _ = run_readings([batch], Limits(frozen_intervals=4))
    flags = [p["flags"] for _, p in outs[0].accepted]
    # zero-consumption run after each reading: -, 1, 2, 3, 4, 5 → flagged from the 4th interval on
    assert flags == [["first_read"], [], [], [], ["frozen_register"], ["frozen_register"]]


def test_readings_after_decommissioning_are_refused():
    # GONE was decommissioned on 2024-05-01 (Hanoi): from 2024-04-30T17:00Z on it serves no customer.
    outs, _ = run_readings([[reading(-15 * 60, 1.0, meter="GONE"), reading(0, 2.0, meter="GONE")]])
    assert [(e.index, e.code) for e in outs[0].errors] == [(1, "after_decommissioning")]
    assert len(outs[0].accepted) == 1


# ----------------------------------------------------------------------------------- Major Event Days
def test_major_event_threshold_by_the_2_5_beta_method_worked_by_hand():
    # IEEE 1366-2012 4.5: drop days with SAIDI 0, take ln of the rest, alpha = mean, beta = standard deviation,
    # T_MED = exp(alpha + 2.5 beta). History e^0, e^1, e^2, e^1, 0 → ln: 0, 1, 2, 1 (the 0 day left out).
    history = [math.e**0, math.e**1, math.e**2, math.e**1, 0.0]
    alpha = (0 + 1 + 2 + 1) / 4  # = 1
    beta = math.sqrt(((0 - 1) ** 2 + 0 + (2 - 1) ** 2 + 0) / (4 - 1))  # sample deviation: sqrt(2/3)
    assert major_event_threshold(history) == pytest.approx(math.exp(alpha + 2.5 * beta))  # ≈ 20.93 min
    assert major_event_threshold([0.0, 3.0]) is None  # one usable day: no threshold


def test_indices_with_and_without_major_event_days():
    history = [math.e**0, math.e**1, math.e**2, math.e**1]  # T_MED ≈ 20.93 min (previous test)
    days = [
        # N_T 100: 10 customers × 300 min → SAIDI 30 > T_MED: a major event day
        DailyReliability(date(2024, 5, 1), 10, 3000, 2, 100),
        # 5 customers × 60 min → SAIDI 3
        DailyReliability(date(2024, 5, 2), 5, 300, 4, 100),
    ]
    got = reliability_with_and_without_meds(days, history)
    assert got["major_event_days"] == ["2024-05-01"]
    # all days: SAIFI 0.10 + 0.05, SAIDI 30 + 3, CAIDI 33 / 0.15 = 220, MAIFI 0.02 + 0.04
    assert got["all_days"] == {
        "saifi": pytest.approx(0.15),
        "saidi_minutes": pytest.approx(33.0),
        "caidi_minutes": pytest.approx(220.0),
        "maifi": pytest.approx(0.06),
    }
    # without the MED: the second day alone, SAIFI 0.05, SAIDI 3, CAIDI 60, MAIFI 0.04
    assert got["without_major_event_days"] == {
        "saifi": pytest.approx(0.05),
        "saidi_minutes": pytest.approx(3.0),
        "caidi_minutes": pytest.approx(60.0),
        "maifi": pytest.approx(0.04),
    }
