"""Pure dossier logic: reference data, the working-day calendar, the national status state machine.

No I/O and no clock: callers pass ``at`` / ``today``. Dates that matter legally (due dates, timeliness) are
local dates in Vietnam (UTC+7, no daylight saving).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from pathlib import Path

from shared.areas import HANOI_TZ
from shared.contracts.dossier import STATUS_NAMES

DATA = Path(__file__).parent / "data"

# Fixed-date public holidays (Labour Code 2019, art. 112): New Year, Reunification, Labour Day, National Day.
# Lunar ones (Tết, Hùng Kings), the second National Day day and government swaps come from the data table.
FIXED_HOLIDAYS: tuple[tuple[int, int], ...] = ((1, 1), (4, 30), (5, 1), (9, 2))

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
ONLINE_LEVELS = ("fully_online", "partly_online", "offline")


def local_date(at: datetime) -> date:
    """The Vietnamese calendar date of an instant."""
    if at.tzinfo is None:
        raise ValueError("naive datetime: times must carry a UTC offset")
    return at.astimezone(HANOI_TZ).date()


# Calendar -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkingCalendar:
    """Working days of public administration: Monday–Friday minus public holidays plus make-up Saturdays."""

    holidays: frozenset[date]
    extra_working_days: frozenset[date] = frozenset()

    def is_working_day(self, d: date) -> bool:
        if d in self.extra_working_days:
            return True
        return d.weekday() < 5 and d not in self.holidays

    def add_working_days(self, start: date, days: int) -> date:
        """The ``days``-th working day after ``start`` (``start`` itself is not counted; 0 → ``start``)."""
        d = start
        left = days
        while left > 0:
            d += timedelta(days=1)
            if self.is_working_day(d):
                left -= 1
        return d

    def working_days_between(self, after: date, until: date) -> int:
        """How many working days ``d`` satisfy ``after < d <= until`` (0 when ``until <= after``)."""
        n = 0
        d = after
        while d < until:
            d += timedelta(days=1)
            if self.is_working_day(d):
                n += 1
        return n


def _fixed_holidays(years: Iterable[int], holidays: set[date]) -> set[date]:
    out: set[date] = set()
    for y in years:
        for m, d in FIXED_HOLIDAYS:
            day = date(y, m, d)
            out.add(day)
            if day.weekday() >= 5:
                # A holiday on a weekend gives a compensatory day off on the next working day (art. 112(3)).
                nxt = day + timedelta(days=1)
                while nxt.weekday() >= 5 or nxt in holidays or nxt in out:
                    nxt += timedelta(days=1)
                out.add(nxt)
    return out


def load_calendar(
    rows: Iterable[dict[str, str]], years: Iterable[int] = range(2019, 2031)
) -> WorkingCalendar:
    """Build the calendar from fixed-date holidays plus ``date,kind,name`` rows (kind holiday/working_day)."""
    table_holidays: set[date] = set()
    extra: set[date] = set()
    for row in rows:
        d = date.fromisoformat(row["date"].strip())
        kind = row["kind"].strip()
        if kind == "holiday":
            table_holidays.add(d)
        elif kind == "working_day":
            extra.add(d)
        else:
            raise ValueError(f"unknown calendar row kind {kind!r} (holiday or working_day)")
    holidays = table_holidays | _fixed_holidays(years, table_holidays)
    return WorkingCalendar(frozenset(holidays), frozenset(extra))


@lru_cache(maxsize=4)
def calendar_from_csv(path: Path = DATA / "holidays_vn.csv") -> WorkingCalendar:
    """The calendar from a holiday table file (the default one ships with the service)."""
    with open(path, encoding="utf-8") as f:
        return load_calendar(list(csv.DictReader(f)))


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
            d, status=RECEIVED, received_at=at, due_date=due_date_for(at, procedure.processing_days, calendar)
        )
    return d


def due_date_for(received_at: datetime, processing_days: int, calendar: WorkingCalendar) -> date:
    """Legal due date: ``processing_days`` working days after the (local) day of receipt."""
    return calendar.add_working_days(local_date(received_at), processing_days)


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
) -> Dossier:
    """Apply ``action`` at ``at``; the new dossier state. Raises :class:`IllegalTransition` and friends."""
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
        changes.update(received_at=at, due_date=due_date_for(at, procedure.processing_days, calendar))
    elif action == "request_documents" and procedure.pauses_clock:
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


def utc(at: datetime) -> datetime:
    return at.astimezone(UTC)
