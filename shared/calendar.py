"""The city's official working calendar (Vietnam, public administration): which days are working days.

One calendar for every service that needs it (dossier deadlines, kiosk opening hours, ...). Built from two sources:

- the statutory public holidays of the Labour Code (2019, art. 112), lunar dates included, from the maintained
  ``holidays`` package (pinned in constraints.txt; its Vietnam rules also carry the weekend compensation days);
- the government's yearly decisions as data (``shared/data/calendar_vn_decisions.csv``): swapped working days,
  bridge days, a library date that is wrong, and up to which date the calendar is confirmed. Each row cites its
  decision or notice, and says whether it was checked against the text (``verified``).

Public administration works Monday to Friday (the 40-hour week, Decision 188/1999/QĐ-TTg), so a working day
is a weekday that is not a day off, or a Saturday/Sunday decided as worked.

``confirmed_through`` says up to which day the calendar follows decisions actually taken: after it, lunar
holidays whose bridge/swap days are decided each year (Tết above all) are only the library's estimate, and
operators must be told (``unconfirmed_ahead``).

Pure: no clock (callers pass ``today``); the data file is read by :func:`city_calendar` only when called.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

DATA = Path(__file__).parent / "data"
DECISIONS_CSV = DATA / "calendar_vn_decisions.csv"
#: row kinds of the decisions table
DAY_OFF, WORKING_DAY, NOT_DAY_OFF, CONFIRMED_THROUGH = (
    "day_off",
    "working_day",
    "not_day_off",
    "confirmed_through",
)
KINDS = (DAY_OFF, WORKING_DAY, NOT_DAY_OFF, CONFIRMED_THROUGH)
#: years the statutory holidays are generated for
DEFAULT_YEARS = range(2019, 2032)


@dataclass(frozen=True)
class Decision:
    """One row of the decisions table."""

    day: date
    kind: str
    name: str
    source: str
    verified: bool


@dataclass(frozen=True)
class WorkingCalendar:
    """Working days of public administration: Monday–Friday minus days off plus weekend days worked."""

    days_off: frozenset[date]
    working_weekend_days: frozenset[date] = frozenset()
    confirmed_through: date | None = None
    names: Mapping[date, str] = field(default_factory=dict, compare=False)

    # compatibility with the first calendar (dossier domain): same meaning
    @property
    def holidays(self) -> frozenset[date]:
        return self.days_off

    @property
    def extra_working_days(self) -> frozenset[date]:
        return self.working_weekend_days

    def is_working_day(self, d: date) -> bool:
        if d in self.working_weekend_days:
            return True
        return d.weekday() < 5 and d not in self.days_off

    def is_day_off(self, d: date) -> bool:
        """A public holiday or decided day off that falls on a weekday (weekends are off anyway)."""
        return d.weekday() < 5 and d in self.days_off and d not in self.working_weekend_days

    def name_of(self, d: date) -> str | None:
        return self.names.get(d)

    def next_working_day(self, d: date) -> date:
        """The first working day strictly after ``d``."""
        d += timedelta(days=1)
        while not self.is_working_day(d):
            d += timedelta(days=1)
        return d

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

    def is_confirmed(self, d: date) -> bool:
        return self.confirmed_through is not None and d <= self.confirmed_through

    def confirmed_days_ahead(self, today: date) -> int:
        """Days from ``today`` to the last confirmed day (negative: the calendar ran out that long ago)."""
        if self.confirmed_through is None:
            return -1
        return (self.confirmed_through - today).days

    def unconfirmed_ahead(self, today: date, horizon_days: int) -> bool:
        """Whether some day within ``horizon_days`` of ``today`` is beyond the confirmed calendar."""
        return self.confirmed_days_ahead(today) < horizon_days

    def with_changes(
        self, *, days_off: Iterable[date] = (), working_days: Iterable[date] = ()
    ) -> WorkingCalendar:
        """This calendar plus newly decided days off / worked days (what a new government decision does)."""
        off = set(days_off)
        worked = set(working_days)
        return WorkingCalendar(
            frozenset((self.days_off | off) - worked),
            frozenset((self.working_weekend_days - off) | worked),
            self.confirmed_through,
            self.names,
        )


def read_decisions(rows: Iterable[Mapping[str, str]]) -> list[Decision]:
    """Parse decision rows (``date,kind,name,source,verified``); a bad row raises ``ValueError`` naming it."""
    out: list[Decision] = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            day = date.fromisoformat((row.get("date") or "").strip())
        except ValueError:
            raise ValueError(f"calendar row {i}: date {row.get('date')!r} is not YYYY-MM-DD") from None
        kind = (row.get("kind") or "").strip()
        if kind not in KINDS:
            raise ValueError(f"calendar row {i}: unknown kind {kind!r} (one of {', '.join(KINDS)})")
        source = (row.get("source") or "").strip()
        if not source:
            raise ValueError(f"calendar row {i}: every decision cites its source")
        verified = (row.get("verified") or "").strip().lower()
        if verified not in ("yes", "no"):
            raise ValueError(f"calendar row {i}: verified must be yes or no")
        if kind == WORKING_DAY and day.weekday() < 5:
            raise ValueError(
                f"calendar row {i}: {day} is a weekday; only a weekend day can be made a working day"
            )
        out.append(Decision(day, kind, (row.get("name") or "").strip(), source, verified == "yes"))
    return out


def statutory_holidays(years: Iterable[int]) -> dict[date, str]:
    """Vietnam's statutory holidays with their compensation days, from the ``holidays`` package."""
    import holidays  # imported when a calendar is built, not at import time of every service

    return {d: str(name) for d, name in holidays.country_holidays("VN", years=list(years)).items()}


def build_calendar(decisions: Iterable[Decision], statutory: Mapping[date, str]) -> WorkingCalendar:
    """The working calendar from statutory holidays and the government's decisions (decisions win)."""
    off = dict(statutory)
    worked: set[date] = set()
    confirmed: date | None = None
    for dec in decisions:
        if dec.kind == DAY_OFF:
            off[dec.day] = dec.name
        elif dec.kind == WORKING_DAY:
            worked.add(dec.day)
        elif dec.kind == NOT_DAY_OFF:
            off.pop(dec.day, None)
        else:
            confirmed = max(confirmed, dec.day) if confirmed else dec.day
    return WorkingCalendar(frozenset(off), frozenset(worked), confirmed, off)


def load_decisions(path: Path = DECISIONS_CSV) -> list[Decision]:
    with open(path, encoding="utf-8") as f:
        return read_decisions(list(csv.DictReader(f)))


@lru_cache(maxsize=4)
def city_calendar(
    path: Path = DECISIONS_CSV, years: tuple[int, ...] = tuple(DEFAULT_YEARS)
) -> WorkingCalendar:
    """The city calendar: statutory holidays plus the decisions table (the shipped one by default)."""
    return build_calendar(load_decisions(path), statutory_holidays(years))
