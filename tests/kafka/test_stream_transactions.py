"""The stream core's transactional mode on Apache Kafka: each batch's outputs, changelog records and source
offsets commit as one transaction per state partition; the next owner of a partition fences the old one.

The embedded broker refuses InitProducerId, so there the core keeps its commit markers (``auto`` mode picks
transactions here and markers there; ``tests/shared/test_stream_core.py`` covers the markers).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from shared.contracts.cloudevents import encode
from shared.kafka import EventPublisher, ensure_topics
from shared.metrics import STREAM_WRITES_FENCED
from shared.stream.core import SEQ_HEADER, ProcessorCore, changelog_topic
from shared.stream.runtime import ProcessorRuntime
from tests.shared.stream_fixtures import AUDIT, KPI_TYPE, ActionCounter

pytestmark = pytest.mark.slow


def _records(offsets: range, tag: str, partition: int = 0) -> list[ConsumerRecord]:
    out = []
    for o in offsets:
        ev = encode(
            AUDIT,
            {
                "principal": "p",
                "action": tag,
                "target": "t",
                "at": datetime.now(UTC).isoformat(),
                "service": "s",
            },
            source="/ioc/test",
            id=f"{tag}-{o}",
        )
        out.append(
            ConsumerRecord(
                AUDIT.topic,
                partition,
                o,
                0,
                0,
                ev.key,
                ev.value,
                None,
                len(ev.key),
                len(ev.value),
                ev.headers,
            )
        )
    return out


async def _core(kafka, name: str, durability: str = "auto") -> ProcessorCore:
    proc = ActionCounter(name)
    changelog = changelog_topic(proc, 1)
    await ensure_topics(kafka, [changelog])
    core = ProcessorCore(proc, kafka, EventPublisher(kafka, client_id="t"), changelog, durability=durability)
    await core.start()
    return core


@pytest.fixture
async def kafka(apache_kafka_settings):
    from shared.contracts import TOPICS

    await ensure_topics(apache_kafka_settings, [TOPICS[AUDIT.topic], TOPICS[KPI_TYPE.topic]])
    return apache_kafka_settings


async def test_auto_mode_uses_transactions_and_recovers_what_they_committed(kafka):
    tag = f"t{uuid.uuid4().hex[:6]}"
    name = f"txn-core-{tag}"
    tp = TopicPartition(AUDIT.topic, 0)
    core = await _core(kafka, name)
    try:
        assert core.transactional, "Apache Kafka grants transactional producers: auto mode must use them"
        await core.process({tp: _records(range(0, 100), tag)}, owned={0})
        await core.tick()
        # committed with the transaction: the marker's source offset is what the drivers may commit to the group
        assert core.durable_offsets[(AUDIT.topic, 0)] == 100
    finally:
        await core.stop()
    core = await _core(kafka, name)
    try:
        await core.recover([0])
        assert core.partitions[0].state.get(f"count:{tag}") == 100
        assert core.applied_offset(AUDIT.topic, 0) == 100
    finally:
        await core.stop()


async def test_an_open_transaction_of_a_dead_owner_is_aborted_and_never_recovered(kafka):
    """The old owner died inside a batch's transaction (a key record written, no commit): the next owner's
    claim aborts it, and read_committed recovery gives the durable value; 30 more events make 130."""
    tag = f"a{uuid.uuid4().hex[:6]}"
    name = f"txn-core-{tag}"
    tp = TopicPartition(AUDIT.topic, 0)
    core = await _core(kafka, name)
    await core.process({tp: _records(range(0, 100), tag)}, owned={0})
    await core.tick()
    seq = core.partitions[0].seq
    txn_id = core.transactional_id(0)
    await core.stop()

    dead = AIOKafkaProducer(**kafka.client_kwargs(), transactional_id=txn_id, enable_idempotence=True)
    await dead.start()
    await dead.begin_transaction()
    await dead.send_and_wait(
        core.changelog.name,
        b"7",
        key=f"count:{tag}".encode(),
        partition=0,
        headers=[(SEQ_HEADER, str(seq + 1).encode())],
    )
    # no commit, no abort: the process "dies" (its producer is simply abandoned)

    core = await _core(kafka, name)
    try:
        await core.recover([0])
        assert core.partitions[0].state.get(f"count:{tag}") == 100
        await core.process({tp: _records(range(100, 130), tag)}, owned={0})
        await core.tick()
        assert core.partitions[0].state.get(f"count:{tag}") == 130
    finally:
        await core.stop()
        try:
            await dead.stop()
        except Exception:
            pass


async def test_a_zombie_owner_is_fenced_by_the_next_owner_and_writes_nothing(kafka):
    tag = f"z{uuid.uuid4().hex[:6]}"
    name = f"txn-core-{tag}"
    tp = TopicPartition(AUDIT.topic, 0)
    zombie = await _core(kafka, name)
    owner = None
    try:
        await zombie.process({tp: _records(range(0, 50), tag)}, owned={0})
        await zombie.tick()
        # the partition moves: the new owner claims it (initialising the same transactional id)
        owner = await _core(kafka, name)
        await owner.recover([0])
        assert owner.partitions[0].state.get(f"count:{tag}") == 50
        fenced_before = STREAM_WRITES_FENCED.labels(name)._value.get()
        # the zombie, unaware, goes on with the next records: its transaction is refused, its state dropped
        await zombie.process({tp: _records(range(50, 80), tag)}, owned={0})
        assert 0 not in zombie.partitions and 0 in zombie.fenced
        assert STREAM_WRITES_FENCED.labels(name)._value.get() == fenced_before + 1
        await owner.process({tp: _records(range(50, 80), tag)}, owned={0})
        await owner.tick()
    finally:
        await zombie.stop()
        if owner is not None:
            await owner.stop()
    check = await _core(kafka, name)
    try:
        await check.recover([0])
        assert check.partitions[0].state.get(f"count:{tag}") == 80
    finally:
        await check.stop()


@pytest.mark.parametrize("driver", ["faust", "aiokafka"])
async def test_a_processor_counts_exactly_once_with_transactions_across_a_restart(kafka, driver):
    from tests.shared.stream_fixtures import audit

    tag = f"r{uuid.uuid4().hex[:6]}"
    name = f"txn-rt-{tag}"
    publisher = EventPublisher(kafka, client_id="t")
    await publisher.start()
    try:
        events = [encode(AUDIT, audit(tag, f"x{i}"), source="/ioc/test") for i in range(300)]
        await publisher.publish(events[:200])
        rt = ProcessorRuntime(ActionCounter(name), kafka, driver=driver, durability="transactions")
        async with rt.running():
            await rt.drain(timeout=90)
            assert sum(pr.state.get(f"count:{tag}", 0) for pr in rt.core.partitions.values()) == 200
        await publisher.publish(events[200:])
        rt = ProcessorRuntime(ActionCounter(name), kafka, driver=driver, durability="transactions")
        async with rt.running():
            await rt.drain(timeout=90)
            assert rt.core.transactional
            assert sum(pr.state.get(f"count:{tag}", 0) for pr in rt.core.partitions.values()) == 300
    finally:
        await publisher.stop()
