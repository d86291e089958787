"""Every SQL statement of the kiosk service (schema ``kiosk``, first in the pool's search path)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

_COLUMNS = (
    "kiosk_id, building, address, district, commune, opening_hours, peripherals, software_version, "
    "gateway_principal, in_service_since, active, version, published_version, updated_at"
)

# ``published_version``: the last version handed to the registry topic. A write hands its version to the outbox in
# its own transaction (the caller adds the registry events there), so it records it at once; only rows written
# before the outbox (published by a republisher then) may lag, and the service hands them over at start-up.
_UPSERT = f"""
INSERT INTO kiosks (kiosk_id, building, address, district, commune, opening_hours, peripherals,
                    software_version, gateway_principal, in_service_since, active, published_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, COALESCE($10, now()), $11, 1)
ON CONFLICT (kiosk_id) DO UPDATE SET
    building = $2, address = $3, district = $4, commune = $5, opening_hours = $6, peripherals = $7,
    software_version = $8, gateway_principal = $9,
    in_service_since = COALESCE($10, kiosks.in_service_since), active = $11,
    version = kiosks.version + 1, published_version = kiosks.version + 1, updated_at = now()
RETURNING {_COLUMNS}
"""


async def upsert_kiosks(
    conn: asyncpg.Connection,
    entries: Sequence[dict],
    *,
    principal: str | None = None,
    action: str = "kiosk.registered",
) -> list[asyncpg.Record]:
    """Insert or update registry entries, in the caller's transaction (which adds their registry events to the
    outbox); returns the stored rows (with new versions).

    With ``principal``, one audit row per kiosk is appended too (who changed it, version, and the gateway allowed
    to report for it), so a registry change and its audit trail stand or fall together.
    """
    rows: list[asyncpg.Record] = []
    for e in entries:
        row = await conn.fetchrow(
            _UPSERT,
            e["kiosk_id"],
            e["building"],
            e["address"],
            e["district"],
            e.get("commune"),
            e["opening_hours"],
            list(e["peripherals"]),
            e["software_version"],
            e.get("gateway"),
            e.get("in_service_since"),
            e.get("active", True),
        )
        assert row is not None  # INSERT ... RETURNING always returns the row
        rows.append(row)
    if principal is not None:
        await conn.executemany(
            "INSERT INTO platform.audit_log(principal, service, action, target, detail) "
            "VALUES ($1, 'kiosk', $2, $3, $4)",
            [
                (
                    principal,
                    action,
                    r["kiosk_id"],
                    {"version": r["version"], "gateway": r["gateway_principal"], "active": r["active"]},
                )
                for r in rows
            ],
        )
    return rows


async def get_kiosk(pool: asyncpg.Pool, kiosk_id: str) -> asyncpg.Record | None:
    return await pool.fetchrow(f"SELECT {_COLUMNS} FROM kiosks WHERE kiosk_id = $1", kiosk_id)


async def list_kiosks(
    pool: asyncpg.Pool, *, district: str | None = None, limit: int = 1000, offset: int = 0
) -> list[asyncpg.Record]:
    return await pool.fetch(
        f"SELECT {_COLUMNS} FROM kiosks WHERE ($1::text IS NULL OR district = $1) "
        "ORDER BY kiosk_id LIMIT $2 OFFSET $3",
        district,
        limit,
        offset,
    )


async def registry_index(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    """What ingest needs of every kiosk (kept in memory)."""
    return await pool.fetch("SELECT kiosk_id, district, peripherals, active, gateway_principal FROM kiosks")


async def unpublished(conn: asyncpg.Connection, limit: int = 500) -> list[asyncpg.Record]:
    """Registry rows whose last version is not on the registry topic (written before the outbox)."""
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM kiosks WHERE published_version < version ORDER BY updated_at LIMIT $1 "
        "FOR UPDATE",
        limit,
    )


async def mark_published(conn: asyncpg.Connection, versions: Sequence[tuple[str, int]]) -> None:
    """Record that these (kiosk, version) entries are handed to the registry topic (never moves backwards)."""
    if versions:
        await conn.executemany(
            "UPDATE kiosks SET published_version = GREATEST(published_version, $2) WHERE kiosk_id = $1",
            list(versions),
        )


def as_dict(row: asyncpg.Record) -> dict:
    d = dict(row)
    for k in ("in_service_since", "updated_at"):
        if isinstance(d.get(k), datetime):
            d[k] = d[k].isoformat()
    d["peripherals"] = list(d["peripherals"])
    return d


# Per-kiosk status (migration 002): what ingest accepted, kept STATUS_DAYS --------------------------------------
STATUS_DAYS = 8


async def record_heartbeats(pool: asyncpg.Pool, items: Sequence[tuple[str, datetime]]) -> None:
    """Store accepted heartbeats ``(kiosk_id, at)`` (a re-sent one is stored once)."""
    await pool.execute(
        "INSERT INTO kiosk_heartbeats (kiosk_id, at) SELECT * FROM unnest($1::text[], $2::timestamptz[]) "
        "ON CONFLICT DO NOTHING",
        [i[0] for i in items],
        [i[1] for i in items],
    )


async def record_peripheral_changes(
    pool: asyncpg.Pool, items: Sequence[tuple[str, str, datetime, str, str | None]]
) -> None:
    """Store accepted peripheral changes ``(kiosk_id, peripheral, at, state, paper)`` (a re-sent one once)."""
    await pool.execute(
        "INSERT INTO kiosk_peripheral_changes (kiosk_id, peripheral, at, state, paper) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[]) "
        "ON CONFLICT DO NOTHING",
        [i[0] for i in items],
        [i[1] for i in items],
        [i[2] for i in items],
        [i[3] for i in items],
        [i[4] or "" for i in items],
    )


async def record_sessions(
    pool: asyncpg.Pool, items: Sequence[tuple[str, str, str, datetime, datetime, str]]
) -> None:
    """Store accepted sessions ``(kiosk_id, session_id, journey, started_at, ended_at, outcome)``, once each."""
    await pool.execute(
        "INSERT INTO kiosk_sessions (kiosk_id, session_id, journey, started_at, ended_at, outcome) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], "
        "$6::text[]) ON CONFLICT DO NOTHING",
        *([i[k] for i in items] for k in range(6)),
    )


async def prune_status(pool: asyncpg.Pool) -> None:
    """Forget status data older than :data:`STATUS_DAYS`."""
    for table, column in (
        ("kiosk_heartbeats", "at"),
        ("kiosk_peripheral_changes", "at"),
        ("kiosk_sessions", "started_at"),
    ):
        await pool.execute(
            f"DELETE FROM {table} WHERE {column} < now() - make_interval(days => $1)", STATUS_DAYS
        )


async def heartbeats_between(
    pool: asyncpg.Pool, kiosk_id: str, start: datetime, end: datetime
) -> list[datetime]:
    rows = await pool.fetch(
        "SELECT at FROM kiosk_heartbeats WHERE kiosk_id = $1 AND at >= $2 AND at < $3 ORDER BY at",
        kiosk_id,
        start,
        end,
    )
    return [r["at"] for r in rows]


async def last_heartbeat(pool: asyncpg.Pool, kiosk_id: str) -> datetime | None:
    return await pool.fetchval("SELECT max(at) FROM kiosk_heartbeats WHERE kiosk_id = $1", kiosk_id)


async def peripheral_changes_until(pool: asyncpg.Pool, kiosk_id: str, end: datetime) -> list[asyncpg.Record]:
    """Every stored change of the kiosk's peripherals before ``end``, in time order (then as stored)."""
    return await pool.fetch(
        "SELECT peripheral, at, state, NULLIF(paper, '') AS paper FROM kiosk_peripheral_changes "
        "WHERE kiosk_id = $1 AND at < $2 ORDER BY peripheral, at, seq",
        kiosk_id,
        end,
    )


async def session_counts(pool: asyncpg.Pool, kiosk_id: str, start: datetime, end: datetime) -> dict[str, int]:
    """Sessions of the kiosk that started in ``[start, end)`` per outcome."""
    rows = await pool.fetch(
        "SELECT outcome, count(*) AS n FROM kiosk_sessions WHERE kiosk_id = $1 AND started_at >= $2 "
        "AND started_at < $3 GROUP BY outcome",
        kiosk_id,
        start,
        end,
    )
    return {r["outcome"]: r["n"] for r in rows}
