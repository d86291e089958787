"""PostgreSQL CPU of the meter service's register-state writes (not a test), with and without HOT updates.

    python -m bench.meter_register_store [--registers 20000] [--flushes 30]

Every accepted reading rewrites its register's row (``RegisterWriter`` flushes the latest state of each
register changed since the previous flush, once a second). Against an embedded PostgreSQL with the meter
service's own migrations, this writes ``--registers`` registers per flush, each flush one interval later (as
the fleet reports every 15 minutes), through ``repository.save_registers``; it prints PostgreSQL's CPU per
register written with the table as migrated (fillfactor 70: HOT updates) and, in the same run, with the
default fillfactor 100 (the baseline: every update adds a primary-key entry). Flushes after the first five
are measured (the table has reached its steady size by then).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.city_store_cpu import _postgres_cpu
from services.meter import repository
from services.meter.app import MIGRATIONS
from shared.config import DatabaseSettings
from shared.db import apply_migrations, create_pool
from shared.embedded import EmbeddedPostgres

OBIS = "1-0:1.8.0"
WARM_UP = 5


async def _flushes(
    pg: EmbeddedPostgres, schema: str, fillfactor: int | None, registers: int, flushes: int
) -> dict:
    pool = await create_pool(DatabaseSettings(url=pg.url("perf")), schema=schema)
    try:
        await apply_migrations(pool, schema, MIGRATIONS)
        if fillfactor is not None:
            await pool.execute(f"ALTER TABLE register_state SET (fillfactor = {fillfactor})")
        fill = await pool.fetchval("SELECT reloptions FROM pg_class WHERE oid = 'register_state'::regclass")
        end = 1_700_000_100
        cpu0 = wall0 = 0.0
        assert pg._proc is not None
        for i in range(flushes):
            end += 900
            if i == WARM_UP:
                cpu0, wall0 = _postgres_cpu(pg._proc.pid), time.perf_counter()
            states = [((f"M{m:07d}", OBIS), (end, 1, float(i), end)) for m in range(registers)]
            await repository.save_registers(pool, states)
        cpu, wall = _postgres_cpu(pg._proc.pid) - cpu0, time.perf_counter() - wall0
        hot = await pool.fetchval(
            "SELECT n_tup_hot_upd::float8 / nullif(n_tup_upd, 0) FROM pg_stat_user_tables "
            "WHERE relid = 'register_state'::regclass"
        )
        n = registers * (flushes - WARM_UP)
        return {
            "table": f"register_state {fill or ['fillfactor=100']}",
            "registers_written": n,
            "postgres_cpu_us_per_register": round(cpu / n * 1e6, 2),
            "statement_wall_us_per_register": round(wall / n * 1e6, 2),
            "hot_update_share": None if hot is None else round(hot, 2),
        }
    finally:
        await pool.close()


async def run(registers: int, flushes: int) -> list[dict]:
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="ioc-perf-")) / "pg").start()
    try:
        pg.create_database("perf")
        out = []
        for rnd in range(2):  # interleaved, twice: the machine's speed drifts
            out.append(await _flushes(pg, f"meter_migrated_{rnd}", None, registers, flushes))
            out.append(await _flushes(pg, f"meter_baseline_{rnd}", 100, registers, flushes))
        return out
    finally:
        if pg._proc is not None:
            pg._proc.terminate()
            pg._proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--registers", type=int, default=20_000)
    ap.add_argument("--flushes", type=int, default=30)
    opts = ap.parse_args()
    for row in asyncio.run(run(opts.registers, opts.flushes)):
        print(row)


if __name__ == "__main__":
    main()
