"""SQL of the incident workflow (asyncpg): cases, comments, SOP steps, escalation, shelf expiry, history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

_RANK = "CASE a.severity WHEN 'critical' THEN 0 WHEN 'major' THEN 1 WHEN 'minor' THEN 2 ELSE 3 END"
_SEVERITY = {0: "critical", 1: "major", 2: "minor", 3: "warning"}

# One row per incident with what the list and the detail show. $1 now (shelves that ran out no longer hide an
# alarm from the unacknowledged count), then the filters; a NULL filter is off.
_CASES = f"""
    SELECT i.incident_id, i.district, i.state, i.opened_at, i.last_alarm_at, i.closed_at, i.domains,
           i.alarm_count, s.open_rank, s.any_rank, s.open_alarms, s.unacknowledged_alarms,
           s.unacknowledged_since, w.assignee, w.assigned_by, w.assigned_at, w.procedure_id,
           coalesce(w.escalation_level, 0) AS escalation_level, w.escalated_at
    FROM incidents i
    LEFT JOIN incident_workflow w ON w.incident_id = i.incident_id
    CROSS JOIN LATERAL (
        SELECT min({_RANK}) FILTER (WHERE a.state <> 'cleared') AS open_rank, min({_RANK}) AS any_rank,
               count(*) FILTER (WHERE a.state <> 'cleared') AS open_alarms,
               count(*) FILTER (WHERE a.state = 'active') AS unacknowledged_alarms,
               min(a.raised_at) FILTER (WHERE a.state = 'active'
                                        AND (a.shelved_until IS NULL OR a.shelved_until <= $1))
                 AS unacknowledged_since,
               coalesce(bool_or(a.district = $3 OR a.commune = $3), false) AS in_area
        FROM alarms a WHERE a.incident_id = i.incident_id
    ) s
    WHERE ($2::text IS NULL OR i.incident_id = $2)
      AND ($3::text IS NULL OR i.district = $3 OR s.in_area)
      AND ($4::text IS NULL OR $4 = ANY(i.domains))
      AND ($5::int IS NULL OR coalesce(s.open_rank, s.any_rank) = $5)
      AND ($6::text IS NULL OR ($6 = '' AND w.assignee IS NULL) OR w.assignee = $6)
      AND (CASE $7::text
             WHEN 'open' THEN i.state = 'open'
             WHEN 'closed' THEN i.state = 'closed'
             WHEN 'unacknowledged' THEN i.state = 'open' AND s.unacknowledged_alarms > 0
             WHEN 'acknowledged' THEN i.state = 'open' AND s.unacknowledged_alarms = 0
             ELSE true END)
    ORDER BY (i.state = 'closed'), coalesce(s.open_rank, 4), coalesce(w.escalation_level, 0) DESC,
             i.last_alarm_at DESC
    LIMIT $8
"""


def _case(r: asyncpg.Record) -> dict[str, Any]:
    d = dict(r)
    open_rank, any_rank = d.pop("open_rank"), d.pop("any_rank")
    rank = open_rank if open_rank is not None else any_rank
    d["severity"] = _SEVERITY.get(rank) if rank is not None else None
    d["domains"] = list(d["domains"])
    return d


async def list_cases(
    pool: asyncpg.Pool | asyncpg.Connection,
    *,
    now: datetime,
    incident_id: str | None = None,
    area: str | None = None,
    domain: str | None = None,
    severity: str | None = None,
    assignee: str | None = None,
    state: str = "open",
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Incidents with their workflow state; ``assignee`` "" = unassigned; ``state``: open, closed,
    unacknowledged, acknowledged or all."""
    rank = {v: k for k, v in _SEVERITY.items()}.get(severity) if severity else None
    if severity and rank is None:
        return []
    rows = await pool.fetch(_CASES, now, incident_id, area, domain, rank, assignee, state, limit)
    return [_case(r) for r in rows]


async def alarms_of(
    pool: asyncpg.Pool | asyncpg.Connection, incident_ids: Sequence[str], per_incident: int = 50
) -> dict[str, list[dict[str, Any]]]:
    """The alarms of each incident, most severe and open first (at most ``per_incident`` each)."""
    if not incident_ids:
        return {}
    rows = await pool.fetch(
        f"""
        SELECT * FROM (
          SELECT a.alarm_id, a.domain, a.alarm_type, a.severity, a.source_id, a.district, a.commune, a.message,
                 a.state, a.raised_at, a.changed_at, a.acknowledged_by, a.acknowledged_at, a.cleared_by,
                 a.cleared_at, a.incident_id, a.occurrences, a.chattering, a.source_state, a.shelved_until,
                 a.shelved_by, a.shelve_reason,
                 row_number() OVER (PARTITION BY a.incident_id
                                    ORDER BY (a.state = 'cleared'), {_RANK}, a.changed_at DESC) AS n
          FROM alarms a WHERE a.incident_id = ANY($1::text[])
        ) x WHERE n <= $2 ORDER BY incident_id, n
        """,
        list(incident_ids),
        per_incident,
    )
    out: dict[str, list[dict[str, Any]]] = {i: [] for i in incident_ids}
    for r in rows:
        d = dict(r)
        d.pop("n")
        out[d["incident_id"]].append(d)
    return out


async def lock_incident(conn: asyncpg.Connection, incident_id: str) -> dict[str, Any] | None:
    """The incident row, locked for the rest of the transaction (workflow actions on it go one at a time; NO KEY
    so that the store's alarm writes, whose foreign key only share-locks the row, are not held up)."""
    r = await conn.fetchrow(
        "SELECT incident_id, district, state FROM incidents WHERE incident_id=$1 FOR NO KEY UPDATE",
        incident_id,
    )
    return dict(r) if r is not None else None


async def workflow(conn: asyncpg.Connection | asyncpg.Pool, incident_id: str) -> dict[str, Any] | None:
    r = await conn.fetchrow("SELECT * FROM incident_workflow WHERE incident_id=$1", incident_id)
    return dict(r) if r is not None else None


async def alarm_summaries(conn: asyncpg.Connection | asyncpg.Pool, incident_id: str) -> list[dict[str, Any]]:
    """What choosing a procedure looks at: each alarm's type, domain, severity and raise time."""
    rows = await conn.fetch(
        "SELECT alarm_type, domain, severity, raised_at FROM alarms WHERE incident_id=$1", incident_id
    )
    return [dict(r) for r in rows]


async def fix_procedure(conn: asyncpg.Connection, incident_id: str, procedure_id: str) -> str:
    """Record the incident's procedure unless one is recorded already; return the recorded one (the checklist
    an operator started stays the same when later alarms join)."""
    await conn.execute(
        "INSERT INTO incident_workflow (incident_id, procedure_id) VALUES ($1, $2) ON CONFLICT (incident_id) "
        "DO UPDATE SET procedure_id = coalesce(incident_workflow.procedure_id, EXCLUDED.procedure_id)",
        incident_id,
        procedure_id,
    )
    return await conn.fetchval("SELECT procedure_id FROM incident_workflow WHERE incident_id=$1", incident_id)


async def steps_done(conn: asyncpg.Connection | asyncpg.Pool, incident_id: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT procedure_id, step_id, done_by, done_at FROM incident_steps WHERE incident_id=$1 "
        "ORDER BY done_at, step_id",
        incident_id,
    )
    return [dict(r) for r in rows]


async def add_step(
    conn: asyncpg.Connection, incident_id: str, procedure_id: str, step_id: str, by: str, at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO incident_steps (incident_id, procedure_id, step_id, done_by, done_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        incident_id,
        procedure_id,
        step_id,
        by,
        at,
    )


async def assign(conn: asyncpg.Connection, incident_id: str, assignee: str, by: str, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO incident_workflow (incident_id, assignee, assigned_by, assigned_at) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (incident_id) DO UPDATE SET assignee=$2, assigned_by=$3, assigned_at=$4",
        incident_id,
        assignee,
        by,
        at,
    )


async def add_comment(
    conn: asyncpg.Connection, incident_id: str, author: str, at: datetime, body: str
) -> dict[str, Any]:
    r = await conn.fetchrow(
        "INSERT INTO incident_comments (incident_id, author, at, body) VALUES ($1, $2, $3, $4) "
        "RETURNING id, incident_id, author, at, body AS text",
        incident_id,
        author,
        at,
        body,
    )
    return dict(r)


async def comments(pool: asyncpg.Pool | asyncpg.Connection, incident_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, author, at, body AS text FROM incident_comments WHERE incident_id=$1 ORDER BY id",
        incident_id,
    )
    return [dict(r) for r in rows]


async def principal_role(conn: asyncpg.Connection | asyncpg.Pool, principal_id: str) -> str | None:
    """An active principal's role (``attributes.role``, else its kind), ``None`` when unknown or disabled."""
    return await conn.fetchval(
        "SELECT coalesce(attributes->>'role', kind) FROM platform.principals WHERE id=$1 AND disabled_at IS NULL",
        principal_id,
    )


async def principals_with_roles(
    pool: asyncpg.Pool, roles: Sequence[str], limit: int = 500
) -> list[dict[str, Any]]:
    """Active principals whose role is one of ``roles`` (who an incident can be assigned to)."""
    rows = await pool.fetch(
        "SELECT id, display_name, coalesce(attributes->>'role', kind) AS role FROM platform.principals "
        "WHERE disabled_at IS NULL AND coalesce(attributes->>'role', kind) = ANY($1::text[]) "
        "ORDER BY display_name, id LIMIT $2",
        list(roles),
        limit,
    )
    return [dict(r) for r in rows]


async def escalation_candidates(conn: asyncpg.Connection, now: datetime) -> list[dict[str, Any]]:
    """Open incidents with unacknowledged (unshelved) alarms: since when, their worst severity, their level."""
    rows = await conn.fetch(
        f"""
        SELECT i.incident_id, i.district, min(a.raised_at) AS unacknowledged_since, min({_RANK}) AS rank,
               coalesce(max(w.escalation_level), 0) AS level
        FROM incidents i
        JOIN alarms a ON a.incident_id = i.incident_id AND a.state = 'active'
                     AND (a.shelved_until IS NULL OR a.shelved_until <= $1)
        LEFT JOIN incident_workflow w ON w.incident_id = i.incident_id
        WHERE i.state = 'open'
        GROUP BY i.incident_id, i.district
        """,
        now,
    )
    return [
        {
            "incident_id": r["incident_id"],
            "district": r["district"],
            "unacknowledged_since": r["unacknowledged_since"],
            "severity": _SEVERITY[r["rank"]],
            "level": r["level"],
        }
        for r in rows
    ]


async def raise_escalation(conn: asyncpg.Connection, incident_id: str, level: int, at: datetime) -> bool:
    """Set the level if it is higher than the recorded one (replicas racing escalate once)."""
    r = await conn.fetchrow(
        "INSERT INTO incident_workflow (incident_id, escalation_level, escalated_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (incident_id) DO UPDATE SET escalation_level=$2, escalated_at=$3 "
        "WHERE incident_workflow.escalation_level < $2 RETURNING incident_id",
        incident_id,
        level,
        at,
    )
    return r is not None


async def expired_shelf_ids(conn: asyncpg.Connection, now: datetime) -> list[str]:
    rows = await conn.fetch(
        "SELECT alarm_id FROM alarms WHERE shelved_until IS NOT NULL AND shelved_until <= $1 "
        "AND state <> 'cleared' ORDER BY alarm_id",
        now,
    )
    return [r["alarm_id"] for r in rows]


async def history(pool: asyncpg.Pool, incident_id: str, limit: int = 1000) -> list[dict[str, Any]]:
    """The audit trail of the incident and of its alarms, oldest first."""
    rows = await pool.fetch(
        "SELECT id, at, principal, action, target, detail FROM platform.audit_log "
        "WHERE target = $1 OR (target IN (SELECT alarm_id FROM alarms WHERE incident_id = $1) "
        # an alarm id recurs (a new lifecycle may join another incident): its actions name their incident
        "AND coalesce(detail->>'incident_id', $1) = $1) "
        "ORDER BY id LIMIT $2",
        incident_id,
        limit,
    )
    return [dict(r) for r in rows]


async def incident_exists(conn: asyncpg.Connection, incident_id: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM incidents WHERE incident_id=$1", incident_id))


async def open_alarm_count(conn: asyncpg.Connection, incident_id: str) -> int:
    """How many of the incident's alarms are not cleared."""
    count = await conn.fetchval(
        "SELECT count(*) FROM alarms WHERE incident_id=$1 AND state <> 'cleared'", incident_id
    )
    return int(count)


async def open_alarm_incident(conn: asyncpg.Connection, alarm_id: str) -> asyncpg.Record | None:
    """For an open alarm: its incident and how many other open alarms that incident has (None: not open)."""
    return await conn.fetchrow(
        "SELECT a.incident_id, (SELECT count(*) FROM alarms o WHERE o.incident_id = a.incident_id "
        "AND o.state <> 'cleared' AND o.alarm_id <> a.alarm_id) AS others "
        "FROM alarms a WHERE a.alarm_id=$1 AND a.state <> 'cleared'",
        alarm_id,
    )
