"""``kiosk-kpi`` (four co-partitioned source topics: registry, heartbeats, peripherals, sessions) scaled from one
to two to three worker processes on Apache Kafka while sessions keep arriving, on the Faust driver (production's
default) with transactions: the ``kiosk.sessions`` total equals the ingest ledger, every state partition's
committed changelog carries strictly increasing batch numbers (two writers at once cannot), and after the last
rebalance each worker is the last writer of its own partition. The embedded-broker twin is
``tests/reliability/test_scaling.py``; meter-kpi's is ``test_stream_scaling.py``."""

from __future__ import annotations

import pytest

from services.kiosk.app import create_app
from shared.contracts.kiosk import SESSIONS_TOPIC
from shared.testing import running_app
from tests.areas import area
from tests.kafka.kiosk_support import admin_key, kafka, kiosk_settings
from tests.kafka.test_stream_scaling import assert_one_writer_at_a_time, committed_markers, tails
from tests.reliability.harness import Ledger, Worker, register_kiosks, wait_for_sessions_total
from tests.reliability.test_processor_faults import ingest_sessions, names, prime
from tests.reliability.test_scaling import keep_ingesting_until_taken_over

pytestmark = pytest.mark.slow

__all__ = ["admin_key", "kafka", "kiosk_settings"]


async def test_kiosk_kpi_on_the_faust_driver_scaled_one_two_three_workers_keeps_exact_totals(
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
            await ingest_sessions(client, admin_key, kiosks, 600, ledger)  # after the last rebalance
        total = len(ledger.accepted_set)
        final = await wait_for_sessions_total(kafka, source, district, total, timeout=120)
        assert all(w.alive for w in workers), tails(workers)
        markers = await committed_markers(kafka, name)
    finally:
        for w in workers:
            w.stop()
    assert final == total, f"KPI total {final} != {total} accepted\n" + tails(workers)
    assert sorted(markers) == list(range(SESSIONS_TOPIC.partitions))
    assert_one_writer_at_a_time(markers)
    last_writers = [ms[-1]["writer"] for _, ms in sorted(markers.items()) if ms]
    assert len(set(last_writers)) == min(3, SESSIONS_TOPIC.partitions), "each worker should own a partition"
