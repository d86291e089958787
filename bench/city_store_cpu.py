"""CPU driver of the city service's consumer (not a test): city KPI updates in, the city store's writes out.

    python -m bench.city_store_cpu [--cycles 300] [--per-cycle 650]

Runs the city KPI processor over the perf driver's city mix (``bench.city_processor_cpu``) to get realistic
``ioc.city.kpis`` records, one batch per 0.5 s cycle (what the store's consumer fetches under load), then
hands each batch to the service's consumer path (``EventConsumer.process_records`` → ``CityService.handle``:
decode, time series, current values, roll-ups, stream items) against an embedded PostgreSQL. No broker.
Prints CPU seconds per million consumed KPI updates of this process (the service) and of PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from aiokafka.structs import ConsumerRecord

from bench.city_processor_cpu import CITY_PARTITIONS, generate
from services.city.app import MIGRATIONS
from services.city.domain import load_definitions
from services.city.processors import CityKpiProcessor
from services.city.service import CityService
from services.city.settings import CitySettings
from shared.config import DatabaseSettings, KafkaSettings
from shared.contracts.cloudevents import decode_batch
from shared.db import apply_migrations, create_pool
from shared.embedded import EmbeddedPostgres
from shared.kafka import EventConsumer
from shared.stream import State

TICKS = os.sysconf("SC_CLK_TCK")


def city_batches(cycles: int, per_cycle: int) -> list[list[ConsumerRecord]]:
    processor = CityKpiProcessor(load_definitions(), topics=("x",))
    states = {p: State(p) for p in range(CITY_PARTITIONS)}
    offset = 0
    out = []
    for now, batches in generate(cycles, per_cycle, repeat=0.5):
        records = []
        for p, events in batches.items():
            processor.apply_batch(events, states[p])
            for e in processor.emit(states[p], now + timedelta(seconds=0.2)):
                offset += 1
                records.append(
                    ConsumerRecord(
                        e.topic, 0, offset, 0, 0, e.key, e.value, None, len(e.key), len(e.value), e.headers
                    )
                )
        out.append(records)
    return out


def _postgres_cpu(postmaster: int) -> float:
    """CPU seconds of the postmaster and its children (the backends)."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(pid) == postmaster or int(fields[1]) == postmaster:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


async def run(batches: list[list[ConsumerRecord]], profile: str | None, batch_decode: bool = False) -> dict:
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="ioc-perf-")) / "pg").start()
    try:
        pg.create_database("perf")
        pool = await create_pool(DatabaseSettings(url=pg.url("perf")), schema="city")
        await apply_migrations(pool, "city", MIGRATIONS)
        store = CityService(pool, CitySettings(correlation_minutes=15), definitions={})
        consumer = EventConsumer(
            KafkaSettings(bootstrap_servers="127.0.0.1:1"),
            group_id=None,
            topics=[],
            handler=store.handle,
            publisher=None,  # type: ignore[arg-type]  # nothing is dead-lettered in this bench
        )
        if (
            batch_decode
        ):  # what a decode_batch-based EventConsumer.process_records would cost (see the report)

            async def process_records(records):
                good, _ = decode_batch(records)
                await store.handle(good)

            consumer.process_records = process_records  # type: ignore[method-assign]
        await consumer.process_records(batches[0])  # warm-up: prepared statements, first rows
        prof = cProfile.Profile() if profile else None
        assert pg._proc is not None
        pg0, cpu0 = _postgres_cpu(pg._proc.pid), time.process_time()
        if prof:
            prof.enable()
        for records in batches[1:]:
            await consumer.process_records(records)
        if prof and profile:
            prof.disable()
            prof.dump_stats(profile)
        cpu, pg_cpu = time.process_time() - cpu0, _postgres_cpu(pg._proc.pid) - pg0
        n = sum(len(b) for b in batches[1:])
        stream_items = await pool.fetchval("SELECT count(*) FROM stream_items")
        await pool.close()
    finally:
        if pg._proc is not None:
            pg._proc.terminate()
            pg._proc.wait(10)
    return {
        "kpi_updates": n,
        "batches": len(batches) - 1,
        "service_cpu_s_per_million": round(cpu / n * 1e6, 1),
        "postgres_cpu_s_per_million": round(pg_cpu / n * 1e6, 1),
        "stream_items": stream_items,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=300)
    ap.add_argument("--per-cycle", type=int, default=650)
    ap.add_argument("--profile")
    ap.add_argument("--batch-decode", action="store_true")
    opts = ap.parse_args()
    print(asyncio.run(run(city_batches(opts.cycles, opts.per_cycle), opts.profile, opts.batch_decode)))


if __name__ == "__main__":
    main()
