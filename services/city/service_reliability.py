"""Use case: an area's IEEE 1366 indices over a period with and without Major Event Days, from the daily KPI
history the city keeps (``kpi_day``). The arithmetic is :mod:`shared.reliability` (the meter service uses the
same); this module only chooses which days to read."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import asyncpg

from services.city import repository as repo
from shared.reliability import DayIndices, history_start, indices_with_and_without_meds

SAIFI, SAIDI, MAIFI = "meter.saifi", "meter.saidi_minutes", "meter.maifi"
#: Longest period one T_MED applies to: IEEE 1366 computes T_MED once per reporting year.
MAX_PERIOD_DAYS = 366


async def reliability_report(
    pool: asyncpg.Pool, *, scope_level: str, scope_code: str, first_day: date, last_day: date
) -> dict[str, Any]:
    """SAIFI, SAIDI, CAIDI, MAIFI of the Hanoi days ``first_day`` .. ``last_day`` (inclusive), with every day
    and without the major event days, T_MED from the daily SAIDI of the five years before ``first_day``.

    Period SAIFI, SAIDI, MAIFI are the sums of the daily values; CAIDI = SAIDI / SAIFI. A day without a
    stored value counts as 0 for that index and is listed in ``days_without_saidi``."""
    since = history_start(first_day)
    end = last_day + timedelta(days=1)
    values = await repo.daily_kpi_values(
        pool,
        (SAIFI, SAIDI, MAIFI),
        scope_level=scope_level,
        scope_code=scope_code,
        first_day=since,
        end_day=end,
    )
    saidi = values[SAIDI]
    history = [v for d, v in saidi.items() if d < first_day]
    period_days = [first_day + timedelta(days=i) for i in range((last_day - first_day).days + 1)]
    days = [
        DayIndices(d, values[SAIFI].get(d, 0.0), saidi.get(d, 0.0), values[MAIFI].get(d, 0.0))
        for d in period_days
    ]
    report = indices_with_and_without_meds(days, history)
    return {
        "scope_level": scope_level,
        "scope_code": scope_code,
        "from": first_day.isoformat(),
        "to": last_day.isoformat(),
        "history_from": since.isoformat(),
        "history_to": (first_day - timedelta(days=1)).isoformat(),
        "history_days": sum(1 for v in history if v > 0),
        "days_without_saidi": [d.isoformat() for d in period_days if d not in saidi],
        **report,
    }
