"""Every SQL statement of the traffic service (asyncpg).

JSON arrays go in as text and are cast in SQL: asyncpg would read a list inside a ``jsonb[]`` parameter as
another array dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

# The registry row as the service uses it; ``gateway`` is the column ``gateway_principal`` (the principal that may
# report for the controller: access control only, never published on the registry topic).
_COLUMNS = (
    "intersection_id",
    "controller_id",
    "name",
    "district",
    "lat",
    "lon",
    "phases",
    "detectors",
    "gateway_principal AS gateway",
    "revision",
)
_INTERSECTION_COLS = ", ".join(_COLUMNS)
_RETURNING_I = ", ".join(f"i.{c}" for c in _COLUMNS)


async def load_intersections(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """The whole registry (a few thousand rows at most: the service caches it in memory)."""
    rows = await pool.fetch(f"SELECT {_INTERSECTION_COLS} FROM intersections ORDER BY intersection_id")
    return [dict(r) for r in rows]


async def get_intersection(pool: asyncpg.Pool, intersection_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        f"SELECT {_INTERSECTION_COLS} FROM intersections WHERE intersection_id = $1", intersection_id
    )
    return dict(row) if row else None


async def controllers_owned_elsewhere(conn: asyncpg.Connection, pairs: Sequence[tuple[str, str]]) -> set[str]:
    """Controller ids of ``(intersection_id, controller_id)`` pairs already bound to another intersection."""
    rows = await conn.fetch(
        "SELECT i.controller_id FROM intersections i JOIN unnest($1::text[], $2::text[]) AS p(iid, cid) "
        "ON i.controller_id = p.cid AND i.intersection_id <> p.iid",
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )
    return {r["controller_id"] for r in rows}


async def upsert_intersections(
    conn: asyncpg.Connection, items: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Insert or replace intersections (all fields, ``gateway`` included: absent means none); returns the stored
    rows with their new revision."""
    rows = await conn.fetch(
        f"""INSERT INTO intersections (intersection_id, controller_id, name, district, lat, lon, phases, detectors,
                                       gateway_principal, revision)
            SELECT iid, cid, name, district, lat, lon, string_to_array(phases_csv, ',')::int[],
                   detectors::jsonb, gateway, 1
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::float8[], $7::text[],
                        $8::text[], $9::text[]) AS t(iid, cid, name, district, lat, lon, phases_csv, detectors,
                                                     gateway)
            ON CONFLICT (intersection_id) DO UPDATE SET controller_id = EXCLUDED.controller_id,
                name = EXCLUDED.name, district = EXCLUDED.district, lat = EXCLUDED.lat, lon = EXCLUDED.lon,
                phases = EXCLUDED.phases, detectors = EXCLUDED.detectors,
                gateway_principal = EXCLUDED.gateway_principal,
                revision = intersections.revision + 1, updated_at = now()
            RETURNING {_INTERSECTION_COLS}""",
        [i["intersection_id"] for i in items],
        [i["controller_id"] for i in items],
        [i["name"] for i in items],
        [i["district"] for i in items],
        [i["lat"] for i in items],
        [i["lon"] for i in items],
        [",".join(str(p) for p in i["phases"]) for i in items],
        [orjson.dumps(i["detectors"]).decode() for i in items],
        [i.get("gateway") for i in items],
    )
    return [dict(r) for r in rows]


async def set_detectors(
    conn: asyncpg.Connection, detectors_by_controller: dict[str, list[dict]]
) -> list[dict[str, Any]]:
    """Replace the detector configuration of controllers; returns the updated intersections."""
    rows = await conn.fetch(
        f"""UPDATE intersections i SET detectors = t.detectors::jsonb, revision = i.revision + 1, updated_at = now()
            FROM unnest($1::text[], $2::text[]) AS t(cid, detectors)
            WHERE i.controller_id = t.cid RETURNING {_RETURNING_I}""",
        list(detectors_by_controller),
        [orjson.dumps(v).decode() for v in detectors_by_controller.values()],
    )
    return [dict(r) for r in rows]


async def upsert_measures(pool: asyncpg.Pool, rows: Sequence[tuple]) -> None:
    """Store phase measures; a re-delivered bin replaces the stored one (idempotent)."""
    await pool.executemany(
        """INSERT INTO phase_measures (intersection_id, phase, bin_start, bin_seconds, district, measures,
                                       computed_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (intersection_id, bin_start, phase) DO UPDATE SET bin_seconds = EXCLUDED.bin_seconds,
               district = EXCLUDED.district, measures = EXCLUDED.measures, computed_at = EXCLUDED.computed_at""",
        rows,
    )


async def fetch_measures(
    pool: asyncpg.Pool, intersection_id: str, start: datetime, end: datetime, limit: int
) -> list[dict[str, Any]]:
    """Measures of an intersection with ``start <= bin_start < end``, oldest first, then by phase."""
    rows = await pool.fetch(
        "SELECT measures FROM phase_measures WHERE intersection_id = $1 AND bin_start >= $2 AND bin_start < $3 "
        "ORDER BY bin_start, phase LIMIT $4",
        intersection_id,
        start,
        end,
        limit,
    )
    return [r["measures"] for r in rows]


async def upsert_intersection_measures(pool: asyncpg.Pool, rows: Sequence[tuple]) -> None:
    """Store intersection measures; a re-delivered bin replaces the stored one (idempotent)."""
    await pool.executemany(
        """INSERT INTO intersection_measures (intersection_id, bin_start, bin_seconds, district, measures,
                                              computed_at) VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (intersection_id, bin_start) DO UPDATE SET bin_seconds = EXCLUDED.bin_seconds,
               district = EXCLUDED.district, measures = EXCLUDED.measures, computed_at = EXCLUDED.computed_at""",
        rows,
    )


async def fetch_intersection_measures(
    pool: asyncpg.Pool, intersection_id: str, start: datetime, end: datetime, limit: int
) -> list[dict[str, Any]]:
    """Intersection measures with ``start <= bin_start < end``, oldest first."""
    rows = await pool.fetch(
        "SELECT measures FROM intersection_measures WHERE intersection_id = $1 AND bin_start >= $2 "
        "AND bin_start < $3 ORDER BY bin_start LIMIT $4",
        intersection_id,
        start,
        end,
        limit,
    )
    return [r["measures"] for r in rows]
