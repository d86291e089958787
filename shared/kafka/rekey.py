"""Re-keying a processor's sources after a partition increase (docs/operations.md, "Adding partitions").

After partitions are added to a topic, keys hash with the new count: a key's new records land in another
partition than its earlier ones, and a processor keeps state per partition, so rebuilding its state from the
sources' history as they are would still split that key between two partitions (its day's distinct meters
counted twice, a duplicate delivery of an earlier event not recognised, a registry entry in one partition and
the readings it describes in another).

:func:`rekey` moves each key's history to where its key hashes now, without rewriting the topics: for every
source topic it notes each partition's end (the *boundary*), copies every record below it whose key hashes to
another partition with the topic's current count into that partition (same key, value, headers and timestamp:
a signed event's signature still holds), and records the boundaries on ``ioc.internal.<processor>.rekey``. The stream core reads
them at start and skips records below a boundary that sit in the wrong partition: each is folded once, as its
copy, in its key's partition. Then it drops the processor's state (deletes its changelog) and rewinds its
consumer group to the earliest retained offsets, so that the next worker rebuilds every partition from the earliest retained offset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.config import KafkaSettings
from shared.contracts import TopicSpec
from shared.kafka.producer import partition_for

log = logging.getLogger(__name__)

#: (topic, partition) → (boundary offset, the topic's partition count when it was re-keyed)
Boundaries = dict[tuple[str, int], tuple[int, int]]


class RekeyRefused(RuntimeError):
    """The processor's consumer group still has members, or its sources disagree on partition counts."""


def boundaries_topic(processor: str) -> str:
    return f"ioc.internal.{processor}.rekey"


def boundaries_spec(processor: str) -> TopicSpec:
    return TopicSpec(
        boundaries_topic(processor),
        1,
        "topic",
        processor,
        "where each source partition was re-keyed (shared/kafka/rekey.py)",
        None,
        True,
        True,
    )


def misplaced(key: bytes | None, partition: int, offset: int, boundary: tuple[int, int] | None) -> bool:
    """A record below its partition's re-key boundary whose key hashes elsewhere: its copy is the one folded."""
    return (
        boundary is not None
        and offset < boundary[0]
        and key is not None
        and partition_for(key, boundary[1]) != partition
    )


async def read_boundaries(kafka: KafkaSettings, processor: str) -> Boundaries:
    """The re-key boundaries of ``processor``'s sources (empty when it was never re-keyed)."""
    topic = boundaries_topic(processor)
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return {}
        return _latest_boundaries(await _read_all(consumer, [TopicPartition(topic, 0)]))  # one partition
    finally:
        await consumer.stop()


def _latest_boundaries(records: Iterable) -> Boundaries:
    out: Boundaries = {}
    latest: dict[bytes, dict | None] = {}
    for r in records:
        if r.key is not None:
            latest[r.key] = orjson.loads(r.value) if r.value is not None else None
    for key, value in latest.items():
        if value:
            for p, offset in value["boundaries"].items():
                out[(key.decode(), int(p))] = (int(offset), int(value["partitions"]))
    return out


async def _read_all(consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]) -> list:
    """Every record of ``tps`` below their end offsets (read_committed: the last stable offsets)."""
    if not tps:
        return []
    consumer.assign(list(tps))
    await consumer.seek_to_beginning(*tps)
    end = await consumer.end_offsets(list(tps))
    out: list = []
    idle = 0
    # A transactional log may end in a control record no fetch returns: a run of empty fetches ends it too.
    while idle < 10 and [tp for tp in tps if await consumer.position(tp) < end[tp]]:
        batch = await consumer.getmany(timeout_ms=300, max_records=10000)
        idle = 0 if batch else idle + 1
        for tp, records in batch.items():
            out.extend(r for r in records if r.offset < end[tp])
    return out


async def rekey(
    kafka: KafkaSettings, processor: str, topics: Sequence[str], *, settle_s: float | None = None
) -> dict[str, int]:
    """Re-key ``processor``'s source ``topics`` after a partition increase; the records copied per topic.

    Refuses (:class:`RekeyRefused`) while the processor's consumer group has members (pause it first) or when
    its sources differ in partition count (raise them together). Waits ``settle_s`` first (default: the
    metadata max age, plus a second) so that every publisher hashes with the new count before the boundaries
    are taken: a record a stale publisher put in the old place after them would be folded there.
    """
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=30000)
    await admin.start()
    try:
        await _refuse_with_members(admin, processor)
        described = await admin.describe_topics(list(topics))
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        if len(set(counts.values())) != 1 or set(counts) != set(topics):
            raise RekeyRefused(f"{processor}: source partition counts differ: {counts} (raise them together)")
        await asyncio.sleep(kafka.metadata_max_age_ms / 1000 + 1 if settle_s is None else settle_s)
        copied = await _copy_misplaced(kafka, processor, topics, counts)
        changelog = f"ioc.internal.{processor}.changelog"
        if changelog in await admin.list_topics():
            await admin.delete_topics([changelog])
            await _until_gone(admin, changelog)
        await _rewind_group(kafka, processor, counts)
    finally:
        await admin.close()
    log.info("sources re-keyed", extra={"processor": processor, "copied": copied})
    return copied


async def _refuse_with_members(admin: AIOKafkaAdminClient, group: str) -> None:
    [described] = await admin.describe_consumer_groups([group])
    # aiokafka answers DescribeGroupsResponse objects: groups = [(error, group, state, protocol_type, ...)]
    for g in described.groups:
        state, members = g[2], g[5]
        if members or state not in ("Empty", "Dead", ""):
            raise RekeyRefused(
                f"consumer group {group} is {state} with {len(members)} member(s): stop its workers first"
            )


async def _copy_misplaced(
    kafka: KafkaSettings, processor: str, topics: Sequence[str], counts: dict[str, int]
) -> dict[str, int]:
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(
        **kafka.client_kwargs(),
        acks="all",
        enable_idempotence=kafka.enable_idempotence,
        compression_type=kafka.producer_compression,
        client_id=f"{processor}-rekey",
    )
    await consumer.start()
    await producer.start()
    copied: dict[str, int] = {}
    try:
        from shared.kafka.admin import ensure_topics

        await ensure_topics(kafka, [boundaries_spec(processor)])
        for topic in topics:
            n = counts[topic]
            tps = [TopicPartition(topic, p) for p in range(n)]
            ends = await consumer.end_offsets(tps)
            records = await _read_all(consumer, tps)
            sends = []
            for r in records:
                if r.key is None or r.offset >= ends[TopicPartition(topic, r.partition)]:
                    continue
                target = partition_for(r.key, n)
                if target != r.partition:
                    sends.append(
                        await producer.send(
                            topic,
                            r.value,
                            key=r.key,
                            partition=target,
                            headers=list(r.headers),
                            timestamp_ms=r.timestamp,
                        )
                    )
            await asyncio.gather(*sends)
            copied[topic] = len(sends)
            # Recorded once the copies are acknowledged: a crash before leaves the old boundaries, and a rerun
            # copies again from scratch (the new state is only built after this command succeeds).
            value = {"partitions": n, "boundaries": {str(tp.partition): ends[tp] for tp in tps}}
            await producer.send_and_wait(boundaries_topic(processor), orjson.dumps(value), key=topic.encode())
    finally:
        await producer.stop()
        await consumer.stop()
    return copied


async def _until_gone(admin: AIOKafkaAdminClient, topic: str, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while topic in await admin.list_topics():
            await asyncio.sleep(0.5)


async def _rewind_group(kafka: KafkaSettings, group: str, counts: dict[str, int]) -> None:
    """Commit the earliest retained offset of every source partition for the (empty) group, as
    ``kafka-consumer-groups.sh --reset-offsets --to-earliest`` does: its next worker reads everything again."""
    consumer = AIOKafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, n in counts.items() for p in range(n)]
        consumer.assign(tps)
        earliest = await consumer.beginning_offsets(tps)
        await consumer.commit(earliest)
    finally:
        await consumer.stop()
