"""Kiosk domain logic: opening hours, online time, technical and functional availability, ingest checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.kiosk import domain
from services.kiosk.domain import (
    KioskInfo,
    fault_type,
    fold_heartbeat,
    kiosk_availability,
    merge,
    online_intervals,
    opening_intervals,
    subtract,
    window_start,
)
from shared.areas import hanoi
from shared.contracts.kiosk import HeartbeatReceived, KioskRegistered, SessionEnded
from tests.areas import BA_DINH, HOAN_KIEM_UNIT

# 2024-05-06 is a Monday. Hanoi is UTC+7: local 08:00 is 01:00 UTC.
MON = datetime(2024, 5, 6, tzinfo=UTC).timestamp()
H = 3600
WEEKDAYS_8_17 = [{"days": [1, 2, 3, 4, 5], "open": "08:00", "close": "17:00"}]
DAILY_7_21 = [{"days": [1, 2, 3, 4, 5, 6, 7], "open": "07:00", "close": "21:00"}]


def beats(start: float, end: float, every: float = 60) -> list[float]:
    out, t = [], start
    while t <= end:
        out.append(t)
        t += every
    return out


def fold(times: list[float], timeout: float = 180) -> tuple[list[list[float]], float | None]:
    segs: list[list[float]] = []
    last = None
    for t in times:
        segs, last = fold_heartbeat(segs, last, t, timeout)
    return segs, last


def test_interval_algebra():
    assert merge([(5, 7), (1, 3), (2, 4), (7, 8), (9, 9)]) == [(1, 4), (5, 8)]
    assert subtract([(0, 10)], [(2, 3), (5, 12)]) == [(0, 2), (3, 5)]
    assert domain.intersect([(0, 5), (6, 10)], [(4, 7)]) == [(4, 5), (6, 7)]


def test_opening_hours_are_local_time_and_weekday_specific():
    # Monday: 08:00-17:00 local = 01:00-10:00 UTC.
    assert opening_intervals(WEEKDAYS_8_17, MON, MON + 24 * H) == [(MON + 1 * H, MON + 10 * H)]
    saturday = MON + 5 * 24 * H
    assert opening_intervals(WEEKDAYS_8_17, saturday, saturday + 24 * H) == []
    # A whole week: five 9-hour days.
    assert domain.total(opening_intervals(WEEKDAYS_8_17, MON, MON + 7 * 24 * H)) == 5 * 9 * H
    # 24:00 closes at local midnight (17:00 UTC).
    all_day = [{"days": [1], "open": "00:00", "close": "24:00"}]
    assert opening_intervals(all_day, MON, MON + 24 * H) == [(MON, MON + 17 * H)]


def test_opening_hours_of_a_schedule_are_reused_yet_each_caller_gets_its_own_list():
    first = opening_intervals(WEEKDAYS_8_17, MON, MON + 24 * H)
    first.append((0, 1))  # a caller changing its result does not change the next one's
    assert opening_intervals(WEEKDAYS_8_17, MON, MON + 24 * H) == [(MON + 1 * H, MON + 10 * H)]
    # Another schedule over the same window, and the same schedule changed in place, are not the one remembered.
    assert opening_intervals(DAILY_7_21, MON, MON + 24 * H) == [(MON, MON + 14 * H)]
    hours = [dict(WEEKDAYS_8_17[0])]
    assert opening_intervals(hours, MON, MON + 24 * H) == [(MON + 1 * H, MON + 10 * H)]
    hours[0]["close"] = "12:00"
    assert opening_intervals(hours, MON, MON + 24 * H) == [(MON + 1 * H, MON + 5 * H)]


def test_daily_windows_follow_the_hanoi_day_and_hourly_windows_the_hour():
    t = MON + 18 * H + 5  # 01:00:05 local on Tuesday
    assert window_start(t, 86400) == MON + 17 * H
    assert window_start(t, 3600) == MON + 18 * H


def test_heartbeats_within_timeout_are_online_and_a_longer_gap_is_offline():
    segs, last = fold([MON, MON + 60, MON + 120, MON + 500, MON + 560])
    assert segs == [[MON, MON + 120], [MON + 500, MON + 560]]
    assert last == MON + 560
    # Still fresh at now: online up to now; stale: nothing after the last heartbeat.
    assert online_intervals(segs, last, MON + 600, 180)[-1] == (MON + 500, MON + 600)
    assert online_intervals(segs, last, MON + 800, 180)[-1] == (MON + 500, MON + 560)
    # Late (older) heartbeats change nothing.
    assert fold_heartbeat([[MON, MON + 60]], MON + 60, MON + 30, 180) == ([[MON, MON + 60]], MON + 60)


def _kiosk(hours, peripherals=("touchscreen",), since=0.0):
    return {"hours": hours, "since": since, "peripherals": list(peripherals)}


def test_availability_of_a_kiosk_offline_across_a_window_boundary():
    # Open 07:00-21:00 local (00:00-14:00 UTC). Heartbeats each minute 08:00-09:40 UTC, silent until 10:20,
    # then again to 11:00. The outage straddles the 10:00 boundary: 20 min offline in each hour.
    segs, last = fold(beats(MON + 8 * H, MON + 9 * H + 40 * 60) + beats(MON + 10 * H + 20 * 60, MON + 11 * H))
    online = online_intervals(segs, last, MON + 11 * H, 180)
    k = _kiosk(DAILY_7_21)
    nine = kiosk_availability(k, online, {}, MON + 9 * H, MON + 10 * H)
    ten = kiosk_availability(k, online, {}, MON + 10 * H, MON + 11 * H)
    assert (nine.scheduled_s, nine.online_s) == (3600, 2400)
    assert (ten.scheduled_s, ten.online_s) == (3600, 2400)
    # The current hour counts only up to now: at 11:30 with heartbeats to 11:30, 30 of 30 minutes.
    segs2, last2 = fold(beats(MON + 11 * H, MON + 11 * H + 30 * 60))
    cur = kiosk_availability(
        k, online_intervals(segs2, last2, MON + 11.5 * H, 180), {}, MON + 11 * H, MON + 11.5 * H
    )
    assert (cur.scheduled_s, cur.online_s) == (1800, 1800)


def test_availability_counts_only_opening_hours():
    # Open 01:00-10:00 UTC on Monday; online 09:30-12:00 UTC only. Daily (Hanoi) window of Monday.
    segs, last = fold(beats(MON + 9.5 * H, MON + 12 * H))
    online = online_intervals(segs, last, MON + 16 * H, 180)
    day_start = MON - 7 * H
    av = kiosk_availability(_kiosk(WEEKDAYS_8_17), online, {}, day_start, day_start + 24 * H)
    assert av.scheduled_s == 9 * H
    assert av.online_s == 1800  # 09:30-10:00 UTC; the two hours after closing do not count
    # Put in service at 05:00 UTC: scheduled time starts there.
    late = kiosk_availability(
        _kiosk(WEEKDAYS_8_17, since=MON + 5 * H), online, {}, day_start, day_start + 24 * H
    )
    assert late.scheduled_s == 5 * H


def test_functional_availability_per_journey():
    # Online all day, printer out of paper 03:00-04:30 UTC; no payment terminal fitted.
    k = _kiosk(WEEKDAYS_8_17, peripherals=("touchscreen", "printer", "id_scanner"))
    online = [(MON, MON + 24 * H)]
    down = {"printer": [(MON + 3 * H, MON + 4.5 * H)]}
    hour = kiosk_availability(k, online, down, MON + 3 * H, MON + 4 * H)
    assert hour.journeys["print_result"] == (0, 3600)
    assert hour.journeys["queue_ticket"] == (0, 3600)
    assert hour.journeys["lookup_procedure"] == (3600, 3600)
    assert hour.journeys["submit_dossier"] == (3600, 3600)
    assert "pay_fee" not in hour.journeys  # not offered: not in the denominator
    day = kiosk_availability(k, online, down, MON - 7 * H, MON + 17 * H)
    assert day.journeys["print_result"] == (9 * H - 5400, 9 * H)


@pytest.mark.parametrize(
    ("peripheral", "state", "paper", "expected"),
    [
        ("printer", "online", "out", "paper_out"),
        ("printer", "online", "jammed", "paper_jam"),
        ("printer", "online", "low", None),
        ("printer", "hardware_error", "full", "hardware_error"),
        ("card_reader", "fraud_attempt", None, "fraud_attempt"),
        ("camera", "power_off", None, "device_offline"),
        # CEN/XFS WFS_STAT_DEVUSERERROR: "a person is preventing proper device operation": not usable. (The old
        # expectation, None = usable, was wrong: issue #37.)
        ("touchscreen", "user_error", None, "user_error"),
        ("payment_terminal", "busy", None, None),
    ],
)
def test_fault_types(peripheral, state, paper, expected):
    assert fault_type(peripheral, state, paper) == expected


def test_ratio():
    assert domain.ratio(7, 10, 100) == 70.0
    assert domain.ratio(1, 0) is None


REG = {
    "K1": KioskInfo("K1", "BD", frozenset({"touchscreen", "printer"}), True, gateway="gw-1"),
    "K2": KioskInfo("K2", "HK", frozenset({"touchscreen"}), False),
}
NOW = datetime(2024, 5, 6, 3, 0, tzinfo=UTC)
LIMITS = {"max_skew_s": 300, "max_age_s": 7 * 86400}


def test_heartbeat_checks_name_the_item_field_and_reason():
    items = [
        (0, HeartbeatReceived(kiosk_id="K1", at=NOW, app_version="1.2")),
        (1, HeartbeatReceived(kiosk_id="K9", at=NOW, app_version="1.2")),
        (2, HeartbeatReceived(kiosk_id="K2", at=NOW, app_version="1.2")),
        (3, HeartbeatReceived(kiosk_id="K1", at=NOW + timedelta(hours=1), app_version="1.2")),
        (4, HeartbeatReceived(kiosk_id="K1", at=NOW, app_version="1.2")),
    ]
    ok, errors, dups = domain.check_heartbeats(items, REG, NOW, **LIMITS)
    assert [h.kiosk_id for h in ok] == ["K1"] and dups == 1
    assert [(e.index, e.field, e.code) for e in errors] == [
        (1, "kiosk_id", "unknown_entity"),
        (2, "kiosk_id", "inactive"),
        (3, "at", "invalid_time"),
    ]


def test_session_checks():
    def s(i, **kw):
        base = {
            "session_id": f"s{i}",
            "kiosk_id": "K1",
            "journey": "pay_fee",
            "started_at": NOW - timedelta(minutes=5),
            "ended_at": NOW,
            "outcome": "completed",
        }
        return (i, SessionEnded(**{**base, **kw}))

    ok, errors, dups = domain.check_sessions(
        [s(0), s(1, started_at=NOW - timedelta(hours=5)), s(0)], REG, NOW, **LIMITS
    )
    assert len(ok) == 1 and dups == 1
    assert (errors[0].index, errors[0].field, errors[0].id) == (1, "ended_at", "s1")
    with pytest.raises(ValueError, match="failure_reason"):
        s(3, outcome="failed")


def test_principal_may_report_only_for_its_kiosks():
    assert domain.may_report("p", {"kiosks": ["K1"]}, False, "K1", REG)
    assert not domain.may_report("p", {"kiosks": ["K1"]}, False, "K2", REG)
    assert domain.may_report("gw-1", {}, False, "K1", REG)  # the registry names it the kiosk's gateway
    assert domain.may_report("admin", {}, True, "K2", REG)


def test_registration_checks_areas_and_peripherals():
    entry = KioskRegistered(
        kiosk_id="K1",
        building="Tòa nhà A",
        address="1 Phố X",
        district=BA_DINH,
        commune=HOAN_KIEM_UNIT,  # a unit of another area
        opening_hours=WEEKDAYS_8_17,
        peripherals=["printer", "printer"],
        software_version="1.0",
        in_service_since=NOW,
        version=1,
    )
    assert domain.check_registration(entry, hanoi()) == [
        ("commune", "the commune is not in that district"),
        ("peripherals", "a peripheral is listed twice"),
    ]
