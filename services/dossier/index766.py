"""Decision 766/QĐ-TTg (23 June 2022): the 100-point service-quality index, pure (no I/O, no clock).

The index has five groups (Art. 1(1) of the Decision; maximum points as published with it): transparency 18,
progress and results 20, digitisation 22, online service 22, satisfaction 18. Each group is made of indicators,
each ``points × numerator / denominator``. The catalogue below says, for every indicator, its points, formula,
denominator and where its data comes from: ``events`` (what dossier events carry: IOC computes it) or ``input``
(data of another system, e.g. the national database of procedures or the feedback system: IOC takes it through
``PUT /v1/index766/inputs`` and never makes a value up). docs/dossier-766.md cites the sources and says which
indicator lists could not be checked against the Decision's appendix here (``verified``).

Scores are computed per scope (agency, commune, district, city) and period (month ``2026-03``, quarter
``2026-Q1``, year ``2026``; Vietnam local dates).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date

from shared.areas import CITY_CODE

#: group → maximum points (Decision 766, Art. 1(1))
GROUPS: dict[str, float] = {
    "transparency": 18.0,
    "progress": 20.0,
    "digitisation": 22.0,
    "online_service": 22.0,
    "satisfaction": 18.0,
}


@dataclass(frozen=True)
class Indicator:
    id: str
    group: str
    points: float
    source: str  # "events" or "input"
    formula: str
    verified: bool  # the indicator and its points were read in a source (docs/dossier-766.md)


INDICATORS: tuple[Indicator, ...] = (
    Indicator(
        "procedures_published_on_time",
        "transparency",
        4.0,
        "input",
        "procedures published/updated on time in the national procedures database / procedures due",
        True,
    ),
    Indicator(
        "status_synced_on_time",
        "transparency",
        6.0,
        "events",
        "dossiers received in the period whose status reached the national portal on time / dossiers received",
        True,
    ),
    Indicator(
        "transparency_other",
        "transparency",
        8.0,
        "input",
        "the rest of the transparency group (its indicators could not be read here: docs/dossier-766.md)",
        False,
    ),
    Indicator(
        "progress_on_time",
        "progress",
        20.0,
        "events",
        "(finished early or on time in the period + open within deadline at its end) / (finished in the period "
        "+ open at its end); a pause requested after the due date does not stop the clock",
        True,
    ),
    Indicator(
        "electronic_results",
        "digitisation",
        6.0,
        "events",
        "dossiers finished in the period with a legally valid electronic (e-signed) result / dossiers finished",
        True,
    ),
    Indicator(
        "dossiers_digitised",
        "digitisation",
        4.0,
        "events",
        "dossiers received in the period digitised at receipt / dossiers received",
        True,
    ),
    Indicator(
        "digitisation_other",
        "digitisation",
        12.0,
        "input",
        "the rest of the digitisation group (its indicators could not be read here: docs/dossier-766.md)",
        False,
    ),
    Indicator(
        "fully_online",
        "online_service",
        12.0,
        "events",
        "dossiers received online of fully-online procedures / dossiers received of fully-online procedures",
        True,
    ),
    Indicator(
        "online_payment",
        "online_service",
        10.0,
        "events",
        "dossiers whose fees were paid online / dossiers received of fee-bearing procedures",
        True,
    ),
    Indicator(
        "feedback_handled_on_time",
        "satisfaction",
        6.0,
        "input",
        "citizens' feedback (phản ánh, kiến nghị) handled on or before time / feedback received",
        True,
    ),
    Indicator(
        "feedback_satisfaction",
        "satisfaction",
        6.0,
        "input",
        "(feedback − feedback answered 'unsatisfied' or handled late) / feedback received",
        True,
    ),
    Indicator(
        "dossier_satisfaction",
        "satisfaction",
        6.0,
        "events",
        "(dossiers − dossiers rated unsatisfied, complained about or overdue) / dossiers received in the period",
        True,
    ),
)
INDICATOR_BY_ID = {i.id: i for i in INDICATORS}
INPUT_INDICATORS = tuple(i.id for i in INDICATORS if i.source == "input")


@dataclass(frozen=True)
class Dossier766:
    """What the index needs to know about one dossier (from its events; no applicant data)."""

    code: str
    agency_code: str
    admin_unit: str
    district: str | None
    received_on: date | None
    channel: str
    fully_online_procedure: bool
    has_fees: bool
    paid_online: bool = False
    due_date: date | None = None
    finished_on: date | None = None  # resolved (status 9) on this local day
    closed_without_result: bool = False  # rejected, withdrawn or stopped: out of progress
    paused_since: date | None = None  # clock paused (documents requested) since this day, still paused
    digitised: bool = False
    result_esigned: bool = False
    synced_on_time: bool = False
    rated_unsatisfied: bool = False
    complained: bool = False


def period_bounds(period: str) -> tuple[date, date]:
    """First and last day of ``2026-03`` (month), ``2026-Q1`` (quarter) or ``2026`` (year)."""
    try:
        if len(period) == 4:
            y = int(period)
            return date(y, 1, 1), date(y, 12, 31)
        y_s, _, rest = period.partition("-")
        y = int(y_s)
        if rest.startswith("Q"):
            q = int(rest[1:])
            if not 1 <= q <= 4:
                raise ValueError
            first_month = 3 * (q - 1) + 1
            last_month = first_month + 2
        else:
            first_month = last_month = int(rest)
        start = date(y, first_month, 1)
        nxt = date(y + (last_month == 12), last_month % 12 + 1, 1)
        return start, date.fromordinal(nxt.toordinal() - 1)
    except ValueError:
        raise ValueError(f"period {period!r} is not YYYY, YYYY-Qn or YYYY-MM") from None


def _overdue_at(d: Dossier766, day: date) -> bool:
    """Open at ``day`` and past its due date; a pause that began on or before the due date stops the clock."""
    if d.due_date is None or day <= d.due_date:
        return False
    return not (d.paused_since is not None and d.paused_since <= d.due_date)


def ratios(dossiers: Iterable[Dossier766], start: date, end: date, asof: date) -> dict[str, tuple[int, int]]:
    """(numerator, denominator) of each event-based indicator over the dossiers of one scope, for the period
    ``[start, end]`` observed at ``asof`` (open dossiers are judged at ``min(end, asof)``)."""
    at = min(end, asof)
    n = {i.id: [0, 0] for i in INDICATORS if i.source == "events"}
    for d in dossiers:
        received = d.received_on is not None and start <= d.received_on <= end
        finished = d.finished_on is not None and start <= d.finished_on <= end
        open_at_end = (
            d.received_on is not None
            and d.received_on <= at
            and not d.closed_without_result
            and (d.finished_on is None or d.finished_on > at)
        )
        if received:
            n["status_synced_on_time"][1] += 1
            n["status_synced_on_time"][0] += d.synced_on_time
            n["dossiers_digitised"][1] += 1
            n["dossiers_digitised"][0] += d.digitised
            if d.fully_online_procedure:
                n["fully_online"][1] += 1
                n["fully_online"][0] += d.channel == "online"
            if d.has_fees:
                n["online_payment"][1] += 1
                n["online_payment"][0] += d.paid_online
            late = (d.finished_on is not None and d.due_date is not None and d.finished_on > d.due_date) or (
                open_at_end and _overdue_at(d, at)
            )
            n["dossier_satisfaction"][1] += 1
            n["dossier_satisfaction"][0] += not (d.rated_unsatisfied or d.complained or late)
        if finished:
            assert d.finished_on is not None
            on_time = d.due_date is None or d.finished_on <= d.due_date
            n["progress_on_time"][1] += 1
            n["progress_on_time"][0] += on_time
            n["electronic_results"][1] += 1
            n["electronic_results"][0] += d.result_esigned
        elif open_at_end:
            n["progress_on_time"][1] += 1
            n["progress_on_time"][0] += not _overdue_at(d, at)
    return {k: (v[0], v[1]) for k, v in n.items()}


@dataclass(frozen=True)
class Scorecard:
    """Points of every indicator (None: no data: an input not given, or no dossier in the denominator), of each
    group and in total, with the points the available data covers."""

    indicators: dict[str, float | None]
    groups: dict[str, float]
    total: float
    covered_points: float
    missing: tuple[str, ...] = field(default=())


def scorecard(
    event_ratios: Mapping[str, tuple[float, float]], inputs: Mapping[str, tuple[float, float]]
) -> Scorecard:
    """Points from the event-based ratios and the outside inputs (``indicator id → (numerator, denominator)``)."""
    points: dict[str, float | None] = {}
    for ind in INDICATORS:
        pair = (event_ratios if ind.source == "events" else inputs).get(ind.id)
        if pair is None or not pair[1]:
            points[ind.id] = None
        else:
            num, den = pair
            if num < 0 or num > den:
                raise ValueError(f"indicator {ind.id}: numerator {num} must be between 0 and {den}")
            points[ind.id] = ind.points * num / den
    groups = {
        g: sum(p for i in INDICATORS if i.group == g and (p := points[i.id]) is not None) for g in GROUPS
    }
    covered = sum(i.points for i in INDICATORS if points[i.id] is not None)
    missing = tuple(i.id for i in INDICATORS if points[i.id] is None)
    return Scorecard(points, groups, sum(groups.values()), covered, missing)


def scopes_of(d: Dossier766) -> list[tuple[str, str]]:
    """The (level, code) scopes a dossier counts for: its agency, commune, district and the city."""
    out = [("agency", d.agency_code), ("city", CITY_CODE)]
    if d.district:
        out.append(("district", d.district))
    if d.admin_unit not in (d.district, CITY_CODE):
        out.append(("commune", d.admin_unit))
    return out


def scorecards(
    dossiers: Iterable[Dossier766],
    period: str,
    asof: date,
    inputs: Mapping[tuple[str, str], Mapping[str, tuple[float, float]]] | None = None,
) -> dict[tuple[str, str], Scorecard]:
    """One scorecard per scope for ``period``; ``inputs`` maps a scope to its outside indicators."""
    start, end = period_bounds(period)
    by_scope: dict[tuple[str, str], list[Dossier766]] = {}
    for d in dossiers:
        for sc in scopes_of(d):
            by_scope.setdefault(sc, []).append(d)
    inputs = inputs or {}
    return {
        sc: scorecard(ratios(ds, start, end, asof), inputs.get(sc, {})) for sc, ds in sorted(by_scope.items())
    }
