"""Scaling a multi-topic processor out under load: one owner per state partition, exact totals.

State is kept per source partition number, so a worker must own partition *p* of every source topic or none
(``shared.stream.assignor``). Each test runs real worker processes of the kiosk KPI processor (four source
topics: registry, heartbeats, peripherals, sessions) and adds workers while sessions keep arriving, then
reconciles the ``kiosk.sessions`` total with the ingest ledger and reads the changelog: every state partition's
commit markers must carry strictly increasing batch numbers, which two workers writing one partition at the same
time cannot produce (each continues its own count). Before the co-partitioning assignor, Faust's round robin
gave two workers of ``kiosk-kpi`` partitions 0, 1 and 2 of different topics each, and both wrote every
changelog partition.
"""

from __future__ import annotations

import asyncio
from itertools import pairwise

import orjson
import pytest

from services.kiosk.app import create_app
from shared.contracts.kiosk import SESSIONS_TOPIC
from shared.stream.core import MARKER_KEY
from shared.testing import read_topic, running_app
from tests.areas import area
from tests.reliability.harness import Ledger, Worker, register_kiosks, wait_for_sessions_total
from tests.reliability.test_processor_faults import ingest_sessions, names, prime

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def markers_by_partition(kafka, processor_name: str) -> dict[int, list[dict]]:
    records = await read_topic(kafka, f"ioc.internal.{processor_name}.changelog", raw=True, timeout=20)
    out: dict[int, list[dict]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        if r.key == MARKER_KEY:
            out.setdefault(r.partition, []).append(orjson.loads(r.value))
    return out


async def keep_ingesting_until_taken_over(client, key, kiosks, ledger, log_path, *, rounds_after: int = 8):
    """Post sessions every 0.4 s until the worker logging to ``log_path`` recovered partitions, then a few more
    rounds so it works on them under load."""
    deadline = asyncio.get_running_loop().time() + 120
    after = rounds_after
    while after > 0:
        await ingest_sessions(client, key, kiosks, 150, ledger)
        await asyncio.sleep(0.4)
        if b"state recovered" in log_path.read_bytes():
            after -= 1
        assert asyncio.get_running_loop().time() < deadline, (
            "the new worker never took partitions over; its log ends:\n"
            + log_path.read_bytes()[-3000:].decode(errors="replace")
        )


@pytest.mark.parametrize("driver", ["faust", "librdkafka"])
async def test_kiosk_kpi_scaled_from_one_to_three_workers_keeps_one_owner_per_partition_and_exact_totals(
    kafka, kiosk_settings, admin_key, tmp_path, driver
):
    district = area("BD")
    ledger = Ledger()
    name, source = names()
    partitions = SESSIONS_TOPIC.partitions
    workers = [
        Worker(
            kafka.bootstrap_servers,
            name,
            source,
            pause_s=0.05,
            max_records=300,
            log_path=tmp_path / f"w{i}.log",
            driver=driver,
        )
        for i in range(3)
    ]
    try:
        async with running_app(create_app(kiosk_settings)) as client:
            kiosks = await register_kiosks(client, admin_key, district, 9)
            workers[0].start()
            await prime(client, admin_key, kiosks, ledger, kafka, source, district)
            await ingest_sessions(client, admin_key, kiosks, 2000, ledger)
            for w in workers[1:]:
                w.start()  # joins while the others are mid-stream: partitions move under load
                await keep_ingesting_until_taken_over(client, admin_key, kiosks, ledger, w.log_path)
        total = len(ledger.accepted_set)
        final = await wait_for_sessions_total(kafka, source, district, total, timeout=90)
        assert all(w.alive for w in workers)
        markers = await markers_by_partition(kafka, name)
    finally:
        for w in workers:
            w.stop()
    assert final == total, f"KPI total {final} != {total} accepted"
    assert sorted(markers) == list(range(partitions))
    for p, ms in markers.items():
        seqs = [m["seq"] for m in ms]
        assert all(a < b for a, b in pairwise(seqs)), (
            f"changelog partition {p} was written by two workers at once: batch numbers {seqs[:50]}..."
        )
    writers = {m["writer"] for ms in markers.values() for m in ms}
    assert len(writers) == 3, "every worker should own a partition once three share three partitions"
    # after the last rebalance each partition is written by exactly one worker, a different one each
    last_writers = [ms[-1]["writer"] for _, ms in sorted(markers.items())]
    assert len(set(last_writers)) == partitions
