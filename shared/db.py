"""PostgreSQL via asyncpg: a pool per service, its own schema, versioned SQL migrations at start-up."""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path

import asyncpg
import orjson

from shared.config import DatabaseSettings

log = logging.getLogger(__name__)
_MIGRATION = re.compile(r"^(\d{3,})_[a-z0-9_]+\.sql$")


async def _init_connection(conn: asyncpg.Connection) -> None:
    # JSON columns come back as Python objects, fast.
    for typ in ("json", "jsonb"):
        await conn.set_type_codec(
            typ, encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads, schema="pg_catalog"
        )


async def create_pool(db: DatabaseSettings, *, schema: str | None = None) -> asyncpg.Pool:
    """Open a pool whose connections use ``schema`` first in their search path."""
    settings = {"search_path": f"{schema},public"} if schema else {}
    settings["application_name"] = f"ioc-{schema or 'shared'}"
    return await asyncpg.create_pool(
        db.url,
        min_size=db.pool_min,
        max_size=db.pool_max,
        init=_init_connection,
        server_settings=settings,
        command_timeout=30,
    )


async def apply_migrations(pool: asyncpg.Pool, schema: str, directory: Path) -> list[str]:
    """Apply ``NNN_name.sql`` files from ``directory`` in order, once each, inside ``schema``.

    Each file runs in a transaction with its record in ``<schema>.schema_migrations``. An advisory lock per
    schema, taken first, keeps processes starting together (the services of ``ioc up``, replicas) from racing:
    ``CREATE ... IF NOT EXISTS`` run concurrently can still fail on PostgreSQL's catalogue unique indexes.
    """
    files = (
        sorted(p for p in Path(directory).iterdir() if _MIGRATION.match(p.name))
        if Path(directory).is_dir()
        else []
    )
    applied: list[str] = []
    async with pool.acquire() as conn:
        lock_id = zlib.crc32(schema.encode()) & 0x7FFFFFFF
        await conn.execute("SELECT pg_advisory_lock($1)", lock_id)
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(
                f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations '
                "(version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {
                r["version"] for r in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')
            }
            for path in files:
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(f'SET LOCAL search_path = "{schema}", public')
                    await conn.execute(path.read_text())
                    await conn.execute(
                        f'INSERT INTO "{schema}".schema_migrations(version) VALUES ($1)', path.name
                    )
                applied.append(path.name)
                log.info("migration applied", extra={"schema": schema, "migration": path.name})
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_id)
    return applied


async def ping(pool: asyncpg.Pool) -> bool:
    try:
        async with pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
        return True
    except Exception:
        return False
