"""SQL of the asset pages, the multi-series history and the daily report (city schema)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.city.repository import _ALARM_COLUMNS

#: alarm types that are about a KPI or a whole domain of an area, not about one asset
AREA_ALARM_TYPES = ("kpi_breach", "no_signal")


async def open_asset_alarms(pool: asyncpg.Pool, area: str | None, limit: int = 1000) -> list[dict[str, Any]]:
    """Open alarms about one asset (not KPI breaches or silent domains), of an area (its district or commune)
    or of the whole city (``area`` None), most severe first."""
    rows = await pool.fetch(
        "SELECT domain, alarm_type, source_id, severity, district, commune, raised_at, alarm_id, state "
        "FROM alarms WHERE state <> 'cleared' AND alarm_type <> ALL($1::text[]) "
        "AND ($2::text IS NULL OR district = $2 OR commune = $2) "
        "ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'major' THEN 1 WHEN 'minor' THEN 2 ELSE 3 END, "
        "raised_at LIMIT $3",
        list(AREA_ALARM_TYPES),
        area,
        limit,
    )
    return [dict(r) for r in rows]


async def alarms_of_source(
    pool: asyncpg.Pool, source_id: str, domains: Sequence[str], limit: int = 200
) -> list[dict[str, Any]]:
    """Alarms (open first, then the latest cleared) whose source is the asset ``source_id`` in ``domains``."""
    rows = await pool.fetch(
        f"SELECT {', '.join(_ALARM_COLUMNS)} FROM alarms WHERE source_id = $1 AND domain = ANY($2::text[]) "
        "ORDER BY (state = 'cleared'), changed_at DESC LIMIT $3",
        source_id,
        list(domains),
        limit,
    )
    return [dict(r) for r in rows]


async def alarm_log_of(
    pool: asyncpg.Pool, alarm_ids: Sequence[str], since: datetime, limit: int = 500
) -> list[dict[str, Any]]:
    """The raised/cleared notices of these alarms since ``since``, newest first."""
    if not alarm_ids:
        return []
    rows = await pool.fetch(
        "SELECT alarm_id, alarm_type, state, at, annunciated FROM alarm_log "
        "WHERE alarm_id = ANY($1::text[]) AND at >= $2 ORDER BY at DESC, id DESC LIMIT $3",
        list(alarm_ids),
        since,
        limit,
    )
    return [dict(r) for r in rows]


async def day_kpi_rows(pool: asyncpg.Pool, bucket: datetime) -> list[dict[str, Any]]:
    """Every series' day roll-up of the Hanoi day starting at ``bucket`` (mean of its windows, min, max and
    last), city-wide and per area."""
    rows = await pool.fetch(
        "SELECT kpi, scope_level, scope_code, window_seconds, sum / NULLIF(count, 0) AS mean, count, min, max, "
        "last FROM kpi_day WHERE bucket = $1 ORDER BY kpi, scope_level, scope_code, window_seconds",
        bucket,
    )
    return [dict(r) for r in rows]


async def day_alarm_counts(pool: asyncpg.Pool, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Alarms raised to operators (annunciated) in ``[start, end)`` per domain, type and district."""
    rows = await pool.fetch(
        "SELECT domain, alarm_type, coalesce(district, 'HN') AS district, count(*) AS raised FROM alarm_log "
        "WHERE state = 'raised' AND annunciated AND at >= $1 AND at < $2 "
        "GROUP BY domain, alarm_type, coalesce(district, 'HN') ORDER BY domain, alarm_type, 3",
        start,
        end,
    )
    return [dict(r) for r in rows]
