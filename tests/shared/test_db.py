"""Migrations against the real PostgreSQL of the test run."""

from __future__ import annotations

import asyncio
import uuid

from shared.db import apply_migrations, create_pool


async def test_processes_starting_together_apply_each_migration_once(db_settings, tmp_path):
    """``ioc up`` starts every service at once, each migrating the shared platform schema: on a fresh database
    they must neither fail (concurrent ``CREATE ... IF NOT EXISTS`` collide in PostgreSQL's catalogue) nor
    apply a file twice."""
    (tmp_path / "001_readings.sql").write_text("CREATE TABLE readings (meter_id text PRIMARY KEY);")
    (tmp_path / "002_counts.sql").write_text("ALTER TABLE readings ADD COLUMN n integer NOT NULL DEFAULT 0;")
    pools = [await create_pool(db_settings) for _ in range(8)]
    try:
        for _ in range(3):  # the race is timing-dependent: several fresh schemas
            schema = f"migrate_{uuid.uuid4().hex[:8]}"
            results = await asyncio.gather(*(apply_migrations(p, schema, tmp_path) for p in pools))
            assert sorted(name for applied in results for name in applied) == [
                "001_readings.sql",
                "002_counts.sql",
            ]
            async with pools[0].acquire() as conn:
                assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".schema_migrations') == 2
                await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        for p in pools:
            await p.close()
