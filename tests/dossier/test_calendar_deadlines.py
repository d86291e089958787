"""Golden tests: the city working calendar (2025-2027) and due dates counted the legal way.

Every expected date is written by hand from its source (cited per case), never computed with IOC's helpers.
Sources:
- [LC] Labour Code 2019 art. 112(1): 1 Jan; 5 Tết days; Hùng Kings 10/3 lunar; 30 Apr; 1 May; 2 Sep plus one
  adjacent day (since 1 Jan 2021); art. 112(3): a holiday on a weekly rest day gives a compensatory day off.
- [2025-SWAP] the government's swap of Fri 2 May 2025 with Sat 26 Apr 2025.
- [2026-JAN] Government agreement of 25 Dec 2025 / Ministry of Home Affairs notice: Fri 2 Jan 2026 off, Sat 10 Jan
  2026 worked (public sector off Thu 1 - Sun 4 Jan).
- [2026-TET] Tết Bính Ngọ: public sector off Sat 14 - Sun 22 Feb 2026 (9 days).
- [2026-SEP] Mon 31 Aug 2026 off swapped with Sat 22 Aug 2026; Tue 1 Sep the day adjacent to National Day.
- [CULTURE] Resolution 80-NQ/TW (2026): 24 Nov, Vietnam Culture Day, a paid day off (listed by the holidays
  package from 2026; the amended Labour Code text was not available here: docs/calendar.md).
- [CIVIL] Civil Code 2015 art. 147-148: a period in days starts on the day after the event; [E-PROC] a dossier
  received after office hours or on a day off counts as received on the next working day.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time, timedelta, timezone

import pytest

from services.dossier.domain import (
    Agency,
    Procedure,
    deadline_notice,
    due_date_for,
    is_overdue,
    new_dossier,
    receipt_day,
    reschedule,
    transition,
)
from shared.calendar import WorkingCalendar, build_calendar, city_calendar, read_decisions, statutory_holidays

VN = timezone(timedelta(hours=7))
CAL = city_calendar()


def t(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=VN)


def weekday_days_off(year: int) -> list[date]:
    d, out = date(year, 1, 1), []
    while d.year == year:
        if d.weekday() < 5 and not CAL.is_working_day(d):
            out.append(d)
        d += timedelta(days=1)
    return out


# Calendar ---------------------------------------------------------------------------------------------------


def test_2025_weekday_days_off():
    assert weekday_days_off(2025) == [
        date(2025, 1, 1),  # [LC] New Year, Wed
        date(2025, 1, 27),  # [LC] Tết Ất Tỵ (Lunar New Year Wed 29 Jan): Mon 27 - Fri 31 Jan
        date(2025, 1, 28),
        date(2025, 1, 29),
        date(2025, 1, 30),
        date(2025, 1, 31),
        date(2025, 4, 7),  # [LC] Hùng Kings, 10/3 Ất Tỵ = Mon 7 Apr
        date(2025, 4, 30),  # [LC]
        date(2025, 5, 1),  # [LC]
        date(2025, 5, 2),  # [2025-SWAP]
        date(2025, 9, 1),  # [LC] adjacent day
        date(2025, 9, 2),  # [LC]
    ]  # 12, as the reference count
    assert CAL.is_working_day(date(2025, 4, 26))  # [2025-SWAP] Saturday worked


def test_2026_weekday_days_off():
    assert weekday_days_off(2026) == [
        date(2026, 1, 1),  # [LC]
        date(2026, 1, 2),  # [2026-JAN] (not in the holidays package: from the decisions table)
        date(2026, 2, 16),  # [2026-TET] Mon 16 - Fri 20 Feb
        date(2026, 2, 17),
        date(2026, 2, 18),
        date(2026, 2, 19),
        date(2026, 2, 20),
        date(2026, 4, 27),  # [LC] art. 112(3): Hùng Kings on Sun 26 Apr → Mon 27 Apr
        date(2026, 4, 30),  # [LC]
        date(2026, 5, 1),  # [LC]
        date(2026, 8, 31),  # [2026-SEP]
        date(2026, 9, 1),  # [2026-SEP] adjacent day
        date(2026, 9, 2),  # [LC]
        date(2026, 11, 24),  # [CULTURE]
    ]  # 14, as the reference count
    assert CAL.is_working_day(date(2026, 1, 10))  # [2026-JAN] Saturday worked
    assert CAL.is_working_day(date(2026, 8, 22))  # [2026-SEP] Saturday worked


def test_2027_weekday_days_off_and_they_are_not_confirmed():
    assert weekday_days_off(2027) == [
        date(2027, 1, 1),  # [LC] Fri
        # [LC] Tết Đinh Mùi: Lunar New Year Sat 6 Feb 2027; the 5 days (eve to 4th day: Fri 5 - Tue 9) with the
        # weekend ones moved (Sat → Thu 4, Sun → Wed 10), as the holidays package estimates: NOT yet decided.
        date(2027, 2, 4),
        date(2027, 2, 5),
        date(2027, 2, 8),
        date(2027, 2, 9),
        date(2027, 2, 10),
        date(2027, 4, 16),  # [LC] Hùng Kings, 10/3 Đinh Mùi = Fri 16 Apr
        date(2027, 4, 30),  # [LC] Fri
        date(2027, 5, 3),  # [LC] art. 112(3): 1 May on a Saturday → Mon 3 May
        date(2027, 9, 2),  # [LC] Thu
        date(2027, 9, 3),  # [LC] adjacent day (estimate: Fri 3 Sep; the government picks the day)
        date(2027, 11, 24),  # [CULTURE]
    ]  # 12, as the reference count
    # The decisions table confirms the calendar through 31 Dec 2026 only.
    assert CAL.confirmed_through == date(2026, 12, 31)
    assert CAL.is_confirmed(date(2026, 12, 31)) and not CAL.is_confirmed(date(2027, 2, 5))


def test_unconfirmed_calendar_is_seen_ahead():
    # 31 Dec 2026 - 7 Dec 2026 = 24 days confirmed ahead < 90: the alarm condition holds (Tết 2027 undecided);
    # on 1 Sep 2026 there are 121 days ahead ≥ 90: it does not.
    assert CAL.confirmed_days_ahead(date(2026, 12, 7)) == 24
    assert CAL.unconfirmed_ahead(date(2026, 12, 7), 90)
    assert not CAL.unconfirmed_ahead(date(2026, 9, 1), 90)


def test_decisions_table_rows_are_checked():
    row = {"date": "2026-01-05", "kind": "working_day", "name": "x", "source": "s", "verified": "no"}
    with pytest.raises(ValueError, match="row 2: 2026-01-05 is a weekday"):
        read_decisions([row])
    with pytest.raises(ValueError, match="cites its source"):
        read_decisions([{**row, "date": "2026-01-10", "source": ""}])
    with pytest.raises(ValueError, match="not YYYY-MM-DD"):
        read_decisions([{**row, "date": "10/01/2026"}])


def test_every_shipped_decision_cites_a_source():
    import csv

    from shared.calendar import DECISIONS_CSV

    with open(DECISIONS_CSV, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["source"].strip() and r["verified"] in ("yes", "no") for r in rows)


def test_a_decision_can_remove_a_library_day_off():
    cal = build_calendar(
        read_decisions(
            [{"date": "2026-11-24", "kind": "not_day_off", "name": "x", "source": "s", "verified": "no"}]
        ),
        statutory_holidays([2026]),
    )
    assert cal.is_working_day(date(2026, 11, 24)) and not CAL.is_working_day(date(2026, 11, 24))


# Due dates --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("received", "days", "due", "why"),
    [
        # [E-PROC]+[CIVIL] Mon 17:30 is after hours → received Tue 16 Mar 2026; +1 working day → Wed 18 Mar.
        ("2026-03-16T17:30", 1, date(2026, 3, 18), "after hours"),
        # Mon 16:59 is within hours → received Mon; +1 → Tue 17 Mar.
        ("2026-03-16T16:59", 1, date(2026, 3, 17), "within hours"),
        # 17:00 sharp is closing time: next working day Tue; +1 → Wed.
        ("2026-03-16T17:00", 1, date(2026, 3, 18), "at closing time"),
        # Before opening on a working day counts for that day: Mon 06:30 → Mon; +1 → Tue.
        ("2026-03-16T06:30", 1, date(2026, 3, 17), "before opening"),
        # Sat 14 Mar → received Mon 16; +3 → Tue 17, Wed 18, Thu 19.
        ("2026-03-14T10:00", 3, date(2026, 3, 19), "on a Saturday"),
        # Fri 20 Mar 17:30 → received Mon 23; +1 → Tue 24.
        ("2026-03-20T17:30", 1, date(2026, 3, 24), "Friday after hours"),
        # [2026-JAN] Wed 31 Dec 2025 16:00 → received Wed; days: Thu 1 Jan off, Fri 2 off, Sat 3, Sun 4 →
        # Mon 5 (1), Tue 6 (2).
        ("2025-12-31T16:00", 2, date(2026, 1, 6), "New Year 2026 with the 2 Jan swap"),
        # [2026-JAN] Fri 9 Jan 2026 10:00, 1 day → Sat 10 Jan is a working day (swap).
        ("2026-01-09T10:00", 1, date(2026, 1, 10), "swapped Saturday worked"),
        # [2026-TET] Fri 13 Feb 2026 18:00 (after hours) → Mon 16-Fri 20 off → received Mon 23; +2 → Tue 24,
        # Wed 25.
        ("2026-02-13T18:00", 2, date(2026, 2, 25), "after hours before Tết"),
        # [2026-SEP] Fri 28 Aug 2026 10:00, +2: Mon 31 Aug, Tue 1 Sep, Wed 2 Sep off → Thu 3 (1), Fri 4 (2).
        ("2026-08-28T10:00", 2, date(2026, 9, 4), "National Day 2026"),
        # [CULTURE] Mon 23 Nov 2026 10:00, +1: Tue 24 Nov off → Wed 25.
        ("2026-11-23T10:00", 1, date(2026, 11, 25), "Culture Day 2026"),
        # [LC] Hùng Kings 2027 Fri 16 Apr: Thu 15 Apr 2027 17:05 → received Mon 19 (Fri off); +1 → Tue 20.
        ("2027-04-15T17:05", 1, date(2027, 4, 20), "Hùng Kings 2027 after hours"),
    ],
)
def test_due_dates_counted_the_legal_way(received, days, due, why):
    assert due_date_for(t(received), days, CAL) == due, why


def test_office_hours_are_per_agency():
    # An agency open until 17:30 receives at 17:15 on Mon 16 Mar 2026 that day; one closing at 17:00 does not.
    assert receipt_day(t("2026-03-16T17:15"), CAL, time(17, 30)) == date(2026, 3, 16)
    assert receipt_day(t("2026-03-16T17:15"), CAL) == date(2026, 3, 17)
    late = Agency("A-LATE", "Trung tâm phục vụ HCC", "city", "HN", time(8, 0), time(17, 30))
    proc = Procedure("P1", "x", "fully_online", 1, has_fees=False, pauses_clock=True)
    d = new_dossier(
        code="D", procedure=proc, agency=late, district=None, channel="online", at=t("2026-03-16T17:15"),
        calendar=CAL, received=True,
    )  # fmt: skip
    assert d.due_date == date(2026, 3, 17)  # received Mon (open till 17:30), +1 → Tue


PAUSING = Procedure("P1", "Cấp phép", "fully_online", 3, has_fees=True, pauses_clock=True)
AGENCY = Agency("UBND-X", "UBND phường", "commune", "X-01")


def received(at: str, proc: Procedure = PAUSING):
    return new_dossier(
        code="D1", procedure=proc, agency=AGENCY, district=None, channel="online", at=t(at), calendar=CAL,
        received=True,
    )  # fmt: skip


def test_a_documents_request_after_the_due_date_does_not_hide_the_delay():
    # Received Mon 2 Mar 2026 09:00, 3 days → Thu 5 Mar. Documents requested Mon 9 Mar, already overdue: the clock
    # does not pause (there is no time left to stop), so the dossier stays overdue and gets its notice.
    # (Old code paused it: is_overdue False and no overdue notice; fails there.)
    d = received("2026-03-02T09:00")
    assert d.due_date == date(2026, 3, 5)
    d = transition(d, "request_documents", t("2026-03-09T10:00"), PAUSING, CAL)
    assert d.paused_at is None and d.status == 5
    assert is_overdue(d, date(2026, 3, 9))
    assert deadline_notice(d, date(2026, 3, 9), CAL, 2) == ("overdue", 4)  # 9 Mar - 5 Mar = 4 calendar days
    d = transition(d, "supply_documents", t("2026-03-11T10:00"), PAUSING, CAL)
    assert d.due_date == date(2026, 3, 5)  # no pause, no extension


def test_a_documents_request_within_the_deadline_pauses_the_clock():
    # Same dossier, documents requested Wed 4 Mar (due Thu 5): paused, never overdue meanwhile; supplied Tue 10
    # Mar: working days paused in (4 Mar, 10 Mar] = Thu 5, Fri 6, Mon 9, Tue 10 = 4 → 5 Mar + 4 → Wed 11 Mar.
    d = received("2026-03-02T09:00")
    d = transition(d, "request_documents", t("2026-03-04T10:00"), PAUSING, CAL)
    assert d.paused_at is not None and not is_overdue(d, date(2026, 3, 9))
    d = transition(d, "supply_documents", t("2026-03-10T10:00"), PAUSING, CAL)
    assert d.due_date == date(2026, 3, 11)


# Calendar change --------------------------------------------------------------------------------------------


def test_a_new_day_off_moves_open_due_dates_by_one_working_day():
    # Received Mon 9 Mar 2026 09:00 with 5 days: Tue 10, Wed 11, Thu 12, Fri 13, Mon 16 → due Mon 16 Mar.
    d = received("2026-03-09T09:00", replace(PAUSING, processing_days=5))
    assert d.due_date == date(2026, 3, 16)
    # A new decision makes Thu 12 Mar a day off: the 3 working days left after Wed 11 (Thu 12, Fri 13, Mon 16)
    # now run Fri 13, Mon 16, Tue 17 → due Tue 17 Mar.
    new = CAL.with_changes(days_off=[date(2026, 3, 12)])
    assert reschedule(d, CAL, new) == date(2026, 3, 17)
    # A day off after the due date changes nothing; nor for a closed dossier; nor a newly worked Saturday.
    assert reschedule(d, CAL, CAL.with_changes(days_off=[date(2026, 3, 18)])) is None
    assert reschedule(replace(d, status=10), CAL, new) is None
    assert reschedule(d, CAL, CAL.with_changes(working_days=[date(2026, 3, 14)])) is None


def test_calendar_with_changes_keeps_weekend_rules():
    cal = WorkingCalendar(frozenset())
    assert not cal.with_changes(days_off=[date(2026, 3, 12)]).is_working_day(date(2026, 3, 12))
    assert cal.with_changes(working_days=[date(2026, 3, 14)]).is_working_day(date(2026, 3, 14))
