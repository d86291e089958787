"""Pure dossier logic: reference data, the working-day calendar, the national status state machine.

No I/O and no clock: callers pass ``at`` / ``today``. Dates that matter legally (due dates, timeliness) are
local dates in Vietnam (UTC+7, no daylight saving).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from pathlib import Path

from shared.areas import HANOI_TZ
from shared.calendar import WorkingCalendar, city_calendar
from shared.contracts.dossier import STATUS_NAMES

SUBMITTED, RECEIVED, REJECTED, PROCESSING, DOCS_REQUESTED, FEES_REQUESTED = 1, 2, 3, 4, 5, 6
WITHDRAWN, STOPPED, RESOLVED, RETURNED = 7, 8, 9, 10
#: statuses in which a dossier is open and its legal clock counts (or is paused)
OPEN_STATUSES = frozenset({RECEIVED, PROCESSING, DOCS_REQUESTED, FEES_REQUESTED})
TERMINAL_STATUSES = frozenset({REJECTED, WITHDRAWN, STOPPED, RETURNED})

#: action → (statuses it may start from, status it leads to)
TRANSITIONS: dict[str, tuple[frozenset[int], int]] = {
    "receive": (frozenset({SUBMITTED}), RECEIVED),
    "reject": (frozenset({SUBMITTED}), REJECTED),
    "start_processing": (frozenset({RECEIVED}), PROCESSING),
    "request_documents": (frozenset({RECEIVED, PROCESSING}), DOCS_REQUESTED),
    "supply_documents": (frozenset({DOCS_REQUESTED}), PROCESSING),
    "request_fees": (frozenset({RECEIVED, PROCESSING}), FEES_REQUESTED),
    "pay_fees": (frozenset({FEES_REQUESTED}), PROCESSING),
    "withdraw": (frozenset({SUBMITTED, RECEIVED, PROCESSING, DOCS_REQUESTED, FEES_REQUESTED}), WITHDRAWN),
    "stop": (frozenset({RECEIVED, PROCESSING, DOCS_REQUESTED, FEES_REQUESTED}), STOPPED),
    "resolve": (frozenset({RECEIVED, PROCESSING}), RESOLVED),
    "return_result": (frozenset({RESOLVED}), RETURNED),
}
ACTIONS = tuple(TRANSITIONS)
CHANNELS = ("in_person", "online", "postal")


def local_date(at: datetime) -> date:
    """The Vietnamese calendar date of an instant."""
    if at.tzinfo is None:
        raise ValueError("naive datetime: times must carry a UTC offset")
    return at.astimezone(HANOI_TZ).date()


# Calendar -------------------------------------------------------------------------------------------------


def calendar_from_csv(path: Path | None = None) -> WorkingCalendar:
    """The city working calendar (``shared.calendar``): statutory holidays plus the decisions table at ``path``
    (the shipped ``shared/data/calendar_vn_decisions.csv`` by default)."""
    return city_calendar(path) if path is not None else city_calendar()


#: office hours of an agency when its reference data gives none (Hanoi's public administration: 8:00-17:00)
DEFAULT_OFFICE_OPEN, DEFAULT_OFFICE_CLOSE = time(8, 0), time(17, 0)


def receipt_day(at: datetime, calendar: WorkingCalendar, office_close: time = DEFAULT_OFFICE_CLOSE) -> date:
    """The legal day of receipt: the local day of ``at``, or the next working day when ``at`` is on a day off or
    at/after the agency's closing time (a dossier received out of office hours counts as received on the next
    working day; domain notes §3, e-procedure rules). Before opening time on a working day counts for that day
    (the whole working day lies ahead)."""
    local = at.astimezone(HANOI_TZ)
    d = local.date()
    if not calendar.is_working_day(d) or local.time() >= office_close:
        return calendar.next_working_day(d)
    return d


# Reference data --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Procedure:
    """An administrative procedure of the catalogue."""

    code: str
    name: str
    online_level: str  # fully_online, partly_online, offline
    processing_days: int  # legal processing time in working days
    has_fees: bool
    pauses_clock: bool  # whether the legal clock stops while additional documents are requested
    service_level: int | None = None  # the pre-2022 level (2, 3, 4), informative


@dataclass(frozen=True)
class Agency:
    """An agency that receives and handles dossiers, attached to an administrative unit."""

    code: str
    name: str
    level: str  # city, district, commune
    admin_unit: str
    office_open: time = DEFAULT_OFFICE_OPEN
    office_close: time = DEFAULT_OFFICE_CLOSE


# Dossier state machine -------------------------------------------------------------------------------------


class DossierRuleError(Exception):
    """A request that breaks a dossier rule. ``status`` is the HTTP status it maps to."""

    status = 422
    code = "invalid"

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class IllegalTransition(DossierRuleError):
    status = 409
    code = "illegal_transition"


class InvalidTime(DossierRuleError):
    code = "invalid_time"


class NotLate(DossierRuleError):
    status = 409
    code = "not_late"


@dataclass(frozen=True)
class Dossier:
    """The state of one dossier that the rules need (applicant data is kept apart, never here)."""

    code: str
    procedure_code: str
    agency_code: str
    admin_unit: str
    district: str | None
    channel: str
    status: int
    submitted_at: datetime
    last_change_at: datetime
    received_at: datetime | None = None
    due_date: date | None = None
    paused_at: datetime | None = None
    promised_date: date | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    fees_paid_online: bool | None = None
    step: int = 1
    # Decision 766 facts
    digitised: bool = False
    result_esigned: bool = False
    rating: str | None = None  # very_satisfied, satisfied, unsatisfied
    complained: bool = False
    portal_syncs: int = 0
    portal_late_syncs: int = 0

    @property
    def status_name(self) -> str:
        return STATUS_NAMES[self.status]

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


def new_dossier(
    *,
    code: str,
    procedure: Procedure,
    agency: Agency,
    district: str | None,
    channel: str,
    at: datetime,
    calendar: WorkingCalendar,
    received: bool,
) -> Dossier:
    """A new dossier: status 1 (submitted, awaiting acceptance) or directly 2 (received at the counter)."""
    if channel not in CHANNELS:
        raise DossierRuleError(f"unknown channel {channel!r}", {"field": "channel"})
    d = Dossier(
        code=code,
        procedure_code=procedure.code,
        agency_code=agency.code,
        admin_unit=agency.admin_unit,
        district=district,
        channel=channel,
        status=SUBMITTED,
        submitted_at=at,
        last_change_at=at,
    )
    if received:
        d = replace(
            d,
            status=RECEIVED,
            received_at=at,
            due_date=due_date_for(at, procedure.processing_days, calendar, agency.office_close),
        )
    return d


def due_date_for(
    received_at: datetime,
    processing_days: int,
    calendar: WorkingCalendar,
    office_close: time = DEFAULT_OFFICE_CLOSE,
) -> date:
    """Legal due date: ``processing_days`` working days counted from the working day after the legal day of
    receipt (:func:`receipt_day`; Civil Code 2015 art. 147: a period starts the day after the event). Received
    Monday 17:30 (after hours, so on Tuesday) with 1 working day: due Wednesday."""
    return calendar.add_working_days(receipt_day(received_at, calendar, office_close), processing_days)


def allowed_actions(status: int) -> list[str]:
    """The transitions possible from ``status``."""
    return [a for a, (sources, _) in TRANSITIONS.items() if status in sources]


def transition(
    d: Dossier,
    action: str,
    at: datetime,
    procedure: Procedure,
    calendar: WorkingCalendar,
    *,
    paid_online: bool | None = None,
    office_close: time = DEFAULT_OFFICE_CLOSE,
    digitised: bool | None = None,
    result_esigned: bool | None = None,
) -> Dossier:
    """Apply ``action`` at ``at``; the new dossier state. Raises :class:`IllegalTransition` and friends.

    ``office_close``: the handling agency's closing time (a receipt after it counts for the next working day)."""
    if action not in TRANSITIONS:
        raise DossierRuleError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}", {"field": "action"})
    sources, target = TRANSITIONS[action]
    if d.status not in sources:
        allowed = sorted(sources)
        raise IllegalTransition(
            f"cannot {action} a dossier in status {d.status} ({d.status_name}); it needs status "
            f"{' or '.join(f'{s} ({STATUS_NAMES[s]})' for s in allowed)}",
            {
                "from_status": d.status,
                "from": d.status_name,
                "to_status": target,
                "to": STATUS_NAMES[target],
                "action": action,
                "allowed_from": allowed,
            },
        )
    if at < d.last_change_at:
        raise InvalidTime(
            "the time of a change cannot be before the dossier's previous change", {"field": "at"}
        )
    changes: dict = {"status": target, "last_change_at": at}
    if action == "receive":
        changes.update(
            received_at=at, due_date=due_date_for(at, procedure.processing_days, calendar, office_close)
        )
    elif action == "request_documents" and procedure.pauses_clock:
        # The clock stops only for a dossier still within its deadline: a request for documents made after
        # the due date cannot give back time already overrun (the dossier stays overdue, its alarm stays).
        if d.due_date is None or local_date(at) <= d.due_date:
            changes["paused_at"] = at
    elif action == "supply_documents" and d.paused_at is not None:
        assert d.due_date is not None
        paused = calendar.working_days_between(local_date(d.paused_at), local_date(at))
        changes.update(paused_at=None, due_date=calendar.add_working_days(d.due_date, paused))
    elif action == "pay_fees":
        if paid_online is None:
            raise DossierRuleError("paying fees needs paid_online (true or false)", {"field": "paid_online"})
        changes["fees_paid_online"] = paid_online
    elif action == "resolve":
        changes["resolved_at"] = at
    if digitised is not None:
        if action != "receive":
            raise DossierRuleError("digitised is only recorded on receive", {"field": "digitised"})
        changes["digitised"] = digitised
    if result_esigned is not None:
        if action not in ("resolve", "return_result"):
            raise DossierRuleError(
                "result_esigned is only recorded on resolve or return_result", {"field": "result_esigned"}
            )
        changes["result_esigned"] = result_esigned
    if target in TERMINAL_STATUSES:
        changes["closed_at"] = at
    if action in ("withdraw", "stop"):
        changes["paused_at"] = None
    return replace(d, **changes)


def timeliness(finished_at: datetime, due: date) -> str:
    """``early`` (before the due day), ``on_time`` (on it) or ``late`` (after it)."""
    return day_timeliness(local_date(finished_at), due)


def day_timeliness(day: date, due: date) -> str:
    """:func:`timeliness` of a dossier finished on the local day ``day``."""
    if day < due:
        return "early"
    if day == due:
        return "on_time"
    return "late"


def is_overdue(d: Dossier, today: date) -> bool:
    """Open, clock running, and past its due date. A paused clock cannot run out."""
    return d.is_open and d.paused_at is None and d.due_date is not None and today > d.due_date


def apologize(d: Dossier, promised: date, at: datetime) -> Dossier:
    """Record an apology with a new promised date (form 04); only for a dossier that is late."""
    today = local_date(at)
    if not d.is_open or d.due_date is None or today <= d.due_date:
        raise NotLate(
            "an apology is only for an open dossier past its due date",
            {
                "status": d.status,
                "due_date": d.due_date.isoformat() if d.due_date else None,
                "today": today.isoformat(),
            },
        )
    if promised <= today:
        raise DossierRuleError("the new date must be after today", {"field": "new_due_date"})
    if at < d.last_change_at:
        raise InvalidTime(
            "the time of a change cannot be before the dossier's previous change", {"field": "at"}
        )
    return replace(d, promised_date=promised, last_change_at=at)


def hand_over(d: Dossier, at: datetime) -> Dossier:
    """Move an open dossier to its next processing step (form 05 control slip)."""
    if not d.is_open:
        raise IllegalTransition(
            f"cannot hand over a dossier in status {d.status} ({d.status_name}); it must be open",
            {
                "from_status": d.status,
                "from": d.status_name,
                "action": "hand_over",
                "allowed_from": sorted(OPEN_STATUSES),
            },
        )
    if at < d.last_change_at:
        raise InvalidTime(
            "the time of a change cannot be before the dossier's previous change", {"field": "at"}
        )
    return replace(d, step=d.step + 1, last_change_at=at)


def deadline_notice(
    d: Dossier, today: date, calendar: WorkingCalendar, warn_days: int
) -> tuple[str, int] | None:
    """What the deadline watcher should say about an open dossier today.

    ``("overdue", calendar days late)``, ``("approaching", working days left)`` when due within
    ``warn_days`` working days, or ``None``.
    """
    if not d.is_open or d.due_date is None or d.paused_at is not None:
        return None
    if today > d.due_date:
        return "overdue", (today - d.due_date).days
    left = calendar.working_days_between(today, d.due_date)
    if left <= warn_days:
        return "approaching", left
    return None


def reschedule(d: Dossier, old: WorkingCalendar, new: WorkingCalendar) -> date | None:
    """The due date of an open dossier after a calendar change (e.g. a newly decided day off), or ``None`` when
    it does not change.

    The decision IOC takes (docs/calendar.md): the dossier keeps the number of working days it had left, counted
    in the new calendar from the day before the first changed day up to its due date, so a new day off on or
    before the due date moves it one working day later. A due date never moves earlier (a newly worked
    Saturday does not shorten the date promised on the receipt, form 01); a due date already past is not touched
    (the change cannot undo a delay); closed dossiers keep theirs (timeliness is judged on the date in force).
    """
    if not d.is_open or d.due_date is None:
        return None
    changed = sorted(
        day
        for day in (old.days_off ^ new.days_off) | (old.working_weekend_days ^ new.working_weekend_days)
        if old.is_working_day(day) != new.is_working_day(day)
    )
    changed = [day for day in changed if day <= d.due_date]
    if not changed:
        return None
    pivot = date.fromordinal(changed[0].toordinal() - 1)
    if d.received_at is not None and pivot < local_date(d.received_at):
        pivot = local_date(d.received_at)
    left = old.working_days_between(pivot, d.due_date)
    moved = new.add_working_days(pivot, left)
    return moved if moved > d.due_date else None


def replace_due_date(d: Dossier, due: date, at: datetime) -> Dossier:
    """The dossier with a due date moved by a calendar change at ``at`` (the time of the change, never earlier
    than its last change)."""
    return replace(d, due_date=due, last_change_at=max(at, d.last_change_at))


RATINGS = ("very_satisfied", "satisfied", "unsatisfied")


def record_feedback(d: Dossier, rating: str | None, complained: bool) -> Dossier:
    """The applicant's rating and/or complaint about a received dossier (766 satisfaction)."""
    if d.received_at is None:
        raise IllegalTransition(
            "feedback is about a received dossier; this one was never received",
            {"from_status": d.status, "action": "feedback"},
        )
    if rating is not None and rating not in RATINGS:
        raise DossierRuleError(f"rating must be one of {', '.join(RATINGS)}", {"field": "rating"})
    if rating is None and not complained:
        raise DossierRuleError("feedback needs a rating or a complaint", {"field": "rating"})
    return replace(
        d,
        rating=rating if rating is not None else d.rating,
        complained=d.complained or complained,
    )  # not a lifecycle change: last_change_at stays (later transitions may still be recorded back-dated)


def record_portal_sync(
    d: Dossier, status_at: datetime, synced_at: datetime, max_delay_s: float
) -> tuple[Dossier, bool]:
    """A status synchronised to the national portal: (the dossier, whether on time = within ``max_delay_s``)."""
    if synced_at < status_at:
        raise InvalidTime("synced_at cannot be before the status it synchronised", {"field": "synced_at"})
    on_time = (synced_at - status_at).total_seconds() <= max_delay_s
    return (
        replace(
            d,
            portal_syncs=d.portal_syncs + 1,
            portal_late_syncs=d.portal_late_syncs + (not on_time),
        ),
        on_time,
    )


def for_index766(d: Dossier, procedure: Procedure):
    """The facts Decision 766 needs of a dossier (``index766.Dossier766``)."""
    from .index766 import Dossier766

    return Dossier766(
        code=d.code,
        agency_code=d.agency_code,
        admin_unit=d.admin_unit,
        district=d.district,
        received_on=local_date(d.received_at) if d.received_at else None,
        channel=d.channel,
        fully_online_procedure=procedure.online_level == "fully_online",
        has_fees=procedure.has_fees,
        paid_online=d.fees_paid_online is True,
        due_date=d.due_date,
        finished_on=local_date(d.resolved_at) if d.resolved_at else None,
        closed_without_result=d.status in (REJECTED, WITHDRAWN, STOPPED),
        paused_since=local_date(d.paused_at) if d.paused_at else None,
        digitised=d.digitised,
        result_esigned=d.result_esigned,
        synced_on_time=d.portal_syncs > 0 and d.portal_late_syncs == 0,
        rated_unsatisfied=d.rating == "unsatisfied",
        complained=d.complained,
    )


def utc(at: datetime) -> datetime:
    return at.astimezone(UTC)
