"""Every SQL statement of the meter service (schema ``meter``, first in the pool's search path)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from services.meter.domain import RECENT_VALUES, MeterIn, MeterInfo, RegisterState, register_state

_METER_COLUMNS = (
    "meter_id, customers, district, commune, feeder, transformer, installed_on, interval_seconds, "
    "gateway_principal, decommissioned_on, effective_on"
)


def _info(row: asyncpg.Record) -> MeterInfo:
    return MeterInfo(
        row["meter_id"],
        row["customers"],
        row["district"],
        row["commune"],
        row["feeder"],
        row["transformer"],
        row["installed_on"],
        row["interval_seconds"],
        row["gateway_principal"],
        row["decommissioned_on"],
    )


async def upsert_meters(conn: asyncpg.Connection, meters: Sequence[MeterIn]) -> dict[str, MeterInfo | None]:
    """Insert or update registry entries in one statement, inside the caller's transaction (with the events
    that publish them); returns each meter's entry *before* the write."""
    before = await conn.fetch(
        f"SELECT {_METER_COLUMNS} FROM meters WHERE meter_id = ANY($1::text[])",
        [m.meter_id for m in meters],
    )
    await conn.execute(
        f"INSERT INTO meters ({_METER_COLUMNS}) "
        "SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], "
        "$7::date[], $8::int[], $9::text[], $10::date[], $11::date[]) "
        "ON CONFLICT (meter_id) DO UPDATE SET customers = excluded.customers, district = excluded.district, "
        "commune = excluded.commune, feeder = excluded.feeder, transformer = excluded.transformer, "
        "installed_on = excluded.installed_on, interval_seconds = excluded.interval_seconds, "
        "gateway_principal = excluded.gateway_principal, "
        "decommissioned_on = excluded.decommissioned_on, effective_on = excluded.effective_on, "
        "updated_at = clock_timestamp()",
        [m.meter_id for m in meters],
        [m.customers for m in meters],
        [m.district for m in meters],
        [m.commune for m in meters],
        [m.feeder for m in meters],
        [m.transformer for m in meters],
        [m.installed_on for m in meters],
        [m.interval_seconds for m in meters],
        [m.gateway for m in meters],
        [m.decommissioned_on for m in meters],
        [m.effective_on for m in meters],
    )
    old: dict[str, MeterInfo | None] = {m.meter_id: None for m in meters}
    old.update({r["meter_id"]: _info(r) for r in before})
    return old


#: Where a paged registry read stands: (updated_at, meter_id) of the last row read.
MeterPosition = tuple[datetime, str]


async def _keyset_page(
    pool: asyncpg.Pool, select: str, key: str, after: tuple[Any, Any] | None, limit: int
) -> list[asyncpg.Record]:
    """``select``'s rows in the order of its two-column ``key``, up to ``limit``, after the key ``after``
    (from the first when ``None``)."""
    if after is None:
        return await pool.fetch(f"{select} ORDER BY {key} LIMIT $1", limit)
    return await pool.fetch(
        f"{select} WHERE ({key}) > ($1, $2) ORDER BY {key} LIMIT $3", after[0], after[1], limit
    )


async def load_meter_page(
    pool: asyncpg.Pool, after: MeterPosition | None, limit: int
) -> tuple[list[MeterInfo], MeterPosition | None]:
    """Up to ``limit`` registry entries changed after ``after`` (from the first when ``None``) in change order,
    and the position of the last one (``after`` when none)."""
    rows = await _keyset_page(
        pool, f"SELECT {_METER_COLUMNS}, updated_at FROM meters", "updated_at, meter_id", after, limit
    )
    position = (rows[-1]["updated_at"], rows[-1]["meter_id"]) if rows else after
    return [_info(r) for r in rows], position


async def get_meter(pool: asyncpg.Pool, meter_id: str) -> MeterInfo | None:
    row = await pool.fetchrow(f"SELECT {_METER_COLUMNS} FROM meters WHERE meter_id = $1", meter_id)
    return _info(row) if row is not None else None


async def load_register_page(
    pool: asyncpg.Pool, after: tuple[str, str] | None, limit: int
) -> list[tuple[tuple[str, str], RegisterState]]:
    """Up to ``limit`` register states in key order, after the key ``after`` (from the start: None)."""
    columns = "meter_id, obis, last_end, seen_mask, last_value, value_end, zero_run, recent"
    rows = await _keyset_page(pool, f"SELECT {columns} FROM register_state", "meter_id, obis", after, limit)
    return [((r[0], r[1]), (r[2], r[3], r[4], r[5], r[6], *_recent(r[7]))) for r in rows]


def _recent(values: Sequence[float]) -> tuple:
    # Interval ends are whole seconds: stored as doubles beside the values, read back as ints (end 0: none).
    values = list(values)[-2 * RECENT_VALUES :]
    values = [0.0] * (2 * RECENT_VALUES - len(values)) + values
    return tuple(int(v) if j % 2 == 0 else v for j, v in enumerate(values))


async def save_registers(pool: asyncpg.Pool, states: Iterable[tuple[tuple[str, str], RegisterState]]) -> None:
    """Persist register states in one statement; an older state never overwrites a newer one."""
    rows = []
    for (m, o), st in states:
        st = register_state(st)
        rows.append(
            {"m": m, "o": o, "e": st[0], "s": st[1], "v": st[2], "ve": st[3], "z": st[4], "r": st[5:9]}
        )
    if not rows:
        return
    # One JSON document rather than six arrays: asyncpg encodes array parameters element by element (with an
    # ABC isinstance check each), ~2.1 µs of the service's CPU per register against ~0.5 µs for orjson here,
    # and the server's upsert takes no longer (measured with 10,000 registers per statement).
    await pool.execute(
        "INSERT INTO register_state (meter_id, obis, last_end, seen_mask, last_value, value_end, zero_run, recent) "
        "SELECT m, o, e, s, v, ve, z, ARRAY(SELECT json_array_elements_text(r)::float8) "
        "FROM json_to_recordset($1::json) "
        "AS r(m text, o text, e bigint, s bigint, v float8, ve bigint, z int, r json) "
        "ON CONFLICT (meter_id, obis) DO UPDATE SET last_end = excluded.last_end, seen_mask = excluded.seen_mask, "
        "last_value = excluded.last_value, value_end = excluded.value_end, zero_run = excluded.zero_run, "
        "recent = excluded.recent "
        "WHERE register_state.last_end <= excluded.last_end",
        rows,  # the pool's json codec encodes it with orjson (shared.db)
    )


async def reset_registers(pool: asyncpg.Pool, meter_ids: Sequence[str]) -> None:
    """Forget the registers of replaced meters (the new meter's register starts afresh)."""
    if meter_ids:
        await pool.execute("DELETE FROM register_state WHERE meter_id = ANY($1::text[])", list(meter_ids))


async def load_power_timelines(pool: asyncpg.Pool) -> dict[str, dict]:
    return {
        r["meter_id"]: r["timeline"]
        for r in await pool.fetch("SELECT meter_id, timeline FROM power_timelines")
    }


async def save_power_timelines(pool: asyncpg.Pool, changes: dict[str, dict | None]) -> None:
    """Store (meter → timeline) and drop (meter → None) power timelines in one transaction."""
    kept = [(m, t) for m, t in changes.items() if t is not None]
    dropped = [m for m, t in changes.items() if t is None]
    async with pool.acquire() as conn, conn.transaction():
        if dropped:
            await conn.execute("DELETE FROM power_timelines WHERE meter_id = ANY($1::text[])", dropped)
        if kept:
            await conn.execute(
                "INSERT INTO power_timelines (meter_id, timeline) "
                "SELECT m, t FROM jsonb_to_recordset($1::jsonb) AS r(m text, t jsonb) "
                "ON CONFLICT (meter_id) DO UPDATE SET timeline = excluded.timeline",
                [{"m": m, "t": t} for m, t in kept],
            )
