"""IEEE 1366-2012 Major Event Days (the 2.5β method) and period indices with and without them. Pure: no I/O.

Used by the meter service (``POST /v1/reliability/report``) and the city service (``GET /v1/reliability``, from
the daily history it keeps), so both classify days the same way. Source: IEEE Std 1366-2012 clause 4.5 and
Annex B: α and β are the mean and standard deviation of the natural logarithms of the daily SAIDI values of the
five years before the reporting period (days with SAIDI 0 left out, ln 0 being undefined);
T_MED = exp(α + 2.5 β); a day whose SAIDI exceeds T_MED is a major event day (MED).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

#: Years of daily SAIDI history T_MED is computed from (IEEE 1366-2012 Annex B).
HISTORY_YEARS = 5


def major_event_threshold(daily_saidi: Iterable[float | None]) -> float | None:
    """T_MED = exp(α + 2.5 β) of the daily SAIDI values given (minutes). Days with SAIDI 0 (or missing) are
    left out. None with fewer than two usable days. β is the sample standard deviation (n − 1), as in the
    standard's worked example (a spreadsheet's STDEV). ``math.inf`` when the exponent overflows (no day can
    exceed it)."""
    logs = [math.log(v) for v in daily_saidi if v is not None and v > 0]
    if len(logs) < 2:
        return None
    alpha = sum(logs) / len(logs)
    beta = math.sqrt(sum((x - alpha) ** 2 for x in logs) / (len(logs) - 1))
    try:
        return math.exp(alpha + 2.5 * beta)
    except OverflowError:
        return math.inf


def history_start(period_start: date) -> date:
    """First day of the five years of history before a period starting on ``period_start`` (the history is
    ``[history_start, period_start)``); 29 February maps to 28 February."""
    try:
        return period_start.replace(year=period_start.year - HISTORY_YEARS)
    except ValueError:
        return period_start.replace(year=period_start.year - HISTORY_YEARS, day=28)


@dataclass(frozen=True, slots=True)
class DayIndices:
    """One day's indices of an area: SAIFI, SAIDI (minutes) and MAIFI (each that day's figures over that
    day's N_T). CAIDI is not additive; a period's CAIDI is its SAIDI / SAIFI."""

    day: date
    saifi: float
    saidi_minutes: float
    maifi: float = 0.0


def major_event_days(days: Iterable[DayIndices], t_med: float | None) -> list[date]:
    """The days whose SAIDI exceeds ``t_med`` (strictly: a day equal to T_MED is not a MED); none without a
    threshold."""
    if t_med is None:
        return []
    return sorted(d.day for d in days if d.saidi_minutes > t_med)


def period_indices(days: Iterable[DayIndices]) -> dict[str, float | None]:
    """SAIFI, SAIDI, MAIFI of a period = the sums of its daily indices; CAIDI = SAIDI / SAIFI (None when no
    customer was interrupted)."""
    f = dur = m = 0.0
    for d in days:
        f += d.saifi
        dur += d.saidi_minutes
        m += d.maifi
    return {"saifi": f, "saidi_minutes": dur, "caidi_minutes": dur / f if f else None, "maifi": m}


def indices_with_and_without_meds(
    days: Sequence[DayIndices], history_saidi: Iterable[float | None]
) -> dict[str, Any]:
    """The period's indices with every day and without its major event days (T_MED from ``history_saidi``,
    the daily SAIDI of the five years before the period)."""
    t_med = major_event_threshold(history_saidi)
    meds = major_event_days(days, t_med)
    excluded = set(meds)
    return {
        "t_med_minutes": t_med if t_med is None or math.isfinite(t_med) else None,
        "major_event_days": [d.isoformat() for d in meds],
        "all_days": period_indices(days),
        "without_major_event_days": period_indices(d for d in days if d.day not in excluded),
    }
