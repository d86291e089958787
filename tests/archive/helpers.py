"""Shared pieces of the archive tests: events to publish, reading topic ends, counting the archive."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow.dataset as ds
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from shared.config import KafkaSettings
from shared.contracts import EVENT_TYPES, TOPICS
from shared.contracts.cloudevents import EncodedEvent, encode_many

READING = EVENT_TYPES["ioc.meter.reading.recorded.v1"]
STATUS = EVENT_TYPES["ioc.dossier.status.changed.v1"]


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def readings(n: int, start: datetime, *, meters: int = 50, district: str = "HN-BD") -> list[EncodedEvent]:
    """``n`` valid meter readings, 15 minutes apart per meter, from ``start``."""
    run = uuid.uuid4().hex[:6]
    payloads = []
    for i in range(n):
        m, step = i % meters, i // meters
        payloads.append(
            {
                **READING.examples[0],
                "meter_id": f"MTR-{run}-{m:04d}",
                "interval_end": iso(start + timedelta(minutes=15 * step)),
                "value": 1000.0 + step * 0.25 + m,
                "delta": 0.25,
                "district": district,
                "commune": f"{district}-01",
                "feeder": f"F-{run}-{m % 5}",
                "flags": ["estimated"] if i % 97 == 0 else [],
            }
        )
    return encode_many(READING, payloads, source="/test/archive", time=iso(start))


async def publish(kafka: KafkaSettings, events: list[EncodedEvent]) -> None:
    from shared.kafka.producer import EventPublisher

    pub = EventPublisher(kafka, client_id="archive-test")
    await pub.start()
    try:
        for i in range(0, len(events), 5000):
            await pub.publish(events[i : i + 5000])
    finally:
        await pub.stop()


async def topic_ends(kafka: KafkaSettings, topics: list[str]) -> dict[TopicPartition, int]:
    """Each partition's end offset, from fetch high watermarks (the embedded broker's ListOffsets can be
    wrong, see ../shared/README.md)."""
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False, fetch_max_wait_ms=50)
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in range(kafka.partitions_override or TOPICS[t].partitions)
        ]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        for tp in tps:  # the high watermark of a fetch from the last listed batch is the real end
            consumer.seek(tp, max(0, ends[tp] - 1))
        remaining = set(tps)
        for _ in range(50):
            await consumer.getmany(*remaining, timeout_ms=100, max_records=10_000)
            for tp in list(remaining):
                hw = consumer.highwater(tp)
                if hw is not None:
                    ends[tp] = hw
                    remaining.discard(tp)
            if not remaining:
                break
        return ends
    finally:
        await consumer.stop()


async def replay_marked_offsets(kafka: KafkaSettings, topic: str) -> set[tuple[int, int]]:
    """(partition, offset) of records a replay wrote (header ``ioc_archive_replay``): not archived again."""
    from shared.testing import read_topic

    records = await read_topic(kafka, topic, raw=True)
    return {
        (r.partition, r.offset) for r in records if any(k == "ioc_archive_replay" for k, _ in r.headers or ())
    }


def archive_counts(root, topic: str, epoch: str) -> Counter:
    """Rows per (partition, offset) of ``topic`` in one broker epoch, read with pyarrow alone (no IOC code)."""
    dataset = ds.dataset(f"{root}/topic={topic}", format="parquet", partitioning="hive")
    table = dataset.to_table(
        columns=["kafka_partition", "kafka_offset"], filter=ds.field("broker_epoch") == epoch
    )
    return Counter(zip(table["kafka_partition"].to_pylist(), table["kafka_offset"].to_pylist(), strict=True))


async def raw_producer(kafka: KafkaSettings) -> AIOKafkaProducer:
    p = AIOKafkaProducer(**kafka.client_kwargs(), acks="all")
    await p.start()
    return p


def as_records(events: list[EncodedEvent], offsets: dict | None = None) -> list[tuple]:
    """Encoded events as the Kafka records a broker would have given the archiver (keyed partitions, offsets
    counting up per partition), for archiving without a broker."""
    from shared.kafka.producer import partition_for

    offsets = {} if offsets is None else offsets
    out = []
    for ev in events:
        p = partition_for(ev.key, TOPICS[ev.topic].partitions)
        o = offsets.get((ev.topic, p), 0)
        offsets[(ev.topic, p)] = o + 1
        out.append((ev.topic, p, o, ev.key, ev.value, 1_700_000_000_000, ev.headers))
    return out
