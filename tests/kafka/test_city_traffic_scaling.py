"""The multi-topic processors ``city-kpi`` (four domain KPI topics) and ``traffic-signals`` (hi-res events and
the registry) scaled 1 → 2 → 3 worker processes and back 3 → 2 → 1 on Apache Kafka while inputs keep arriving,
on the Faust driver (production's default) with transactions.

Each worker joins, or is stopped (SIGTERM, as a scale-in does), while rounds of inputs go on, until the workers
that stay have recovered the partitions that moved. Then the outputs, read as ``read_committed`` consumers read
them, must equal the ledger of what was published: for the city, each district's merged numerator is the sum of
the last partial of every source partition; for traffic, each intersection's 15-minute bin counts exactly the
events sent for it (fewer: lost; more: folded twice). Every state partition's committed changelog carries
strictly increasing batch numbers (two writers at once cannot), all three workers wrote, and the one left at the
end is the last writer of every partition. The assignment check on the embedded broker is
``tests/shared/test_stream_assignor.py``; meter-kpi and kiosk-kpi are ``test_stream_scaling.py`` and
``test_kiosk_scaling.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from shared.contracts import TOPICS
from shared.contracts.common import kpi_key
from shared.kafka import EventPublisher
from shared.kafka.admin import ensure_topics
from shared.kafka.producer import partition_for
from tests.kafka.city_traffic_support import (
    CityLedger,
    TrafficLedger,
    city_totals,
    close_traffic_bins,
    publish_city_round,
    publish_registry,
    publish_traffic_bin,
    traffic_measures,
    wait_for,
    worker,
)
from tests.kafka.test_stream_scaling import assert_one_writer_at_a_time, committed_markers, has_written, tails
from tests.reliability.harness import Worker, uid

pytestmark = pytest.mark.slow

PARTITIONS = 3  # of every source topic of both processors


@pytest.fixture
def worker_env(monkeypatch):
    monkeypatch.setenv("IOC_KAFKA_IDEMPOTENCE", "true")
    monkeypatch.setenv("IOC_KAFKA_REPLICATION_FACTOR", "3")


def recovered(w: Worker) -> int:
    return w.log_path.read_bytes().count(b"state recovered") if w.log_path.exists() else 0


async def load_until(
    workers: list[Worker],
    publish_round: Callable[[], Awaitable[None]],
    taken_over: Callable[[], Awaitable[bool]],
    what: str,
    rounds_after: int = 3,
) -> None:
    """Publish a round every 0.5 s until ``taken_over()``, then ``rounds_after`` more (work on the moved
    partitions under load)."""
    deadline = time.monotonic() + 120
    after = rounds_after
    while after:
        await publish_round()
        await asyncio.sleep(0.5)
        if await taken_over():
            after -= 1
        assert time.monotonic() < deadline, f"{what}:\n" + tails(workers)


async def scale_out_and_back(
    kafka, tmp_path, processor: str, publish_round: Callable[[], Awaitable[None]]
) -> tuple[str, list[Worker]]:
    """1 → 2 → 3 → 2 → 1 workers of a processor of the test's own, a round of inputs every 0.5 s throughout;
    returns its name and the workers (all stopped but the first, which the caller stops)."""
    name = f"kaf-{processor}-scale-{uid()}"
    workers = [worker(kafka, processor, name, tmp_path / f"{name}-w{i}.log") for i in range(3)]

    async def working(w: Worker) -> bool:  # it recovered partitions and committed a batch of them
        return recovered(w) > 0 and await has_written(kafka, name, w)

    for w in workers:
        w.start()
        await load_until(workers, publish_round, lambda w=w: working(w), f"{w.log_path.name} never took over")
    for w in reversed(workers[1:]):
        stay = [s for s in workers if s.alive and s is not w]
        before = sum(recovered(s) for s in stay)
        w.stop()
        assert w.proc is not None and w.proc.returncode == 0, (
            f"{w.log_path.name} did not stop cleanly\n" + tails(workers)
        )
        await load_until(
            workers,
            publish_round,
            lambda stay=stay, before=before: _true(sum(recovered(s) for s in stay) > before),
            f"nobody took {w.log_path.name}'s partitions over",
        )
    await publish_round()  # the last, to the one worker left
    return name, workers


async def _true(value: bool) -> bool:
    return value


def spread_over_partitions(keys: Callable[[int], str], per_partition: int) -> list[int]:
    """Indexes ``i`` whose ``keys(i)`` fill every source partition with ``per_partition`` each."""
    chosen: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
    i = 0
    while any(len(v) < per_partition for v in chosen.values()):
        p = partition_for(keys(i).encode(), PARTITIONS)
        if len(chosen[p]) < per_partition:
            chosen[p].append(i)
        i += 1
    return sorted(i for v in chosen.values() for i in v)


async def check_writers(kafka, name: str, workers: list[Worker]) -> None:
    markers = await committed_markers(kafka, name)
    assert sorted(markers) == list(range(PARTITIONS))
    assert_one_writer_at_a_time(markers)
    writers = {m["writer"] for ms in markers.values() for m in ms}
    assert len(writers) == len(workers), f"every worker should have written: {writers}"
    for w in workers:  # every worker held whole partitions (each topic's partition p with the others)
        assert w.log_path is not None and b"does not own whole refused" not in w.log_path.read_bytes(), tails(
            [w]
        )
    last_writers = {ms[-1]["writer"] for ms in markers.values() if ms}
    assert len(last_writers) == 1, (
        f"the one worker left should be the last writer of every partition: {last_writers}"
    )


async def test_city_kpi_scaled_out_to_three_workers_and_back_keeps_exact_merged_totals(
    kafka_cluster, worker_env, tmp_path
):
    kafka = kafka_cluster.kafka_settings()
    await ensure_topics(kafka, list(TOPICS.values()))  # sources and outputs, as the services create them
    ledger = CityLedger()
    districts = [
        f"SC{i}" for i in spread_over_partitions(lambda i: kpi_key(ledger.kpi, "district", f"SC{i}"), 3)
    ]
    publisher = EventPublisher(kafka, client_id="city-partials")
    workers: list[Worker] = []
    try:
        name, workers = await scale_out_and_back(
            kafka, tmp_path, "city", lambda: publish_city_round(publisher, ledger, districts)
        )
        expected = ledger.expected()
        final = await wait_for(lambda: city_totals(kafka, ledger), expected)
        assert workers[0].alive, tails(workers)
        await check_writers(kafka, name, workers)
    finally:
        await publisher.stop()
        for w in workers:
            w.stop()
    assert final == expected, f"{ledger.rounds} rounds of {ledger.sent} partials\n" + tails(workers)


async def test_traffic_signals_scaled_out_to_three_workers_and_back_keeps_exact_bin_counts(
    kafka_cluster, worker_env, tmp_path
):
    kafka = kafka_cluster.kafka_settings()
    await ensure_topics(kafka, list(TOPICS.values()))
    ledger = TrafficLedger()
    everyone = ledger.controllers(64)
    controllers = [everyone[i] for i in spread_over_partitions(lambda i: everyone[i][0], 2)]
    district = "TS-" + ledger.prefix[:6]
    publisher = EventPublisher(kafka, client_id="traffic-hires")
    workers: list[Worker] = []
    try:
        await publish_registry(publisher, controllers, district)
        name, workers = await scale_out_and_back(
            kafka, tmp_path, "traffic", lambda: publish_traffic_bin(publisher, ledger, controllers, district)
        )
        closed = await close_traffic_bins(publisher, ledger, controllers, district)
        expected = ledger.expected(closed)
        final = await wait_for(lambda: traffic_measures(kafka, ledger), expected)
        assert workers[0].alive, tails(workers)
        await check_writers(kafka, name, workers)
    finally:
        await publisher.stop()
        for w in workers:
            w.stop()
    assert len(expected) == len(controllers) * closed
    assert final == expected, f"{closed} bins of {len(controllers)} controllers\n" + tails(workers)
