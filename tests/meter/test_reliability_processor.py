"""The meter KPI processor's customers served (N_T) from registry dates, and interruptions restored after their
day closed for revision (counted and alarmed, never silently dropped)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from services.meter.processors import INTERRUPTIONS_PAST_HORIZON, MeterKpiProcessor
from shared.contracts.common import AlarmChanged
from shared.contracts.meter import InterruptionRecorded, MeterRegistered
from shared.stream import State
from shared.testing import received

HANOI = timezone(timedelta(hours=7))
DAY = datetime(2024, 5, 10, tzinfo=HANOI)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def registry(meter, district="BD", customers=1, installed="2024-01-01", removed=None, effective=None):
    return received(
        MeterRegistered,
        {
            "meter_id": meter,
            "customers": customers,
            "district": district,
            "commune": f"{district}-01",
            "feeder": "F1",
            "transformer": None,
            "installed_on": installed,
            "interval_seconds": 900,
            "decommissioned_on": removed,
            "effective_on": effective,
        },
    )


def interruption(meter, start: datetime, minutes: float, customers=1, district="BD"):
    return received(
        InterruptionRecorded,
        {
            "meter_id": meter,
            "started_at": iso(start),
            "ended_at": iso(start + timedelta(minutes=minutes)),
            "duration_seconds": minutes * 60.0,
            "kind": "momentary" if minutes <= 5 else "sustained",
            "customers": customers,
            "district": district,
            "commune": f"{district}-01",
            "feeder": "F1",
            "inferred": False,
        },
    )


def day_obs(out, kpi, code, day: datetime):
    found = {}
    for e in out:
        d = orjson.loads(e.value)
        if (d.get("kpi"), d.get("scope_code"), d.get("window_seconds"), d.get("window_start")) == (
            kpi,
            code,
            86400,
            iso(day),
        ):
            found = d
    return found


def test_customers_served_follow_the_registry_dates():
    proc, st = MeterKpiProcessor(), State(0)
    proc.apply_batch(
        [
            registry("A", customers=2),  # served throughout
            registry("B", customers=3, removed="2024-05-10"),  # decommissioned on day 10: not served on it
            registry("C", customers=4, installed="2024-05-11"),  # installed the day after
            registry("M", customers=5),  # moves from BD to HK on day 10
            registry("M", district="HK", customers=5, effective="2024-05-10"),
            interruption("A", DAY.replace(hour=9), 30, customers=2),
        ],
        st,
    )
    out = list(proc.emit(st, DAY))
    # day 10: BD = A 2 (B removed, C not yet, M moved away)
    bd = day_obs(out, "meter.saifi", "BD", DAY)
    assert (bd["numerator"], bd["denominator"]) == (2.0, 2.0)
    hk = day_obs(out, "meter.saifi", "HK", DAY)
    assert (hk["numerator"], hk["denominator"]) == (0.0, 5.0)
    city = day_obs(out, "meter.saifi", "HN", DAY)
    assert city["denominator"] == 7.0  # the moved meter counted once
    rs = day_obs(out, "meter.read_success_rate", "BD", DAY)
    assert rs["denominator"] == 1.0  # meters expected to report: A only
    # the next day C is installed: BD = 2 + 4
    proc.apply_batch([interruption("A", DAY + timedelta(days=1, hours=1), 10, customers=2)], st)
    out = list(proc.emit(st, DAY + timedelta(days=1)))
    assert day_obs(out, "meter.saifi", "BD", DAY + timedelta(days=1))["denominator"] == 6.0


def test_an_interruption_restored_after_its_day_closed_is_counted_and_alarmed():
    proc, st = MeterKpiProcessor(), State(0)
    before = INTERRUPTIONS_PAST_HORIZON.labels("86400")._value.get()
    # 10 days and 1 hour long: by its restoration its day is past the 8-day revision horizon
    start = DAY.replace(hour=8)
    events = [registry("A", customers=2), interruption("A", start, (10 * 24 + 1) * 60, customers=2)]
    proc.apply_batch(events, st)
    out = list(proc.emit(st, start + timedelta(days=11)))
    assert INTERRUPTIONS_PAST_HORIZON.labels("86400")._value.get() == before + 1
    alarms = [orjson.loads(e.value) for e in out if e.topic == "ioc.meter.alarms"]
    assert [(a["alarm_id"], a["state"], a["severity"]) for a in alarms] == [
        ("meter:interruption_past_horizon:BD", "raised", "major")
    ]
    assert "2024-05-10" in alarms[0]["message"] and "14460 min" in alarms[0]["message"]
    AlarmChanged.model_validate(alarms[0])  # a valid alarm contract
    assert day_obs(out, "meter.saidi_minutes", "BD", DAY) == {}  # its day is not re-opened


def test_an_interruption_within_the_horizon_revises_its_day():
    proc, st = MeterKpiProcessor(), State(0)
    start = DAY.replace(hour=8)
    proc.apply_batch([registry("A", customers=2), interruption("A", start, 7 * 24 * 60, customers=2)], st)
    out = list(proc.emit(st, start + timedelta(days=7)))
    saidi = day_obs(out, "meter.saidi_minutes", "BD", DAY)
    # 2 customers × 7 days × 1440 min / N_T 2
    assert (saidi["numerator"], saidi["denominator"]) == (2 * 7 * 1440.0, 2.0)
    assert saidi["value"] == pytest.approx(7 * 1440.0)


@pytest.mark.parametrize("lockout_first", [False, True], ids=["in-order", "lockout-arrives-first"])
def test_a_momentary_event_that_ends_in_a_lockout_is_not_a_maifi_e_event(lockout_first):
    # IEEE 1366-2012, 2.26 and 3.4.x (MAIFI_E): a momentary interruption event counts every reclosing within
    # 5 minutes of its first interruption as one event, and events immediately preceding a lockout (the
    # reclosing sequence ending in a sustained interruption) are not counted; their interruptions stay in MAIFI.
    proc, st = MeterKpiProcessor(), State(0)
    nine = DAY.replace(hour=9)
    reclosings = [
        interruption("A", nine, 0.5, customers=2),  # 09:00:00-09:00:30, first of the sequence
        interruption("A", nine + timedelta(minutes=1), 0.5, customers=2),  # 09:01, same event
    ]
    lockout = interruption("A", nine + timedelta(minutes=3), 40, customers=2)  # 09:03, sustained 40 min
    later = interruption("B", DAY.replace(hour=15), 1, customers=3)  # 15:00, a momentary event of its own
    events = [registry("A", customers=2), registry("B", customers=3)]
    events += [lockout, *reclosings, later] if lockout_first else [*reclosings, lockout, later]
    proc.apply_batch(events, st)
    out = list(proc.emit(st, DAY + timedelta(days=1)))
    # N_T = 2 + 3 = 5. MAIFI = Σ IM_i N_mi / N_T = (2 + 2 + 3) / 5 (every momentary interruption counts).
    maifi = day_obs(out, "meter.maifi", "BD", DAY)
    assert (maifi["numerator"], maifi["denominator"]) == (7.0, 5.0)
    # MAIFI_E = Σ IM_E N_mi / N_T: A's event ended in the 09:03 lockout, so only B's event counts: 3 / 5.
    maifi_e = day_obs(out, "meter.maifi_e", "BD", DAY)
    assert (maifi_e["numerator"], maifi_e["denominator"]) == (3.0, 5.0)
    # SAIFI = Σ N_i / N_T = 2 / 5 (the lockout is A's one sustained interruption).
    saifi = day_obs(out, "meter.saifi", "BD", DAY)
    assert (saifi["numerator"], saifi["denominator"]) == (2.0, 5.0)
