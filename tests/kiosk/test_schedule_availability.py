"""Kiosk availability by schedule (issue #37): hand-worked cases, each failing on the old code.

Times: MON = Monday 6 May 2024 00:00 UTC = 07:00 Hanoi. A kiosk open 08:00-17:00 Hanoi time is open
01:00-10:00 UTC. Heartbeat timeout 180 s.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from services.kiosk.domain import (
    XFS_USABLE,
    closed_days_of,
    fault_type,
    kiosk_availability,
    never_reported_offline,
    opening_intervals,
)
from services.kiosk.processors import KioskKpiProcessor
from shared.calendar import city_calendar
from shared.contracts.kiosk import KioskRegistered
from shared.stream import run_in_memory
from shared.testing import received
from tests.kiosk.test_processors import MON, H, hbs, iso, kpi, payloads

WEEKDAYS_8_17 = [{"days": [1, 2, 3, 4, 5], "open": "08:00", "close": "17:00"}]
CLOSED = closed_days_of(city_calendar().days_off)


def reg(kiosk, since, hours=WEEKDAYS_8_17, district="BD"):
    return received(
        KioskRegistered,
        {
            "kiosk_id": kiosk,
            "building": "UBND phường",
            "address": "1 Phố",
            "district": district,
            "commune": None,
            "opening_hours": hours,
            "peripherals": ["touchscreen", "printer"],
            "software_version": "2.1",
            "in_service_since": iso(since),
            "active": True,
            "version": 1,
        },
    )


def at(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def test_a_registered_kiosk_that_never_reported_is_offline_once_a_timeout_of_service_time_passed():
    # In service from Mon 07:00 Hanoi; opens 08:00 (01:00 UTC). At 08:02 it has been scheduled 120 s < 180 s:
    # not yet offline; at 08:04, 240 s > 180 s: offline, counted and alarmed. The old processor never
    # evaluated a kiosk without heartbeats: no alarm, kiosks_offline 0.
    proc = KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=30, closed_days=frozenset())
    states, out = run_in_memory(proc, [reg("K-N", MON)], at(MON + H + 120))
    assert payloads(out, "ioc.kiosk.alarms") == []
    later = proc.emit(states[0], at(MON + H + 240))
    assert [(a["alarm_type"], a["state"]) for a in payloads(later, "ioc.kiosk.alarms")] == [
        ("kiosk_offline", "raised")
    ]
    assert kpi(later, "kiosk.kiosks_offline", "BD")["value"] == 1.0
    # Its availability for the hour 01:00-02:00 UTC so far: 0 online of 240 scheduled seconds = 0 %.
    tech = kpi(later, "kiosk.technical_availability", "BD")
    assert (tech["numerator"], tech["denominator"]) == (0.0, 240.0)


def test_the_never_reported_rule_by_hand():
    k = {"hours": WEEKDAYS_8_17, "since": MON, "active": True}
    assert not never_reported_offline(k, MON + H + 180, 180)  # exactly 180 s scheduled: not more
    assert never_reported_offline(k, MON + H + 181, 180)
    assert not never_reported_offline({**k, "active": False}, MON + 5 * H, 180)
    # Before opening (07:30 Hanoi) nothing was scheduled yet.
    assert not never_reported_offline(k, MON + 0.5 * H, 180)


def test_kiosks_closed_for_the_night_are_not_counted_offline():
    # K-C reports until 17:30 Hanoi (10:30 UTC, after closing) then goes dark. At 19:00 Hanoi (12:00 UTC) it is
    # offline but not scheduled: kiosks_offline 0 (the old code counted 1) and no alarm.
    proc = KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=30, closed_days=frozenset())
    events = [reg("K-C", MON - 30 * 24 * H), *hbs("K-C", MON + H, MON + 10.5 * H, 0)]
    _, out = run_in_memory(proc, events, at(MON + 12 * H))
    assert kpi(out, "kiosk.kiosks_offline", "BD", window_start=MON + 12 * H)["value"] == 0.0
    assert payloads(out, "ioc.kiosk.alarms") == []


def test_opening_hours_follow_the_city_calendar():
    # Tue 2 Sep 2025, National Day (Labour Code 2019 art. 112): the building is closed, no scheduled time.
    # Mon 1 Sep 2025 too (the adjacent day off). Wed 3 Sep is a working day: 9 h scheduled.
    assert date(2025, 9, 2).toordinal() - date(1970, 1, 1).toordinal() in CLOSED
    tue = datetime(2025, 9, 1, 17, tzinfo=UTC).timestamp()  # Tue 2 Sep 00:00 Hanoi
    assert opening_intervals(WEEKDAYS_8_17, tue, tue + 24 * H, CLOSED) == []
    assert opening_intervals(WEEKDAYS_8_17, tue - 24 * H, tue, CLOSED) == []
    wed = tue + 24 * H
    assert opening_intervals(WEEKDAYS_8_17, wed, wed + 24 * H, CLOSED) == [(wed + 8 * H, wed + 17 * H)]
    # A kiosk dark all National Day: no scheduled time, so no 0 % (the old calendar-blind schedule gave 0 of 9 h)
    k = {"hours": WEEKDAYS_8_17, "since": tue - 90 * 24 * H, "peripherals": ["touchscreen"], "active": True}
    av = kiosk_availability(k, [], {}, tue, tue + 24 * H, CLOSED)
    assert (av.scheduled_s, av.online_s) == (0.0, 0.0)


def test_no_offline_alarm_on_a_public_holiday():
    # The kiosk stops on Fri 29 Aug 2025 at 17:30 Hanoi; Mon 1 and Tue 2 Sep are days off; at 09:00 Hanoi on
    # Tue 2 Sep it raises nothing (the old schedule alarmed at 08:00 on Monday). Wed 3 Sep 08:05: raised.
    fri = datetime(2025, 8, 29, 1, tzinfo=UTC).timestamp()  # Fri 08:00 Hanoi
    proc = KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=30, closed_days=CLOSED)
    events = [reg("K-H", fri - 30 * 24 * H), *hbs("K-H", fri, fri + 9.5 * H, 0)]
    tue_9 = datetime(2025, 9, 2, 2, tzinfo=UTC).timestamp()
    states, out = run_in_memory(proc, events, at(tue_9))
    assert payloads(out, "ioc.kiosk.alarms") == []
    wed = proc.emit(states[0], at(datetime(2025, 9, 3, 1, 5, tzinfo=UTC).timestamp()))
    assert [(a["alarm_type"], a["state"]) for a in payloads(wed, "ioc.kiosk.alarms")] == [
        ("kiosk_offline", "raised")
    ]


def test_xfs_states_usable_or_not():
    # CEN/XFS device states: online and busy are usable; every other state is not; user error is "a person is
    # preventing proper device operation" (not usable: the old mapping said usable).
    assert {s for s, ok in XFS_USABLE.items() if ok} == {"online", "busy"}
    for state, usable in XFS_USABLE.items():
        assert (fault_type("touchscreen", state, None) is None) == usable, state
    # A touchscreen in user error 10 minutes of a fully online hour: journeys needing it lose 600 s of 3600 s.
    k = {"hours": [{"days": [1], "open": "00:00", "close": "24:00"}], "since": 0.0,
         "peripherals": ["touchscreen"], "active": True}  # fmt: skip
    av = kiosk_availability(k, [(MON, MON + H)], {"touchscreen": [(MON, MON + 600)]}, MON, MON + H)
    assert av.journeys["lookup_procedure"] == (3000.0, 3600.0)
