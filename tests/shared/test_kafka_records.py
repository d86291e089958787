"""Bare fetched records (shared.kafka.records) against the real embedded broker: the same records, offsets and
positions as aiokafka's own path, for the consumers that opt in and only for them."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from shared.contracts.base import TopicSpec
from shared.contracts.cloudevents import decode_batch, encode
from shared.contracts.platform import AUDIT_TOPIC
from shared.kafka import EventPublisher, ensure_topics
from shared.kafka.records import bare_records, install, installed
from shared.stream.runtime import ProcessorRuntime
from tests.shared.stream_fixtures import AUDIT, ActionCounter, audit

pytestmark = pytest.mark.integration

RECORDS = 300


async def _topic_with_records(kafka_settings) -> str:
    """One partition holding RECORDS records in gzip batches of 50 (so a fetch can start inside a batch)."""
    name = f"ioc.test.bare-{uuid.uuid4().hex[:8]}"
    await ensure_topics(
        kafka_settings,
        [
            TopicSpec(
                name=name,
                partitions=1,
                key="n",
                owner="test",
                description="bare records test",
                retention_ms=None,
            )
        ],
    )
    producer = AIOKafkaProducer(**kafka_settings.client_kwargs(), compression_type="gzip", linger_ms=0)
    await producer.start()
    try:
        for start in range(0, RECORDS, 50):
            batch = producer.create_batch()
            for n in range(start, start + 50):
                headers = [("ce_id", str(n).encode()), ("ce_type", b"t")] if n % 3 else []
                assert (
                    batch.append(
                        key=None if n % 7 == 0 else f"k{n}".encode(),
                        value=None if n % 11 == 0 else f"v{n}".encode(),
                        timestamp=1_700_000_000_000 + n,
                        headers=headers,
                    )
                    is not None
                )
            await (await producer.send_batch(batch, name, partition=0))
    finally:
        await producer.stop()
    return name


async def _read(kafka_settings, topic: str, *, bare: bool, start: int = 0, max_records: int = 7) -> list:
    consumer = AIOKafkaConsumer(
        **kafka_settings.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        key_deserializer=bare_records if bare else None,
    )
    await consumer.start()
    tp = TopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        out: list = []
        for _ in range(500):
            got = await consumer.getmany(tp, timeout_ms=200, max_records=max_records)
            out.extend(got.get(tp, []))
            if len(out) >= RECORDS - start:
                break
        assert await consumer.position(tp) == RECORDS
    finally:
        await consumer.stop()
    return out


def _fields(records) -> list[tuple]:
    return [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in records]


async def test_bare_records_are_the_records_aiokafka_gives_and_only_opted_in_consumers_get_them(
    kafka_settings,
):
    install()
    install()  # idempotent
    assert installed()
    topic = await _topic_with_records(kafka_settings)

    ordinary = await _read(kafka_settings, topic, bare=False, max_records=RECORDS)
    assert all(type(r) is ConsumerRecord for r in ordinary)  # consumers that did not opt in are untouched
    assert [r.offset for r in ordinary] == list(range(RECORDS))

    bare = await _read(kafka_settings, topic, bare=True)  # 7 at a time: resumes mid-fetch, mid-batch
    assert bare and not any(isinstance(r, ConsumerRecord) for r in bare)
    assert _fields(bare) == _fields(ordinary)

    # A position inside a compressed batch: the batch's earlier records are skipped, as aiokafka skips them.
    from_middle = await _read(kafka_settings, topic, bare=True, start=125, max_records=RECORDS)
    assert _fields(from_middle) == _fields(ordinary[125:])


@pytest.mark.parametrize("driver", ["aiokafka", "faust"])
async def test_processor_workers_read_bare_records_and_events_keep_their_topic_and_partition(
    kafka_settings, topics_ready, driver
):
    tag = uuid.uuid4().hex[:6]
    pub = EventPublisher(kafka_settings, client_id="t")
    await pub.publish([encode(AUDIT, audit(f"b{tag}", f"x{n}"), source="/ioc/test") for n in range(200)])
    await pub.stop()
    runtime = ProcessorRuntime(ActionCounter(f"test-bare-{driver}-{tag}"), kafka_settings, driver=driver)
    record_types: set[type] = set()
    mismatched: list = []
    async with runtime.running() as rt:
        process, apply_batch = rt.core.process, rt.processor.apply_batch

        async def process_spy(records, **kwargs):
            for tp, recs in records.items():
                record_types.update(type(r) for r in recs)
                mismatched.extend(
                    (tp, ev.topic, ev.partition, ev.offset)
                    for ev in decode_batch(recs, tp)[0]
                    if (ev.topic, ev.partition) != (tp.topic, tp.partition)
                )
            return await process(records, **kwargs)

        def apply_spy(events, state):
            mismatched.extend(
                e for e in events if e.topic != AUDIT_TOPIC.name or e.partition != state.partition
            )
            apply_batch(events, state)

        rt.core.process, rt.processor.apply_batch = process_spy, apply_spy
        await rt.drain(timeout=40)
        assert rt.core.processed >= 200
    assert record_types and ConsumerRecord not in record_types
    assert not mismatched
