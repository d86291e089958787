"""Stream workers scaled out and evicted on Apache Kafka (transactions on: ``auto`` picks them here).

- ``meter-kpi`` (four co-partitioned source topics, six partitions) scaled from one to two to three worker
  processes while readings keep arriving, on the aiokafka, librdkafka and Faust drivers (the Faust one three
  times, the third worker joining a quiet stream or a busy one; the busy run then back from three to one,
  stopping a worker at a time under load), and on to six workers, one per partition: the day's completeness
  numerator equals the ledger, and every state partition's committed changelog carries strictly increasing
  batch numbers (two writers at once cannot).
- A worker stopped with SIGSTOP past its session timeout while the stream goes on, then resumed (Faust and
  librdkafka drivers): the group has given its partitions away and the new owner initialised their
  transactional ids, so whatever the resumed worker tries to write is fenced (logged, counted, dropped);
  totals stay exact.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from itertools import pairwise

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.stream.core import MARKER_KEY
from shared.testing import running_app
from tests.areas import area
from tests.kafka.meter_support import QUARTERS, issue_keys, meter_app, register_fleet
from tests.kafka.test_meter_processor_faults import ingest, wait_for_total
from tests.reliability.harness import Ledger, Worker, uid

pytestmark = pytest.mark.slow


@pytest.fixture
def worker_env(monkeypatch):
    monkeypatch.setenv("IOC_KAFKA_IDEMPOTENCE", "true")
    monkeypatch.setenv("IOC_KAFKA_REPLICATION_FACTOR", "3")


async def committed_markers(kafka, processor: str) -> dict[int, list[dict]]:
    """The commit markers of each changelog partition, as a read_committed reader (recovery) sees them."""
    topic = f"ioc.internal.{processor}.changelog"
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert tps, f"no changelog {topic}"
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: dict[int, list[dict]] = {tp.partition: [] for tp in tps}
        # up to the last stable offset as the read starts (workers still running keep writing after it)
        end = await consumer.end_offsets(tps)
        idle = 0
        async with asyncio.timeout(60):
            # (a transactional log may end in a control record no fetch returns: nothing for a while ends it too)
            while idle < 10 and [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                batch = await consumer.getmany(timeout_ms=200)
                idle = 0 if batch else idle + 1
                for tp, recs in batch.items():
                    out[tp.partition] += [
                        orjson.loads(r.value) for r in recs if r.key == MARKER_KEY and r.offset < end[tp]
                    ]
        return out
    finally:
        await consumer.stop()


def assert_one_writer_at_a_time(markers: dict[int, list[dict]]) -> None:
    for p, ms in markers.items():
        seqs = [m["seq"] for m in ms]
        assert all(a < b for a, b in pairwise(seqs)), f"partition {p} written by two workers at once: {seqs}"


async def has_written(kafka, processor: str, worker: Worker) -> bool:
    """Whether ``worker`` committed a batch to some changelog partition of ``processor``."""
    assert worker.proc is not None
    pid = f":{worker.proc.pid}:"
    return any(pid in m["writer"] for ms in (await committed_markers(kafka, processor)).values() for m in ms)


def tails(workers: list[Worker]) -> str:
    return "\n".join(
        f"--- {w.log_path.name}\n" + w.log_path.read_bytes()[-3000:].decode(errors="replace")
        for w in workers
        if w.log_path.exists()
    )


def meter_worker(kafka, name: str, log_path, pause_s: float, driver: str = "faust") -> Worker:
    return Worker(
        kafka.bootstrap_servers,
        name,
        "/ioc/meter/processor",
        pause_s=pause_s,
        max_records=100,
        log_path=log_path,
        processor="meter",
        driver=driver,
    )


async def wait_for_recovery(worker: Worker, workers: list[Worker], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while b"state recovered" not in worker.log_path.read_bytes():
        assert time.monotonic() < deadline, f"{what}:\n" + tails(workers)
        await asyncio.sleep(0.3)


async def scale_meter_kpi_out(
    kafka,
    db_settings,
    tmp_path,
    *,
    driver: str,
    district: str,
    last_joins_idle: bool = False,
    workers_at_the_end: int = 3,
    and_back: bool = False,
) -> None:
    """One worker, then one more at a time up to ``workers_at_the_end``, each joining while readings keep
    arriving (or, with ``last_joins_idle``, the last joining after every reading so far was folded, with
    readings only after its join); with ``and_back``, then stopped again (SIGTERM, newest first) one at a time
    while readings keep arriving, down to one. Exact totals against the ledger, one writer per changelog
    partition at a time, and each worker the last writer of some partition (the one left of every one)."""
    name, ledger = f"kaf-scale-{uid()}", Ledger()
    workers = [
        meter_worker(kafka, name, tmp_path / f"{name}-w{i}.log", pause_s=0.05, driver=driver)
        for i in range(workers_at_the_end)
    ]
    app = meter_app(kafka, db_settings)
    try:
        async with running_app(app) as client:
            keys = await issue_keys(app)
            meters = await register_fleet(client, keys, district, 120)
            workers[0].start()
            await ingest(client, keys, meters, range(1, 5), ledger)
            # what is left to post, a third of the fleet's readings of a quarter at a time (a round's worth)
            steps = [(q, meters[i::3]) for q in range(5, QUARTERS + 1) for i in range(3)]
            for w in workers[1:]:
                if last_joins_idle and w is workers[-1]:
                    # Every reading so far folded, then the join: no record tells the newcomer to load its
                    # partitions (the Faust driver used to load a partition only when a record of it arrived,
                    # and this worker sat unloaded for good; its partitions' ticks never ran).
                    assert await wait_for_total(kafka, district, len(ledger.accepted_set)) == len(
                        ledger.accepted_set
                    )
                    w.start()
                    await wait_for_recovery(w, workers, "the last worker never loaded its partitions")
                    break
                w.start()
                deadline = time.monotonic() + 180
                rounds_after = 4
                while rounds_after:  # keep readings flowing through the join and the partitions' move
                    if len(steps) > 36:  # (quarters 5-12 at most: the rest after the last join)
                        q, some = steps.pop(0)
                        await ingest(client, keys, some, [q], ledger)
                    await asyncio.sleep(0.5)
                    if b"state recovered" in w.log_path.read_bytes() and (
                        not and_back or await has_written(kafka, name, w)  # (it is stopped again later)
                    ):
                        rounds_after -= 1
                    assert time.monotonic() < deadline, "a new worker never took partitions over:\n" + tails(
                        workers
                    )
            for w in reversed(workers[1:]) if and_back else ():
                stay = [s for s in workers if s.alive and s is not w]
                before = sum(s.log_path.read_bytes().count(b"state recovered") for s in stay)
                w.stop()
                deadline = time.monotonic() + 180
                rounds_after = 3
                while rounds_after:  # readings go on while its partitions move to the workers that stay
                    if len(steps) > 6:  # (two quarters after the last rebalance)
                        q, some = steps.pop(0)
                        await ingest(client, keys, some, [q], ledger)
                    await asyncio.sleep(0.5)
                    if sum(s.log_path.read_bytes().count(b"state recovered") for s in stay) > before:
                        rounds_after -= 1
                    assert time.monotonic() < deadline, (
                        "nobody took a stopped worker's partitions over:\n" + (tails(workers))
                    )
            # readings after the last rebalance: every worker folds (and writes) its share
            for q, some in steps:
                await ingest(client, keys, some, [q], ledger)
        total = len(ledger.accepted_set)
        final = await wait_for_total(kafka, district, total, timeout=120)
        assert all(w.alive for w in (workers[:1] if and_back else workers)), tails(workers)
        markers = await committed_markers(kafka, name)
    finally:
        for w in workers:
            w.stop()
    assert final == total, f"{driver}: KPI total {final} != {total} accepted\n" + tails(workers)
    assert_one_writer_at_a_time(markers)
    assert len({m["writer"] for ms in markers.values() for m in ms}) == len(workers), "a worker never wrote"
    last_writers = {ms[-1]["writer"] for ms in markers.values() if ms}
    assert len(last_writers) == (1 if and_back else len(workers)), (
        "the workers at the end should each be the last writer of some partition"
    )


async def test_meter_kpi_scaled_one_two_three_workers_under_load_keeps_exact_totals_and_one_writer(
    kafka_cluster, db_settings, worker_env, tmp_path
):
    await scale_meter_kpi_out(
        kafka_cluster.kafka_settings(), db_settings, tmp_path, driver="aiokafka", district=area("TX")
    )


async def test_meter_kpi_on_the_librdkafka_driver_scaled_one_two_three_workers_keeps_exact_totals(
    kafka_cluster, db_settings, worker_env, tmp_path
):
    # The librdkafka driver (issue #42): co-partitioned by librdkafka's range assignor under Kafka's group
    # coordinator, reading read_committed behind the core's transactions.
    await scale_meter_kpi_out(
        kafka_cluster.kafka_settings(), db_settings, tmp_path, driver="librdkafka", district=area("TO")
    )


@pytest.mark.parametrize(
    ("district", "last_joins_idle", "and_back"),
    [("QO", True, False), ("SS", False, True), ("TT", True, False)],  # 2019 names: area() maps them
    ids=["third-joins-idle", "third-joins-under-load-and-back-to-one", "third-joins-idle-again"],
)
async def test_meter_kpi_on_the_faust_driver_scaled_one_two_three_workers_keeps_exact_totals(
    kafka_cluster, db_settings, worker_env, tmp_path, district, last_joins_idle, and_back
):
    # The Faust driver (production's default) on Kafka's group coordinator. The third worker joining after
    # the stream had gone quiet is what "stalled" before: it never loaded its partitions (fails on the old
    # driver within the first two rounds); repeated so that a racy rebalance path would show too.
    await scale_meter_kpi_out(
        kafka_cluster.kafka_settings(),
        db_settings,
        tmp_path,
        driver="faust",
        district=area(district),
        last_joins_idle=last_joins_idle,
        and_back=and_back,
    )


@pytest.mark.parametrize(
    ("driver", "district"),
    [("faust", "UH"), ("librdkafka", "TTi")],  # an area per driver: the cluster's topics outlive each test
)
async def test_a_worker_paused_past_its_session_timeout_is_fenced_when_it_resumes(
    kafka_cluster, db_settings, worker_env, tmp_path, driver, district
):
    kafka = kafka_cluster.kafka_settings()
    district, name, ledger = area(district), f"kaf-pause-{uid()}", Ledger()
    # slow batches: once the stream has records for it, the paused worker is inside one most of the time
    paused = meter_worker(kafka, name, tmp_path / "paused.log", pause_s=1.0, driver=driver)
    other = meter_worker(kafka, name, tmp_path / "other.log", pause_s=0.05, driver=driver)
    app = meter_app(kafka, db_settings)
    try:
        async with running_app(app) as client:
            keys = await issue_keys(app)
            meters = await register_fleet(client, keys, district, 120)
            paused.start()
            other.start()
            await ingest(client, keys, meters, range(1, 4), ledger)
            deadline = time.monotonic() + 90
            # both in the group and working (on a loaded machine one can join many seconds after the other)
            while not all(b"state recovered" in w.log_path.read_bytes() for w in (paused, other)):
                assert time.monotonic() < deadline, "the workers never both started:\n" + tails(
                    [paused, other]
                )
                await asyncio.sleep(0.2)
            await asyncio.sleep(2)  # (the rebalance that let the second one in has settled)
            # records for both, then the stop while the paused one is inside one of its (slow) batches
            await ingest(client, keys, meters, range(4, 7), ledger)
            await asyncio.sleep(1.5)
            os.kill(paused.proc.pid, signal.SIGSTOP)
            try:
                # past the 10 s session timeout: the group evicts it and the other worker takes every partition
                for q in range(7, 15):
                    await ingest(client, keys, meters, [q], ledger)
                    await asyncio.sleep(2)
            finally:
                os.kill(paused.proc.pid, signal.SIGCONT)
            for q in range(15, 19):
                await ingest(client, keys, meters, [q], ledger)
                await asyncio.sleep(1)
        total = len(ledger.accepted_set)
        final = await wait_for_total(kafka, district, total, timeout=300)  # (it folds slowly by design)
        markers = await committed_markers(kafka, name)
    finally:
        paused.stop()
        other.stop()
    assert final == total
    assert_one_writer_at_a_time(markers)
    # The resumed worker's stale batch is fenced. (Which worker the group leaves a partition with after the
    # resume is the group's choice: when it hands the partitions back to the resumed one, the other's batch in
    # flight is the stale one, fenced the same way.)
    logs = b"".join(w.log_path.read_bytes() for w in (paused, other))
    assert b"writes of partitions this worker no longer owns dropped" in logs or b"ProducerFenced" in logs, (
        "no stale write was fenced:\n" + tails([paused, other])
    )


async def test_meter_kpi_scaled_out_to_six_workers_one_per_partition_keeps_exact_totals(
    kafka_cluster, db_settings, worker_env, tmp_path
):
    # meter-kpi's six partitions, one worker each in the end (the most it can use), on the Faust driver
    await scale_meter_kpi_out(
        kafka_cluster.kafka_settings(),
        db_settings,
        tmp_path,
        driver="faust",
        district=area("DA"),
        workers_at_the_end=6,
    )
