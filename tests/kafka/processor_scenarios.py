"""Fault scenarios of docs/guarantees.md (kill -9 mid-batch, slow consumer, duplicate deliveries) for any
processor, on the Apache Kafka cluster, reconciled against a ledger.

A :class:`Workload` is what a scenario needs of one processor: the source events it publishes (the *ledger*:
every event whose publish the brokers acknowledged, ``acks=all``), what the processor's outputs must then say
(``expected``, worked out from the ledger in the test module), and how to read what they say (``observe``, from
the output topics read ``read_committed``, as any subscriber of a transactional producer's topics should: an
aborted batch of a killed worker is never seen). ``observe`` counts *records*, so an output published twice
shows up. The processor is the real one (``tests/reliability/worker.py`` builds it by ``kind``), under a name of
its own (consumer group, changelog, transactional ids), so runs never share state; its outputs go to the shared
topics, so every workload uses entity ids (or areas, windows) of its own and filters on them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.config import KafkaSettings
from shared.contracts.cloudevents import EncodedEvent, EventDecodeError, ReceivedEvent, decode
from shared.kafka.aiokafka_adapter import refresh_metadata
from shared.kafka.producer import EventPublisher
from shared.stream.runtime import ProcessorRuntime
from tests.reliability.harness import Worker, uid
from tests.reliability.worker import OTHER_PROCESSORS, paced


@dataclass
class Workload:
    kind: str  # a processor of tests/reliability/worker.py (OTHER_PROCESSORS)
    events: list[EncodedEvent]  # published in this order, in chunks of ``chunk``
    expected: Any  # what ``observe`` must return once every event of the ledger is folded
    observe: Callable[[KafkaSettings], Awaitable[Any]]
    progress: Callable[[Any], float]  # how far an observation is (kills wait for it to grow)
    source: str  # the CloudEvents source of ``events``: workers pace only batches holding some of them
    chunk: int = 200


async def read_committed(
    kafka: KafkaSettings, topic: str, where: Callable[[ReceivedEvent], bool], timeout: float = 30.0
) -> list[ReceivedEvent]:
    """The events of ``topic`` matching ``where``, from its beginning to its last stable offset, as a
    ``read_committed`` subscriber sees them (records of aborted transactions skipped)."""
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        while not parts:
            await refresh_metadata(consumer)
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await asyncio.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: list[ReceivedEvent] = []
        async with asyncio.timeout(timeout):
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=20000)
                for recs in batch.values():
                    for r in recs:
                        try:
                            ev = decode(r)
                        except EventDecodeError:
                            continue
                        if where(ev):
                            found.append(ev)
                ends = {tp: consumer.last_stable_offset(tp) for tp in tps}
                if all(end is not None and end >= 0 for end in ends.values()):
                    # the position passes transaction markers and aborted records; the LSO is the end
                    if all([await consumer.position(tp) >= end for tp, end in ends.items()]):
                        return found
    finally:
        await consumer.stop()


async def publish(
    kafka: KafkaSettings, events: Sequence[EncodedEvent], chunk: int = 200
) -> list[EncodedEvent]:
    """Publish ``events`` in order (chunk by chunk, each acknowledged by every in-sync replica); the ledger."""
    publisher = EventPublisher(kafka, client_id=f"ledger-{uid()}")
    ledger: list[EncodedEvent] = []
    try:
        for i in range(0, len(events), chunk):
            part = list(events[i : i + chunk])
            await publisher.publish(part)
            ledger.extend(part)
    finally:
        await publisher.stop()
    return ledger


async def resend(kafka: KafkaSettings, events: Sequence[EncodedEvent]) -> None:
    """The same records again (same CloudEvents ids, at new offsets), from another producer entirely (a replay
    tool, a mirrored cluster, a producer retry)."""
    await publish(kafka, events)


async def wait_for(
    kafka: KafkaSettings, workload: Workload, *, timeout: float = 90.0, settle_s: float = 1.5
) -> Any:
    """Observe until the outputs say what the ledger expects and still do ``settle_s`` later (a later output
    that overshoots fails the test); returns the last observation."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = await workload.observe(kafka)
        if seen == workload.expected:
            await asyncio.sleep(settle_s)
            return await workload.observe(kafka)
        await asyncio.sleep(0.5)
    return seen


async def wait_progress(kafka: KafkaSettings, workload: Workload, *, above: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = workload.progress(await workload.observe(kafka))
        if done > above:
            return done
        await asyncio.sleep(0.2)
    raise AssertionError(f"no progress above {above} within {timeout}s")


def build(workload: Workload, name: str, pause_s: float = 0.0):
    processor = paced(OTHER_PROCESSORS[workload.kind](), pause_s, workload.source)
    processor.name = name
    return processor


# Scenarios --------------------------------------------------------------------------------------------------
async def killed_mid_batch_twice(
    kafka: KafkaSettings, workload: Workload, tmp_path: Path, *, pause_s: float = 0.5, max_records: int = 50
) -> None:
    """The whole ledger published, then a paced worker (a subprocess) is killed with SIGKILL twice once it made
    progress of its own, each time restarted; the outputs must then say exactly what the ledger says."""
    ledger = await publish(kafka, workload.events, workload.chunk)
    assert len(ledger) == len(workload.events)
    name = f"kaf-{workload.kind}-kill-{uid()}"
    log = tmp_path / "worker.log"

    def worker() -> Worker:
        return Worker(
            kafka.bootstrap_servers,
            name,
            workload.source,
            pause_s=pause_s,
            max_records=max_records,
            log_path=log,
            processor=workload.kind,
        ).start()

    total = workload.progress(workload.expected)
    seen_at_kill: list[float] = []
    w = worker()
    try:
        for _ in range(2):
            progress = await wait_progress(kafka, workload, above=max([0.0, *seen_at_kill]), timeout=90)
            w.kill9()
            seen_at_kill.append(progress)
            assert progress < total, "the stream finished before the kill; the scenario did not happen"
            w = worker()
        final = await wait_for(kafka, workload, timeout=120)
    finally:
        w.stop()
    assert final == workload.expected, (
        f"outputs {final!r} != ledger's {workload.expected!r} (progress at the kills: {seen_at_kill})\n"
        + (log.read_bytes()[-3000:].decode(errors="replace") if log.exists() else "")
    )


async def slow_consumer(
    kafka: KafkaSettings, workload: Workload, *, pause_s: float = 0.2, max_records: int = 50
) -> None:
    """A consumer stalling after every batch while the ledger is published: every publish is acknowledged
    while it lags (ingest is not slowed by it), then it catches up and the outputs say exactly the ledger."""
    processor = build(workload, f"kaf-{workload.kind}-slow-{uid()}", pause_s)
    async with ProcessorRuntime(processor, kafka, max_records=max_records).running() as rt:
        ledger = await publish(kafka, workload.events, workload.chunk)
        assert len(ledger) == len(workload.events)
        lagging = rt.core.processed < len(ledger)
        await rt.drain(timeout=120)
    assert lagging, "the consumer kept up; the scenario did not happen"
    assert await wait_for(kafka, workload, timeout=30) == workload.expected


async def duplicate_deliveries(kafka: KafkaSettings, workload: Workload) -> None:
    """Every event of the ledger delivered twice before the first worker runs, then some once more to a
    restarted worker that recovers its state (and its memory of event ids) from its changelog: the outputs say
    exactly the ledger, nothing counted or published twice."""
    ledger = await publish(kafka, workload.events, workload.chunk)
    await resend(kafka, ledger)
    name = f"kaf-{workload.kind}-dup-{uid()}"
    async with ProcessorRuntime(build(workload, name), kafka).running() as rt:
        await rt.drain(timeout=60)
    assert await wait_for(kafka, workload, timeout=30) == workload.expected
    await resend(kafka, ledger[: len(ledger) // 3])
    async with ProcessorRuntime(build(workload, name), kafka).running() as rt:
        await rt.drain(timeout=60)
    assert await wait_for(kafka, workload, timeout=30) == workload.expected


@pytest.fixture
def kafka_workers(monkeypatch):
    """Worker subprocesses read their other Kafka settings from the environment: production's."""
    monkeypatch.setenv("IOC_KAFKA_IDEMPOTENCE", "true")
    monkeypatch.setenv("IOC_KAFKA_REPLICATION_FACTOR", "3")
