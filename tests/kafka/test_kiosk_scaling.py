"""``kiosk-kpi`` (four co-partitioned source topics: registry, heartbeats, peripherals, sessions) scaled from one
to two to three worker processes on Apache Kafka while sessions keep arriving, and back to one (SIGTERM, newest
first, sessions still arriving), on the Faust driver (production's default) with transactions: the
``kiosk.sessions`` total equals the ingest ledger, every state partition's committed changelog carries strictly
increasing batch numbers (two writers at once cannot), every worker wrote, and after the last rebalance the
worker left is the last writer of every partition. The embedded-broker twin is
``tests/reliability/test_scaling.py``; meter-kpi's is ``test_stream_scaling.py``."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.kiosk.app import create_app
from shared.contracts.kiosk import SESSIONS_TOPIC
from shared.testing import running_app
from tests.areas import area
from tests.kafka.kiosk_support import admin_key, kafka, kiosk_settings
from tests.kafka.test_stream_scaling import assert_one_writer_at_a_time, committed_markers, has_written, tails
from tests.reliability.harness import Ledger, Worker, register_kiosks, wait_for_sessions_total
from tests.reliability.test_processor_faults import ingest_sessions, names, prime
from tests.reliability.test_scaling import keep_ingesting_until_taken_over

pytestmark = pytest.mark.slow

__all__ = ["admin_key", "kafka", "kiosk_settings"]


async def test_kiosk_kpi_on_the_faust_driver_scaled_one_two_three_and_back_to_one_keeps_exact_totals(
    kafka, kiosk_settings, admin_key, tmp_path
):
    district, ledger = area("HBT"), Ledger()
    name, source = names()
    workers = [
        Worker(
            kafka.bootstrap_servers,
            name,
            source,
            pause_s=0.05,
            max_records=300,
            log_path=tmp_path / f"w{i}.log",
            driver="faust",
        )
        for i in range(3)
    ]
    try:
        async with running_app(create_app(kiosk_settings)) as client:
            kiosks = await register_kiosks(client, admin_key, district, 9)
            workers[0].start()
            await prime(client, admin_key, kiosks, ledger, kafka, source, district)
            await ingest_sessions(client, admin_key, kiosks, 1500, ledger)
            for w in workers[1:]:
                w.start()  # joins while the others are mid-stream: partitions move under load
                await keep_ingesting_until_taken_over(
                    client, admin_key, kiosks, ledger, w.log_path, rounds_after=5
                )
            # and back: the newest worker stopped first, once it has committed a batch of its own; sessions go on
            # while its partitions move to the workers that stay
            for w in reversed(workers[1:]):
                deadline = time.monotonic() + 120
                while not await has_written(kafka, name, w):
                    await ingest_sessions(client, admin_key, kiosks, 150, ledger)
                    await asyncio.sleep(0.4)
                    assert time.monotonic() < deadline, "a new worker never wrote:\n" + tails(workers)
                stay = [s for s in workers if s.alive and s is not w]
                before = sum(s.log_path.read_bytes().count(b"state recovered") for s in stay)
                w.stop()
                rounds_after = 3
                while rounds_after:
                    await ingest_sessions(client, admin_key, kiosks, 150, ledger)
                    await asyncio.sleep(0.4)
                    if sum(s.log_path.read_bytes().count(b"state recovered") for s in stay) > before:
                        rounds_after -= 1
                    assert time.monotonic() < deadline + 120, (
                        "nobody took a stopped worker's partitions over:\n" + tails(workers)
                    )
            await ingest_sessions(client, admin_key, kiosks, 600, ledger)  # after the last rebalance
        total = len(ledger.accepted_set)
        final = await wait_for_sessions_total(kafka, source, district, total, timeout=120)
        assert workers[0].alive, tails(workers)
        markers = await committed_markers(kafka, name)
    finally:
        for w in workers:
            w.stop()
    assert final == total, f"KPI total {final} != {total} accepted\n" + tails(workers)
    assert sorted(markers) == list(range(SESSIONS_TOPIC.partitions))
    assert_one_writer_at_a_time(markers)
    assert len({m["writer"] for ms in markers.values() for m in ms}) == len(workers), "a worker never wrote"
    last_writers = {ms[-1]["writer"] for ms in markers.values() if ms}
    assert len(last_writers) == 1, "the worker left should be the last writer of every partition"
