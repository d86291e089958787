"""Unit tests of the dossier rules: calendar, due dates with pauses, the status machine, timeliness."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from services.dossier.domain import (
    Agency,
    DossierRuleError,
    IllegalTransition,
    InvalidTime,
    NotLate,
    Procedure,
    apologize,
    calendar_from_csv,
    deadline_notice,
    due_date_for,
    hand_over,
    is_overdue,
    new_dossier,
    timeliness,
    transition,
)

VN = timezone(timedelta(hours=7))
CAL = calendar_from_csv()
PROC = Procedure("P1", "Cấp phép", "fully_online", 5, has_fees=True, pauses_clock=True)
PROC_NO_PAUSE = Procedure("P2", "Chứng thực", "partly_online", 5, has_fees=False, pauses_clock=False)
AGENCY = Agency("UBND-BD-01", "UBND phường", "commune", "BD-01")


def t(s: str) -> datetime:
    """A local (Vietnam) time."""
    return datetime.fromisoformat(s).replace(tzinfo=VN)


def dossier(status: int = 2, proc: Procedure = PROC, at: str = "2025-03-03T09:00"):
    d = new_dossier(
        code="D1",
        procedure=proc,
        agency=AGENCY,
        district="BD",
        channel="online",
        at=t(at),
        calendar=CAL,
        received=status != 1,
    )
    if status in (1, 2):
        return d
    from dataclasses import replace

    return replace(d, status=status)


# Calendar ---------------------------------------------------------------------------------------------------


def test_weekends_are_skipped():
    assert CAL.add_working_days(date(2025, 3, 7), 3) == date(2025, 3, 12)  # Fri + 3 → Mon, Tue, Wed
    assert CAL.working_days_between(date(2025, 3, 7), date(2025, 3, 10)) == 1
    assert CAL.add_working_days(date(2025, 3, 7), 0) == date(2025, 3, 7)


def test_tet_2025_and_2026_from_the_lunar_table():
    # Tết Ất Tỵ: Mon 27 – Fri 31 January 2025 off; Fri 24 Jan + 1 working day is Mon 3 Feb.
    assert CAL.add_working_days(date(2025, 1, 24), 1) == date(2025, 2, 3)
    assert CAL.add_working_days(date(2025, 1, 22), 3) == date(2025, 2, 3)  # Thu 23, Fri 24, Mon 3 Feb
    # Tết Bính Ngọ: Mon 16 – Fri 20 February 2026.
    assert CAL.add_working_days(date(2026, 2, 13), 1) == date(2026, 2, 23)
    assert not CAL.is_working_day(date(2026, 4, 27))  # compensatory day for Hùng Kings on a Sunday


def test_fixed_holidays_and_weekend_compensation():
    assert not CAL.is_working_day(date(2026, 1, 1))
    assert not CAL.is_working_day(date(2027, 4, 30)) and not CAL.is_working_day(date(2027, 5, 1))
    # 1 Jan 2022 was a Saturday → Monday 3 Jan is the compensatory day off.
    assert not CAL.is_working_day(date(2022, 1, 3))
    assert CAL.is_working_day(date(2022, 1, 4))
    # National Day 2025: Mon 1 (table) and Tue 2 September (fixed) off: Fri 29 Aug + 1 → Wed 3 Sep.
    assert CAL.add_working_days(date(2025, 8, 29), 1) == date(2025, 9, 3)
    # The make-up Saturday 26 April 2025 is a working day; Friday 2 May 2025 is not.
    assert CAL.is_working_day(date(2025, 4, 26)) and not CAL.is_working_day(date(2025, 5, 2))


def test_calendar_table_rejects_unknown_kinds():
    from shared.calendar import read_decisions

    with pytest.raises(ValueError, match="row 2: unknown kind 'party'"):
        read_decisions(
            [{"date": "2025-01-01", "kind": "party", "name": "x", "source": "s", "verified": "no"}]
        )


def test_due_date_uses_the_local_date_of_receipt():
    # 20:00 UTC on Friday 24 Jan 2025 is Saturday 25 Jan 03:00 in Hanoi: a day off, so the dossier counts as
    # received on the next working day, Mon 3 Feb (Tết 27-31 Jan), and 1 working day counts from the day after:
    # Tue 4 Feb. (The old expectation, Mon 3 Feb, counted from the Saturday itself: legally wrong, issue #37.)
    assert due_date_for(datetime(2025, 1, 24, 20, tzinfo=UTC), 1, CAL) == date(2025, 2, 4)
    assert due_date_for(t("2025-03-03T09:00"), 5, CAL) == date(2025, 3, 10)


def test_clock_pause_extends_the_due_date_by_the_working_days_paused():
    d = dossier(2)
    assert d.due_date == date(2025, 3, 10)
    d = transition(d, "start_processing", t("2025-03-04T08:00"), PROC, CAL)
    d = transition(d, "request_documents", t("2025-03-05T10:00"), PROC, CAL)
    assert d.paused_at is not None and not is_overdue(d, date(2025, 3, 20))  # paused: never overdue
    d = transition(d, "supply_documents", t("2025-03-11T15:00"), PROC, CAL)
    # paused working days in (5 Mar, 11 Mar] = Thu 6, Fri 7, Mon 10, Tue 11 = 4 → 10 Mar + 4 = Fri 14 Mar
    assert d.due_date == date(2025, 3, 14) and d.paused_at is None and d.status == 4


def test_clock_pause_across_tet():
    d = dossier(2, at="2025-01-20T09:00")  # 5 working days: Tue 21, Wed 22, Thu 23, Fri 24, Mon 3 Feb
    assert d.due_date == date(2025, 2, 3)
    d = transition(d, "request_documents", t("2025-01-24T09:00"), PROC, CAL)
    d = transition(d, "supply_documents", t("2025-02-04T09:00"), PROC, CAL)
    # paused working days in (24 Jan, 4 Feb] = Mon 3, Tue 4 Feb (Tết skipped) → 3 Feb + 2 = Wed 5 Feb
    assert d.due_date == date(2025, 2, 5)


def test_no_pause_when_the_procedure_does_not_pause():
    d = dossier(2, proc=PROC_NO_PAUSE)
    d = transition(d, "request_documents", t("2025-03-05T10:00"), PROC_NO_PAUSE, CAL)
    assert d.paused_at is None
    d = transition(d, "supply_documents", t("2025-03-11T15:00"), PROC_NO_PAUSE, CAL)
    assert d.due_date == date(2025, 3, 10)


# State machine ----------------------------------------------------------------------------------------------

# Hand-written from the national status codes (domain notes §3): action → (from statuses, to status).
EXPECTED = {
    "receive": ({1}, 2),
    "reject": ({1}, 3),
    "start_processing": ({2}, 4),
    "request_documents": ({2, 4}, 5),
    "supply_documents": ({5}, 4),
    "request_fees": ({2, 4}, 6),
    "pay_fees": ({6}, 4),
    "withdraw": ({1, 2, 4, 5, 6}, 7),
    "stop": ({2, 4, 5, 6}, 8),
    "resolve": ({2, 4}, 9),
    "return_result": ({9}, 10),
}
CASES = [(action, status) for action in EXPECTED for status in range(1, 11)]


@pytest.mark.parametrize(("action", "status"), CASES, ids=[f"{a}-from-{s}" for a, s in CASES])
def test_every_transition(action, status):
    d = dossier(status)
    sources, target = EXPECTED[action]
    at = t("2025-03-04T10:00")
    if status in sources:
        new = transition(d, action, at, PROC, CAL, paid_online=True)
        assert new.status == target and new.last_change_at == at
        if target in (3, 7, 8, 10):
            assert new.closed_at == at
    else:
        with pytest.raises(IllegalTransition) as exc:
            transition(d, action, at, PROC, CAL, paid_online=True)
        assert exc.value.status == 409
        assert exc.value.details["from_status"] == status and exc.value.details["to_status"] == target


def test_returning_a_result_never_resolved_is_refused_with_from_and_to():
    d = transition(dossier(2), "start_processing", t("2025-03-04T10:00"), PROC, CAL)
    with pytest.raises(IllegalTransition) as exc:
        transition(d, "return_result", t("2025-03-04T11:00"), PROC, CAL)
    assert exc.value.details["from"] == "processing" and exc.value.details["to"] == "returned"
    assert "status 9 (resolved)" in exc.value.message


def test_receive_sets_the_due_date_and_submitted_dossiers_have_none():
    d = dossier(1)
    assert d.status == 1 and d.due_date is None
    d = transition(d, "receive", t("2025-03-07T09:00"), PROC, CAL)
    assert d.received_at == t("2025-03-07T09:00") and d.due_date == date(2025, 3, 14)


def test_pay_fees_needs_to_know_whether_online_and_unknown_actions_are_refused():
    d = transition(dossier(2), "request_fees", t("2025-03-04T10:00"), PROC, CAL)
    with pytest.raises(DossierRuleError) as exc:
        transition(d, "pay_fees", t("2025-03-04T11:00"), PROC, CAL)
    assert exc.value.status == 422 and exc.value.details["field"] == "paid_online"
    assert (
        transition(d, "pay_fees", t("2025-03-04T11:00"), PROC, CAL, paid_online=False).fees_paid_online
        is False
    )
    with pytest.raises(DossierRuleError):
        transition(d, "teleport", t("2025-03-04T11:00"), PROC, CAL)


def test_changes_cannot_go_back_in_time():
    with pytest.raises(InvalidTime):
        transition(dossier(2), "start_processing", t("2025-03-03T08:00"), PROC, CAL)


def test_hand_over_moves_steps_only_while_open():
    d = hand_over(dossier(2), t("2025-03-04T10:00"))
    assert d.step == 2
    with pytest.raises(IllegalTransition):
        hand_over(dossier(9), t("2025-03-04T10:00"))


# Timeliness, apologies, deadline notices --------------------------------------------------------------------


def test_timeliness_against_the_local_due_day():
    due = date(2025, 3, 10)
    assert timeliness(t("2025-03-07T16:00"), due) == "early"
    assert timeliness(t("2025-03-10T16:59"), due) == "on_time"
    assert timeliness(datetime(2025, 3, 10, 18, tzinfo=UTC), due) == "late"  # 01:00 on 11 Mar locally


def test_apology_only_when_late_and_for_a_later_date():
    d = dossier(2)  # due 10 Mar
    with pytest.raises(NotLate):
        apologize(d, date(2025, 3, 20), t("2025-03-10T12:00"))
    with pytest.raises(DossierRuleError):
        apologize(d, date(2025, 3, 11), t("2025-03-11T12:00"))
    late = apologize(d, date(2025, 3, 14), t("2025-03-11T12:00"))
    assert late.promised_date == date(2025, 3, 14) and late.due_date == date(2025, 3, 10)


def test_deadline_notices():
    d = dossier(2, at="2025-03-07T09:00")  # due Fri 14 Mar
    assert deadline_notice(d, date(2025, 3, 10), CAL, 2) is None  # 4 working days left
    assert deadline_notice(d, date(2025, 3, 12), CAL, 2) == ("approaching", 2)
    assert deadline_notice(d, date(2025, 3, 14), CAL, 2) == ("approaching", 0)
    assert deadline_notice(d, date(2025, 3, 15), CAL, 2) == ("overdue", 1)
    paused = transition(d, "request_documents", t("2025-03-10T09:00"), PROC, CAL)
    assert deadline_notice(paused, date(2025, 3, 20), CAL, 2) is None
    assert deadline_notice(dossier(9), date(2025, 3, 20), CAL, 2) is None
