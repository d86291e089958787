"""Every SQL statement of the city service (asyncpg), nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from services.city.domain import Alarm, Incident
from shared.areas import HANOI_TZ  # day roll-ups are Hanoi days

_ROLLUP_TABLES = {"minute": "kpi_minute", "hour": "kpi_hour", "day": "kpi_day"}
_BUCKET_LENGTH = {"minute": "1 minute", "hour": "1 hour", "day": "1 day"}


def _ts(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def bucket_of(t: datetime, step: str) -> datetime:
    """Start of the minute, hour or (Hanoi-local) day containing ``t``."""
    if step == "minute":
        return t.replace(second=0, microsecond=0)
    if step == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    local = t.astimezone(HANOI_TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    return local.astimezone(UTC)


# KPI time series -----------------------------------------------------------------------------------------
_TIMES: dict[str, datetime] = {}  # timestamp string → aware datetime: a batch repeats a few window starts
_TIMES_SIZE = 20_000


def _ts_cached(value: str | datetime) -> datetime:
    if not isinstance(value, str):
        return _ts(value)
    t = _TIMES.get(value)
    if t is None:
        if len(_TIMES) >= _TIMES_SIZE:
            _TIMES.clear()
        t = _TIMES[value] = _ts(value)
    return t


# Rows travel as one JSON array per statement (orjson in C) rather than one array parameter per column, which
# asyncpg encodes element by element: most of the service's CPU per update before.
_STORE_VALUES = """
    WITH src AS (
        SELECT r.n, r.a->>0 AS kpi, r.a->>1 AS lvl, r.a->>2 AS code, (r.a->>3)::int AS wsec,
               (r.a->>4)::timestamptz AS ws, (r.a->>5)::float8 AS value, r.a->>6 AS status,
               (r.a->>7)::timestamptz AS upd, r.a
        FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS r(a, n)
    ), written AS (
        INSERT INTO kpi_values (kpi, scope_level, scope_code, window_seconds, window_start, value, status,
                                updated_at)
        SELECT kpi, lvl, code, wsec, ws, value, status, upd FROM src
        ON CONFLICT (kpi, scope_level, scope_code, window_seconds, window_start) DO UPDATE
          SET value = EXCLUDED.value, status = EXCLUDED.status, updated_at = EXCLUDED.updated_at
          WHERE kpi_values.updated_at < EXCLUDED.updated_at
        RETURNING kpi, scope_level, scope_code, window_seconds, window_start
    )
    -- Only what changed is streamed: a replayed batch (at-least-once delivery) adds nothing.
    INSERT INTO stream_items (kind, payload)
    SELECT 'kpi', jsonb_build_object(
               'kpi', s.a->0, 'domain', s.a->8, 'scope_level', s.a->1, 'scope_code', s.a->2,
               'window_start', s.a->9, 'window_seconds', s.a->3, 'value', s.a->5, 'unit', s.a->11,
               'status', s.a->6, 'target', s.a->12, 'updated_at', s.a->10)
    FROM src s JOIN written w ON (w.kpi, w.scope_level, w.scope_code, w.window_seconds, w.window_start)
                                = (s.kpi, s.lvl, s.code, s.wsec, s.ws)
    ORDER BY s.n
    RETURNING seq, kind, payload
"""
_STORE_CURRENT = """
    INSERT INTO kpi_current (kpi, domain, scope_level, scope_code, window_seconds, window_start, value,
                             numerator, denominator, unit, status, target, updated_at)
    SELECT a->>0, a->>1, a->>2, a->>3, (a->>4)::int, (a->>5)::timestamptz, (a->>6)::float8,
           coalesce((a->>7)::float8, 0.0), (a->>8)::float8, a->>9, a->>10, (a->>11)::float8,
           (a->>12)::timestamptz
    FROM jsonb_array_elements($1::jsonb) AS r(a)
    ON CONFLICT (kpi, scope_level, scope_code, window_seconds) DO UPDATE
      SET domain = EXCLUDED.domain, window_start = EXCLUDED.window_start, value = EXCLUDED.value,
          numerator = EXCLUDED.numerator, denominator = EXCLUDED.denominator, unit = EXCLUDED.unit,
          status = EXCLUDED.status, target = EXCLUDED.target, updated_at = EXCLUDED.updated_at
      WHERE (kpi_current.window_start, kpi_current.updated_at) <= (EXCLUDED.window_start, EXCLUDED.updated_at)
    RETURNING kpi, scope_level, scope_code, value
"""


async def store_kpi_updates(
    pool: asyncpg.Pool, updates: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Store a batch of ``CityKpiUpdated`` payloads: raw window values, current values, roll-ups and stream
    items, in one transaction (replaying a batch changes nothing).

    Returns (the stream items written, the current values that changed).
    """
    latest_per_window: dict[tuple, tuple[datetime, dict]] = {}
    for u in updates:
        k = (u["kpi"], u["scope_level"], u["scope_code"], u["window_seconds"], _ts_cached(u["window_start"]))
        at = _ts_cached(u["updated_at"])
        prev = latest_per_window.get(k)
        if prev is None or prev[0] <= at:
            latest_per_window[k] = (at, u)
    latest_per_series: dict[tuple, tuple[tuple, datetime, dict]] = {}
    for k, (at, u) in latest_per_window.items():
        series_latest = latest_per_series.get(k[:4])
        if series_latest is None or series_latest[0][4] < k[4]:
            latest_per_series[k[:4]] = (k, at, u)
    values = [
        [
            k[0],
            k[1],
            k[2],
            k[3],
            k[4],
            u["value"],
            u["status"],
            at,
            u.get("domain"),
            u.get("window_start"),
            u.get("updated_at"),
            u.get("unit"),
            u.get("target"),
        ]
        for k, (at, u) in latest_per_window.items()
    ]
    current = [
        [
            k[0],
            u["domain"],
            k[1],
            k[2],
            k[3],
            k[4],
            u["value"],
            u.get("numerator"),
            u.get("denominator"),
            u["unit"],
            u["status"],
            u.get("target"),
            at,
        ]
        for k, at, u in latest_per_series.values()
    ]
    async with pool.acquire() as conn, conn.transaction():
        items = await conn.fetch(_STORE_VALUES, values)
        changed = await conn.fetch(_STORE_CURRENT, current)
        series = list(latest_per_window)
        buckets: dict[datetime, dict[str, datetime]] = {}  # window start → its bucket per step (few distinct)
        for k in series:
            if k[4] not in buckets:
                buckets[k[4]] = {step: bucket_of(k[4], step) for step in _ROLLUP_TABLES}
        for step in _ROLLUP_TABLES:
            await _rollup(conn, step, sorted({(k[0], k[1], k[2], k[3], buckets[k[4]][step]) for k in series}))
    return sorted((dict(r) for r in items), key=lambda r: r["seq"]), [dict(r) for r in changed]


async def _rollup(conn: asyncpg.Connection, step: str, keys: Sequence[tuple]) -> None:
    """Recompute the roll-up buckets ``keys`` (kpi, level, code, window_seconds, bucket) from the finer table:
    raw → minute → hour → day. Sorted keys: replicas lock rows in the same order."""
    if not keys:
        return
    table = _ROLLUP_TABLES[step]
    length = _BUCKET_LENGTH[step]
    if step == "minute":
        source = (
            "SELECT kpi, scope_level, scope_code, window_seconds, window_start AS t, value AS sum, "
            "1 AS count, value AS min, value AS max, value AS last FROM kpi_values WHERE value IS NOT NULL"
        )
    else:
        finer = "kpi_minute" if step == "hour" else "kpi_hour"
        source = (
            f"SELECT kpi, scope_level, scope_code, window_seconds, bucket AS t, sum, count, min, max, last "
            f"FROM {finer}"
        )
    await conn.execute(
        f"""
        INSERT INTO {table} (kpi, scope_level, scope_code, window_seconds, bucket, sum, count, min, max, last)
        SELECT k.kpi, k.lvl, k.code, k.wsec, k.bucket, sum(s.sum), sum(s.count)::int, min(s.min), max(s.max),
               (array_agg(s.last ORDER BY s.t DESC))[1]
        FROM (SELECT a->>0 AS kpi, a->>1 AS lvl, a->>2 AS code, (a->>3)::int AS wsec,
                     (a->>4)::timestamptz AS bucket FROM jsonb_array_elements($1::jsonb) AS r(a)) AS k
        JOIN ({source}) s
          ON s.kpi = k.kpi AND s.scope_level = k.lvl AND s.scope_code = k.code AND s.window_seconds = k.wsec
         AND s.t >= k.bucket AND s.t < k.bucket + interval '{length}'
        GROUP BY k.kpi, k.lvl, k.code, k.wsec, k.bucket
        ON CONFLICT (kpi, scope_level, scope_code, window_seconds, bucket) DO UPDATE
          SET sum = EXCLUDED.sum, count = EXCLUDED.count, min = EXCLUDED.min, max = EXCLUDED.max,
              last = EXCLUDED.last
        """,
        keys,
    )


async def kpi_history(
    pool: asyncpg.Pool,
    *,
    kpi: str,
    scope_level: str,
    scope_code: str,
    window_seconds: int,
    start: datetime,
    end: datetime,
    step: str,
    limit: int = 5000,
) -> list[dict[str, Any]]:
    """Points of one series between ``start`` and ``end`` from the raw table or a roll-up."""
    if step == "raw":
        rows = await pool.fetch(
            "SELECT window_start AS t, value, value AS min, value AS max FROM kpi_values "
            "WHERE kpi=$1 AND scope_level=$2 AND scope_code=$3 AND window_seconds=$4 "
            "AND window_start >= $5 AND window_start < $6 ORDER BY window_start LIMIT $7",
            kpi,
            scope_level,
            scope_code,
            window_seconds,
            start,
            end,
            limit,
        )
    else:
        rows = await pool.fetch(
            f"SELECT bucket AS t, sum / NULLIF(count, 0) AS value, min, max FROM {_ROLLUP_TABLES[step]} "
            "WHERE kpi=$1 AND scope_level=$2 AND scope_code=$3 AND window_seconds=$4 "
            "AND bucket >= $5 AND bucket < $6 ORDER BY bucket LIMIT $7",
            kpi,
            scope_level,
            scope_code,
            window_seconds,
            bucket_of(start, step),
            end,
            limit,
        )
    return [dict(r) for r in rows]


async def daily_kpi_values(
    pool: asyncpg.Pool,
    kpis: Sequence[str],
    *,
    scope_level: str,
    scope_code: str,
    first_day: date,
    end_day: date,
) -> dict[str, dict[date, float]]:
    """Day-window values (``window_seconds`` 86400) of ``kpis`` for one scope and the Hanoi days
    ``[first_day, end_day)``, from the day roll-up (kept without a limit): kpi → Hanoi day → value. A day
    window is the only window of its Hanoi-day bucket, so its value is the bucket's ``last``."""
    rows = await pool.fetch(
        "SELECT kpi, bucket, last FROM kpi_day WHERE kpi = ANY($1::text[]) AND scope_level=$2 "
        "AND scope_code=$3 AND window_seconds=86400 AND bucket >= $4 AND bucket < $5",
        list(kpis),
        scope_level,
        scope_code,
        _hanoi_midnight(first_day),
        _hanoi_midnight(end_day),
    )
    out: dict[str, dict[date, float]] = {k: {} for k in kpis}
    for r in rows:
        out[r["kpi"]][r["bucket"].astimezone(HANOI_TZ).date()] = r["last"]
    return out


def _hanoi_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=HANOI_TZ).astimezone(UTC)


async def series_windows(pool: asyncpg.Pool, kpi: str, scope_level: str, scope_code: str) -> list[int]:
    """Window lengths a series has current values for (smallest first)."""
    rows = await pool.fetch(
        "SELECT window_seconds FROM kpi_current WHERE kpi=$1 AND scope_level=$2 AND scope_code=$3 "
        "ORDER BY window_seconds",
        kpi,
        scope_level,
        scope_code,
    )
    return [r["window_seconds"] for r in rows]


async def current_kpis(
    pool: asyncpg.Pool,
    *,
    domain: str | None = None,
    scope_level: str | None = None,
    scope_code: str | None = None,
    kpi: str | None = None,
    trend_points: int = 0,
) -> list[dict[str, Any]]:
    """Current value of every series matching the filters, with the last ``trend_points`` raw values."""
    rows = await pool.fetch(
        "SELECT kpi, domain, scope_level, scope_code, window_seconds, window_start, value, numerator, "
        "denominator, unit, status, target, updated_at FROM kpi_current "
        "WHERE ($1::text IS NULL OR domain=$1) AND ($2::text IS NULL OR scope_level=$2) "
        "AND ($3::text IS NULL OR scope_code=$3) AND ($4::text IS NULL OR kpi=$4) "
        "ORDER BY kpi, scope_level, scope_code, window_seconds",
        domain,
        scope_level,
        scope_code,
        kpi,
    )
    out = [dict(r) for r in rows]
    if trend_points > 0 and out:
        trend_rows = await pool.fetch(
            """
            SELECT kpi, scope_level, scope_code, window_seconds, window_start, value FROM (
              SELECT v.*, row_number() OVER (PARTITION BY v.kpi, v.scope_level, v.scope_code, v.window_seconds
                                             ORDER BY v.window_start DESC) AS rn
              FROM kpi_values v
              JOIN unnest($1::text[], $2::text[], $3::text[], $4::int[]) AS k(kpi, lvl, code, wsec)
                ON v.kpi = k.kpi AND v.scope_level = k.lvl AND v.scope_code = k.code AND v.window_seconds = k.wsec
            ) x WHERE rn <= $5 ORDER BY window_start
            """,
            [r["kpi"] for r in out],
            [r["scope_level"] for r in out],
            [r["scope_code"] for r in out],
            [r["window_seconds"] for r in out],
            trend_points,
        )
        trends: dict[tuple, list] = {}
        for r in trend_rows:
            trends.setdefault((r["kpi"], r["scope_level"], r["scope_code"], r["window_seconds"]), []).append(
                [_utc_iso(r["window_start"]), r["value"]]
            )
        for r in out:
            r["trend"] = trends.get((r["kpi"], r["scope_level"], r["scope_code"], r["window_seconds"]), [])
    return out


async def last_complete_values(
    pool: asyncpg.Pool, series: Sequence[tuple[str, str, str, int]], now: datetime
) -> dict[tuple, dict[str, Any]]:
    """Per series (kpi, level, code, window_seconds): its newest window that had ended by ``now``."""
    if not series:
        return {}
    rows = await pool.fetch(
        """
        SELECT DISTINCT ON (v.kpi, v.scope_level, v.scope_code, v.window_seconds)
               v.kpi, v.scope_level, v.scope_code, v.window_seconds, v.window_start, v.value, v.status
        FROM kpi_values v
        JOIN unnest($1::text[], $2::text[], $3::text[], $4::int[]) AS k(kpi, lvl, code, wsec)
          ON v.kpi = k.kpi AND v.scope_level = k.lvl AND v.scope_code = k.code AND v.window_seconds = k.wsec
        WHERE v.window_start + make_interval(secs => v.window_seconds) <= $5
          AND v.window_start > $5 - make_interval(secs => 3 * v.window_seconds)
        ORDER BY v.kpi, v.scope_level, v.scope_code, v.window_seconds, v.window_start DESC
        """,
        [s[0] for s in series],
        [s[1] for s in series],
        [s[2] for s in series],
        [s[3] for s in series],
        now,
    )
    return {
        (r["kpi"], r["scope_level"], r["scope_code"], r["window_seconds"]): {
            "window_start": r["window_start"],
            "value": r["value"],
            "status": r["status"],
        }
        for r in rows
    }


async def district_statuses(pool: asyncpg.Pool) -> dict[str, dict[str, Any]]:
    """Per district: the KPI statuses of its newest windows and its open alarms' severities."""
    kpis = await pool.fetch(
        "SELECT scope_code, array_agg(status) AS statuses FROM kpi_current WHERE scope_level='district' "
        "GROUP BY scope_code"
    )
    alarms = await pool.fetch(
        "SELECT district, array_agg(severity) AS severities FROM alarms WHERE state <> 'cleared' "
        "AND district IS NOT NULL AND (shelved_until IS NULL OR shelved_until <= now()) GROUP BY district"
    )
    out: dict[str, dict[str, Any]] = {}
    for r in kpis:
        out.setdefault(r["scope_code"], {"statuses": [], "severities": []})["statuses"] = list(r["statuses"])
    for r in alarms:
        out.setdefault(r["district"], {"statuses": [], "severities": []})["severities"] = list(
            r["severities"]
        )
    return out


# Alarms and incidents --------------------------------------------------------------------------------------
_ALARM_COLUMNS = (
    "alarm_id",
    "domain",
    "alarm_type",
    "severity",
    "source_id",
    "district",
    "commune",
    "message",
    "state",
    "raised_at",
    "changed_at",
    "acknowledged_by",
    "acknowledged_at",
    "cleared_by",
    "cleared_at",
    "incident_id",
    "occurrences",
    "chattering",
    "source_state",
    "shelved_until",
    "shelved_by",
    "shelve_reason",
)


async def alarm_for_update(conn: asyncpg.Connection, alarm_id: str) -> Alarm | None:
    """The alarm, locked for the rest of the transaction."""
    row = await conn.fetchrow(
        f"SELECT {', '.join(_ALARM_COLUMNS)} FROM alarms WHERE alarm_id=$1 FOR UPDATE", alarm_id
    )
    return Alarm(**dict(row)) if row is not None else None


async def save_alarm(conn: asyncpg.Connection, alarm: Alarm) -> None:
    """Insert or replace the alarm's row."""
    values = [getattr(alarm, c) for c in _ALARM_COLUMNS]
    sets = ", ".join(f"{c}=EXCLUDED.{c}" for c in _ALARM_COLUMNS[1:])
    await conn.execute(
        f"INSERT INTO alarms ({', '.join(_ALARM_COLUMNS)}) VALUES "
        f"({', '.join(f'${i + 1}' for i in range(len(_ALARM_COLUMNS)))}) "
        f"ON CONFLICT (alarm_id) DO UPDATE SET {sets}",
        *values,
    )


async def open_incidents(
    conn: asyncpg.Connection, district: str | None, opened_since: datetime | None = None
) -> list[Incident]:
    """The district's open incidents (every district's with ``None``), and those opened since
    ``opened_since`` even if closed meanwhile (a late consequence reopens its incident), locked."""
    rows = await conn.fetch(
        "SELECT incident_id, district, opened_at, last_alarm_at, domains, alarm_count FROM incidents "
        "WHERE ($1::text IS NULL OR district=$1) "
        "AND (state='open' OR ($2::timestamptz IS NOT NULL AND opened_at >= $2)) ORDER BY incident_id FOR UPDATE",
        district,
        opened_since,
    )
    return [
        Incident(
            r["incident_id"],
            r["district"],
            r["opened_at"],
            r["last_alarm_at"],
            tuple(r["domains"]),
            r["alarm_count"],
        )
        for r in rows
    ]


async def save_incident(conn: asyncpg.Connection, incident: Incident) -> None:
    await conn.execute(
        "INSERT INTO incidents (incident_id, district, state, opened_at, last_alarm_at, domains, alarm_count) "
        "VALUES ($1, $2, 'open', $3, $4, $5, $6) ON CONFLICT (incident_id) DO UPDATE "
        "SET last_alarm_at=EXCLUDED.last_alarm_at, domains=EXCLUDED.domains, alarm_count=EXCLUDED.alarm_count, "
        "state='open', closed_at=NULL",
        incident.incident_id,
        incident.district,
        incident.opened_at,
        incident.last_alarm_at,
        list(incident.domains),
        incident.alarm_count,
    )


async def close_incident_if_done(conn: asyncpg.Connection, incident_id: str, at: datetime) -> bool:
    """Close the incident when none of its alarms is still open."""
    r = await conn.execute(
        "UPDATE incidents SET state='closed', closed_at=$2 WHERE incident_id=$1 AND state='open' "
        "AND NOT EXISTS (SELECT 1 FROM alarms WHERE incident_id=$1 AND state <> 'cleared')",
        incident_id,
        at,
    )
    return r.endswith("1")


async def list_alarms(
    pool: asyncpg.Pool,
    *,
    states: Sequence[str],
    district: str | None = None,
    domain: str | None = None,
    incident_id: str | None = None,
    limit: int = 200,
    shelved: bool | None = None,
) -> list[dict[str, Any]]:
    """Alarms in ``states``; ``shelved``: True only shelved ones, False none of them, None both."""
    rows = await pool.fetch(
        f"SELECT {', '.join(_ALARM_COLUMNS)} FROM alarms WHERE state = ANY($1::text[]) "
        "AND ($2::text IS NULL OR district=$2) AND ($3::text IS NULL OR domain=$3) "
        "AND ($4::text IS NULL OR incident_id=$4) "
        "AND ($6::bool IS NULL OR (shelved_until IS NOT NULL AND shelved_until > now()) = $6) "
        "ORDER BY (state='cleared'), CASE severity WHEN 'critical' THEN 0 WHEN 'major' THEN 1 "
        "WHEN 'minor' THEN 2 ELSE 3 END, changed_at DESC LIMIT $5",
        list(states),
        district,
        domain,
        incident_id,
        limit,
        shelved,
    )
    return [dict(r) for r in rows]


async def list_incidents(
    pool: asyncpg.Pool, *, state: str | None, district: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """
        SELECT i.*, coalesce((SELECT min(CASE a.severity WHEN 'critical' THEN 0 WHEN 'major' THEN 1
                                                         WHEN 'minor' THEN 2 ELSE 3 END)
                             FROM alarms a WHERE a.incident_id = i.incident_id AND a.state <> 'cleared'), 4) AS rank,
               (SELECT count(*) FROM alarms a WHERE a.incident_id = i.incident_id AND a.state <> 'cleared')
                 AS open_alarms
        FROM incidents i WHERE ($1::text IS NULL OR i.state=$1) AND ($2::text IS NULL OR i.district=$2)
        ORDER BY i.state, rank, i.last_alarm_at DESC LIMIT $3
        """,
        state,
        district,
        limit,
    )
    sev = {0: "critical", 1: "major", 2: "minor", 3: "warning", 4: None}
    out = []
    for r in rows:
        d = dict(r)
        d["severity"] = sev[d.pop("rank")]
        out.append(d)
    return out


async def incident_alarm_ids(conn: asyncpg.Connection, incident_id: str) -> list[str] | None:
    """Ids of the incident's open alarms (``None`` when there is no such incident)."""
    exists = await conn.fetchval("SELECT 1 FROM incidents WHERE incident_id=$1", incident_id)
    if not exists:
        return None
    rows = await conn.fetch(
        "SELECT alarm_id FROM alarms WHERE incident_id=$1 AND state <> 'cleared' ORDER BY alarm_id",
        incident_id,
    )
    return [r["alarm_id"] for r in rows]


async def open_alarm_counts(pool: asyncpg.Pool) -> dict[tuple[str, str], int]:
    rows = await pool.fetch(
        "SELECT domain, severity, count(*) AS n FROM alarms WHERE state <> 'cleared' "
        "GROUP BY domain, severity"
    )
    return {(r["domain"], r["severity"]): r["n"] for r in rows}


def alarm_item(alarm: Alarm) -> dict[str, Any]:
    """The stream/API form of an alarm (times in UTC, ``...Z``, as the API gives them)."""
    d = asdict(alarm)
    return {k: (_utc_iso(v) if isinstance(v, datetime) else v) for k, v in d.items()}


def _utc_iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


# Alarm log and rates ---------------------------------------------------------------------------------------
async def log_alarm_notice(
    conn: asyncpg.Connection, change: dict[str, Any], at: datetime, annunciated: bool
) -> None:
    await conn.execute(
        "INSERT INTO alarm_log (alarm_id, domain, alarm_type, district, state, at, annunciated) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        change["alarm_id"],
        change["domain"],
        change["alarm_type"],
        change.get("district"),
        change["state"],
        at,
        annunciated,
    )


async def recent_raises(conn: asyncpg.Connection, alarm_id: str, since: datetime, before: datetime) -> int:
    """Raises the source sent for ``alarm_id`` in [since, before)."""
    return await conn.fetchval(
        "SELECT count(*) FROM alarm_log WHERE alarm_id=$1 AND state='raised' AND at >= $2 AND at < $3",
        alarm_id,
        since,
        before,
    )


async def chattering_to_release(conn: asyncpg.Connection, before: datetime) -> list[Alarm]:
    """Open chattering alarms whose source has been clear since before ``before``, locked."""
    rows = await conn.fetch(
        f"SELECT {', '.join(_ALARM_COLUMNS)} FROM alarms WHERE chattering AND state <> 'cleared' "
        "AND source_state = 'cleared' AND changed_at < $1 FOR UPDATE",
        before,
    )
    return [Alarm(**dict(r)) for r in rows]


async def alarm_rates(
    pool: asyncpg.Pool, since: datetime, top: int = 10, until: datetime | None = None
) -> dict[str, Any]:
    """Counts of the alarm log in [since, until): annunciated raises, suppressed notices, the top raisers."""
    until = until or datetime(9999, 1, 1, tzinfo=UTC)
    totals = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE state='raised' AND annunciated) AS annunciated, "
        "count(*) FILTER (WHERE state='raised') AS raised, "
        "count(*) FILTER (WHERE state='raised' AND NOT annunciated) AS suppressed FROM alarm_log WHERE at >= $1 AND at < $2",
        since,
        until,
    )
    by_domain = await pool.fetch(
        "SELECT domain, count(*) AS n FROM alarm_log WHERE at >= $1 AND at < $2 AND state='raised' AND annunciated "
        "GROUP BY domain ORDER BY n DESC",
        since,
        until,
    )
    busiest = await pool.fetch(
        "SELECT l.alarm_id, l.domain, l.alarm_type, l.district, count(*) AS raises, "
        "coalesce(bool_or(a.chattering), false) AS chattering "
        "FROM alarm_log l LEFT JOIN alarms a ON a.alarm_id = l.alarm_id "
        "WHERE l.at >= $1 AND l.at < $3 AND l.state='raised' GROUP BY l.alarm_id, l.domain, l.alarm_type, l.district "
        "ORDER BY raises DESC, l.alarm_id LIMIT $2",
        since,
        top,
        until,
    )
    state = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE state <> 'cleared') AS open, "
        "count(*) FILTER (WHERE state <> 'cleared' AND shelved_until > now()) AS shelved, "
        "count(*) FILTER (WHERE state <> 'cleared' AND chattering) AS chattering FROM alarms"
    )
    return {
        "annunciated": totals["annunciated"],
        "raised": totals["raised"],
        "suppressed": totals["suppressed"],
        "by_domain": {r["domain"]: r["n"] for r in by_domain},
        "top": [dict(r) for r in busiest],
        "open": state["open"],
        "shelved": state["shelved"],
        "chattering": state["chattering"],
    }


# The console stream ----------------------------------------------------------------------------------------
async def insert_stream_items(
    conn: asyncpg.Connection, items: Sequence[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Number and store stream items; returns them with their ``seq``."""
    if not items:
        return []
    rows = await conn.fetch(
        "INSERT INTO stream_items (kind, payload) SELECT k, p::jsonb FROM unnest($1::text[], $2::text[]) "
        "WITH ORDINALITY AS t(k, p, n) ORDER BY n RETURNING seq, kind, payload",
        [k for k, _ in items],
        [orjson.dumps(p, default=str).decode() for _, p in items],
    )
    return sorted((dict(r) for r in rows), key=lambda r: r["seq"])


async def stream_after(
    pool: asyncpg.Pool, after: int, kinds: Sequence[str], limit: int = 500
) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT seq, kind, payload FROM stream_items WHERE seq > $1 AND kind = ANY($2::text[]) "
        "ORDER BY seq LIMIT $3",
        after,
        list(kinds),
        limit,
    )
    return [dict(r) for r in rows]


async def stream_bounds(pool: asyncpg.Pool) -> tuple[int, int]:
    """(oldest kept seq, newest seq); (0, 0) when empty."""
    row = await pool.fetchrow(
        "SELECT coalesce(min(seq), 0) AS lo, coalesce(max(seq), 0) AS hi FROM stream_items"
    )
    return row["lo"], row["hi"]


# Retention -------------------------------------------------------------------------------------------------
async def delete_expired(
    pool: asyncpg.Pool, now: datetime, *, raw_days: int, minute_days: int, hour_days: int, stream_hours: int
) -> dict[str, int]:
    """Delete raw values, minute and hour roll-ups and stream items past their retention (days are kept)."""
    counts = {}
    async with pool.acquire() as conn:
        for name, sql, cutoff in (
            ("raw", "DELETE FROM kpi_values WHERE window_start < $1", now - timedelta(days=raw_days)),
            ("minute", "DELETE FROM kpi_minute WHERE bucket < $1", now - timedelta(days=minute_days)),
            ("hour", "DELETE FROM kpi_hour WHERE bucket < $1", now - timedelta(days=hour_days)),
            ("stream", "DELETE FROM stream_items WHERE at < $1", now - timedelta(hours=stream_hours)),
        ):
            r = await conn.execute(sql, cutoff)
            counts[name] = int(r.split()[-1])
    return counts
