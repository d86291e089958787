"""ProcessorCore semantics on hand-built record batches (real broker for the changelog)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from shared.contracts.cloudevents import encode
from shared.kafka import EventPublisher, ensure_topics
from shared.stream.core import SEQ_HEADER, ProcessorCore, changelog_topic
from tests.shared.stream_fixtures import AUDIT, ActionCounter

pytestmark = pytest.mark.integration


def _records(topic: str, offsets: range, tag: str, partition: int = 0) -> list[ConsumerRecord]:
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
                topic, partition, o, 0, 0, ev.key, ev.value, None, len(ev.key), len(ev.value), ev.headers
            )
        )
    return out


async def _core(kafka_settings, name: str, partitions: int = 1) -> ProcessorCore:
    proc = ActionCounter(name)
    changelog = changelog_topic(proc, partitions)
    await ensure_topics(kafka_settings, [changelog])
    core = ProcessorCore(proc, kafka_settings, EventPublisher(kafka_settings, client_id="t"), changelog)
    await core.start()
    return core


async def test_redelivered_records_after_restart_neither_double_count_nor_lower_the_floor(
    kafka_settings, topics_ready
):
    tag = f"c{uuid.uuid4().hex[:6]}"
    name = f"test-core-{tag}"
    tp = TopicPartition(AUDIT.topic, 0)
    core = await _core(kafka_settings, name)
    await core.process({tp: _records(AUDIT.topic, range(0, 100), tag)})
    await core.flush()
    await core.stop()

    # A new worker recovers the state, but its consumer resumes at an older commit (offset 40).
    core = await _core(kafka_settings, name)
    await core.process({tp: _records(AUDIT.topic, range(40, 80), tag)})  # all already reflected
    assert core.applied_offset(AUDIT.topic, 0) == 100, "the applied floor moved backwards"
    await core.process({tp: _records(AUDIT.topic, range(80, 150), tag)})  # only 100..149 are new
    await core.flush()
    assert core.partitions[0].state.get(f"count:{tag}") == 150
    await core.stop()


async def test_the_same_event_at_another_offset_counts_once(kafka_settings, topics_ready):
    tag = f"d{uuid.uuid4().hex[:6]}"
    tp = TopicPartition(AUDIT.topic, 0)
    core = await _core(kafka_settings, f"test-core-{tag}")
    first = _records(AUDIT.topic, range(0, 10), tag)
    again = [
        ConsumerRecord(r.topic, 0, r.offset + 10, 0, 0, r.key, r.value, None, 0, 0, r.headers) for r in first
    ]
    await core.process({tp: first + again})
    await core.flush()
    assert core.partitions[0].state.get(f"count:{tag}") == 10
    await core.stop()


async def test_a_processor_without_dedup_window_keeps_no_event_ids(kafka_settings, topics_ready):
    """``dedup_window = 0`` (for idempotent processors): nothing remembered, so a copy at another offset is
    applied again, which for this counting processor shows up as a double count."""
    tag = f"w{uuid.uuid4().hex[:6]}"
    proc = ActionCounter(f"test-core-{tag}")
    proc.dedup_window = 0
    changelog = changelog_topic(proc, 1)
    await ensure_topics(kafka_settings, [changelog])
    core = ProcessorCore(proc, kafka_settings, EventPublisher(kafka_settings, client_id="t"), changelog)
    await core.start()
    tp = TopicPartition(AUDIT.topic, 0)
    first = _records(AUDIT.topic, range(0, 10), tag)
    again = [
        ConsumerRecord(r.topic, 0, r.offset + 10, 0, 0, r.key, r.value, None, 0, 0, r.headers) for r in first
    ]
    await core.process({tp: first + again})
    await core.flush()
    assert core.partitions[0].state.get(f"count:{tag}") == 20
    assert not core.partitions[0].recent
    await core.stop()


async def test_the_first_batch_recovers_every_owned_partition_at_once(kafka_settings, topics_ready):
    """A worker assigned partitions 0 and 1 whose first batch holds only partition 0's records loads both
    partitions' state in that one recovery, so partition 1's first records do not wait for a recovery of their
    own; partition 1's recovered state is the one its previous owner made durable."""
    tag = f"o{uuid.uuid4().hex[:6]}"
    name = f"test-core-{tag}"
    tp0, tp1 = TopicPartition(AUDIT.topic, 0), TopicPartition(AUDIT.topic, 1)
    core = await _core(kafka_settings, name, partitions=2)
    await core.process(
        {
            tp0: _records(AUDIT.topic, range(0, 5), tag, 0),
            tp1: _records(AUDIT.topic, range(0, 7), tag + "x", 1),
        }
    )
    await core.flush()
    await core.stop()

    core = await _core(kafka_settings, name, partitions=2)
    recoveries: list[set[int]] = []
    recover = core.recover

    async def counted(partitions):
        todo = {p for p in partitions if p not in core.partitions}
        if todo:
            recoveries.append(todo)
        await recover(partitions)

    core.recover = counted
    await core.process({tp0: _records(AUDIT.topic, range(5, 8), tag, 0)}, owned={0, 1})
    assert recoveries == [{0, 1}]
    assert core.partitions[1].state.get(f"count:{tag}x") == 7
    assert core.applied_offset(AUDIT.topic, 1) == 7
    await core.process({tp1: _records(AUDIT.topic, range(7, 9), tag + "x", 1)}, owned={0, 1})
    assert recoveries == [{0, 1}], "partition 1 was recovered a second time"
    await core.flush()
    assert core.partitions[0].state.get(f"count:{tag}") == 8
    assert core.partitions[1].state.get(f"count:{tag}x") == 9
    await core.stop()


async def test_a_recovery_running_beside_a_batch_never_loads_its_partition_twice(
    kafka_settings, topics_ready, caplog
):
    """A rebalance listener or a rewind recovers outside the batch lock. When a batch arrives meanwhile, the
    partition is loaded once: a second load would replace the state the batch was applied to with the durable
    one, losing the batch and its applied offset (the aiokafka driver then never caught up: CI, 2026-11-24)."""
    import asyncio
    import logging

    tag = f"r{uuid.uuid4().hex[:6]}"
    tp = TopicPartition(AUDIT.topic, 0)
    core = await _core(kafka_settings, f"test-core-{tag}")
    with caplog.at_level(logging.INFO, logger="shared.stream.core"):
        await asyncio.gather(core.recover({0}), core.process({tp: _records(AUDIT.topic, range(0, 5), tag)}))
    assert [r.partitions for r in caplog.records if r.getMessage() == "state recovered"] == [[0]]
    assert core.partitions[0].state.get(f"count:{tag}") == 5
    assert core.applied_offset(AUDIT.topic, 0) == 5
    await core.flush()
    await core.stop()


async def test_state_keys_held_are_exported_after_emits_recovery_and_revocation(kafka_settings, topics_ready):
    """``ioc_processor_state_keys`` follows the keys in memory, so state growth can be told from other memory."""
    from prometheus_client import REGISTRY

    from shared.metrics import STATE_KEYS

    tag = f"k{uuid.uuid4().hex[:6]}"
    name = f"test-core-{tag}"

    def exported() -> float | None:
        return REGISTRY.get_sample_value("ioc_processor_state_keys", {"consumer": name})

    tp0, tp1 = TopicPartition(AUDIT.topic, 0), TopicPartition(AUDIT.topic, 1)
    core = await _core(kafka_settings, name, partitions=2)
    await core.process(
        {
            tp0: _records(AUDIT.topic, range(0, 5), tag, 0),
            tp1: _records(AUDIT.topic, range(0, 7), tag + "x", 1),
        }
    )
    await core.tick()
    held = sum(len(pr.state) for pr in core.partitions.values())
    assert held >= 2 and exported() == held
    await core.stop()
    STATE_KEYS.remove(name)  # as in a new worker process

    core = await _core(kafka_settings, name, partitions=2)
    await core.recover([0, 1])
    assert exported() == held, "recovered state is counted before the first emit"
    core.drop([1])
    assert exported() == len(core.partitions[0].state) < held
    await core.stop()


async def test_a_batch_cut_short_after_some_of_its_records_keeps_the_durable_value(
    kafka_settings, topics_ready
):
    """100 events durable, then a key record of the next batch reaches the changelog without its commit marker
    (the worker died between the record batches of one changelog write): the key recovers to its durable value,
    100, and 30 more events make 130. Recovery used to keep only the last record of each key and drop it when it
    was newer than the marker, so the key came back empty and the total read 30."""
    tag = f"k{uuid.uuid4().hex[:6]}"
    name = f"test-core-{tag}"
    tp = TopicPartition(AUDIT.topic, 0)
    core = await _core(kafka_settings, name)
    await core.process({tp: _records(AUDIT.topic, range(0, 100), tag)})
    await core.flush()
    marker_seq = core.partitions[0].seq
    await core.stop()

    producer = AIOKafkaProducer(**kafka_settings.client_kwargs())
    await producer.start()
    try:
        await producer.send_and_wait(
            core.changelog.name,
            b"77",
            key=f"count:{tag}".encode(),
            partition=0,
            headers=[(SEQ_HEADER, str(marker_seq + 1).encode())],
        )
    finally:
        await producer.stop()

    core = await _core(kafka_settings, name)
    await core.recover([0])
    assert core.partitions[0].state.get(f"count:{tag}") == 100
    await core.process({tp: _records(AUDIT.topic, range(100, 130), tag)})
    await core.flush()
    assert core.partitions[0].state.get(f"count:{tag}") == 130
    await core.stop()

    core = await _core(kafka_settings, name)  # and the cut-short record never comes back
    await core.recover([0])
    assert core.partitions[0].state.get(f"count:{tag}") == 130
    await core.stop()


async def test_a_key_only_a_cut_short_batch_wrote_is_absent_after_recovery_and_stays_so(
    kafka_settings, topics_ready
):
    tag = f"n{uuid.uuid4().hex[:6]}"
    name = f"test-core-{tag}"
    tp = TopicPartition(AUDIT.topic, 0)
    core = await _core(kafka_settings, name)
    await core.process({tp: _records(AUDIT.topic, range(0, 10), tag)})
    await core.flush()
    marker_seq = core.partitions[0].seq
    await core.stop()
    producer = AIOKafkaProducer(**kafka_settings.client_kwargs())
    await producer.start()
    try:
        for key in (f"count:{tag}", f"ghost:{tag}"):
            await producer.send_and_wait(
                core.changelog.name,
                b"5",
                key=key.encode(),
                partition=0,
                headers=[(SEQ_HEADER, str(marker_seq + 1).encode())],
            )
    finally:
        await producer.stop()
    for _ in range(2):  # the second recovery reads the first one's batch, which closed sequence numbers above
        core = await _core(kafka_settings, name)
        await core.recover([0])
        state = core.partitions[0].state
        assert f"ghost:{tag}" not in state and state.get(f"count:{tag}") == 10
        await core.tick()
        await core.stop()
