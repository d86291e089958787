"""Changelogs and partition counts on Apache Kafka.

- A processor's changelog compacted for real (short segments, a low dirty ratio: the settings
  ``shared.kafka.admin.ensure_topics`` gives compacted topics, shortened) and a fresh worker recovering from it:
  exact totals.
- Partition counts that change under a processor: it refuses to start (its state is per source partition,
  keyed with the old count) instead of splitting state silently; docs/operations.md has the re-keying procedure.
- The publisher sees a partition increase without a restart (it used to keep the first count forever, hashing
  keys with it), so records land where any Kafka client would put them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from datetime import datetime

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from shared.contracts import TOPICS
from shared.contracts.base import TopicSpec
from shared.contracts.cloudevents import EncodedEvent, ReceivedEvent
from shared.kafka import EventPublisher
from shared.kafka.admin import PartitionCountMismatch, ensure_topics
from shared.kafka.producer import partition_for
from shared.stream import StreamProcessor
from shared.stream.processor import State
from shared.stream.runtime import ProcessorRuntime
from shared.testing import read_topic, running_app
from tests.areas import area
from tests.kafka.meter_support import issue_keys, meter_app, register_fleet
from tests.kafka.test_meter_processor_faults import ingest, kpi_total
from tests.reliability.harness import Ledger
from tests.reliability.worker import PacedMeterProcessor

pytestmark = pytest.mark.slow


async def changelog_offsets(cluster, kafka, topic: str) -> tuple[int, int]:
    """(records present, offsets written) of a topic: fewer present than written means records were removed."""
    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as TP

    def written() -> int:
        consumer = Consumer({"bootstrap.servers": cluster.bootstrap_servers, "group.id": "watermarks"})
        try:
            parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
            return sum(consumer.get_watermark_offsets(TP(topic, p), timeout=10)[1] for p in parts)
        finally:
            consumer.close()

    high = await asyncio.to_thread(written)
    present = len(await read_topic(kafka, topic, raw=True, timeout=20))
    return present, high


async def test_a_fresh_worker_recovers_exact_state_from_a_really_compacted_changelog(
    kafka_cluster, db_settings
):
    # Segments roll after 200 ms and are cleanable as soon as 1% is dirty; the broker's cleaner looks every second.
    kafka = kafka_cluster.kafka_settings(
        compacted_segment_ms=200,
        compacted_min_cleanable_dirty_ratio=0.01,
        compacted_max_compaction_lag_ms=1000,
    )
    district = area("LB")
    name = f"kaf-compact-{uuid.uuid4().hex[:8]}"
    changelog = f"ioc.internal.{name}.changelog"
    ledger = Ledger()
    app = meter_app(kafka, db_settings)
    async with running_app(app) as client:
        keys = await issue_keys(app)
        meters = await register_fleet(client, keys, district, 30)
        async with ProcessorRuntime(PacedMeterProcessor(0, name), kafka).running() as rt:
            for q in range(1, 13):  # one quarter a batch: the same aggregate keys rewritten a dozen times
                await ingest(client, keys, meters, [q], ledger)
                await rt.drain(timeout=60)
                await asyncio.sleep(0.3)  # past segment.ms: the next write rolls a segment
        configs = topic_configs(kafka_cluster, changelog)
        assert configs["cleanup.policy"] == "compact" and configs["segment.ms"] == "200"
        assert configs["min.insync.replicas"] == "2"

        deadline = time.monotonic() + 60
        while True:
            present, written = await changelog_offsets(kafka_cluster, kafka, changelog)
            if present < written:
                break  # the cleaner removed superseded records
            assert time.monotonic() < deadline, f"no compaction after 60 s ({present} of {written} present)"
            await asyncio.sleep(1)

        # A fresh worker (no state in memory) recovers from what compaction left, and goes on counting.
        async with ProcessorRuntime(PacedMeterProcessor(0, name), kafka).running() as rt:
            await ingest(client, keys, meters, range(13, 17), ledger)
            await rt.drain(timeout=60)
    n = len(ledger.accepted_set)
    assert n == 16 * 30
    deadline = time.monotonic() + 30
    while (total := await kpi_total(kafka, district)) != n and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    assert total == n, f"{total} != {n} after recovery from the compacted changelog ({present}/{written})"


def topic_configs(cluster, topic: str) -> dict[str, str]:
    from confluent_kafka.admin import ConfigResource

    admin = cluster.admin()
    [future] = admin.describe_configs([ConfigResource("topic", topic)]).values()
    return {name: entry.value for name, entry in future.result(timeout=10).items()}


class CountingProcessor(StreamProcessor):
    """Counts events per key (enough to own state per partition)."""

    topics = ()

    def __init__(self, name: str, topic: str):
        self.name = name
        self.topics = (topic,)

    def apply(self, event: ReceivedEvent, state: State) -> None:
        state[event.key] = (state.get(event.key) or 0) + 1

    def emit(self, state: State, now: datetime) -> Iterable[EncodedEvent]:
        return []


async def add_partitions(kafka, topic: str, total: int) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_partitions({topic: NewPartitions(total)})
    finally:
        await admin.close()


async def test_a_processor_refuses_to_start_when_its_sources_gained_partitions(kafka_cluster, monkeypatch):
    kafka = kafka_cluster.kafka_settings()
    topic = f"ioc.test.rekey-{uuid.uuid4().hex[:8]}"
    monkeypatch.setitem(TOPICS, topic, TopicSpec(topic, 2, "id", "test", "re-keying test source"))
    name = f"kaf-rekey-{uuid.uuid4().hex[:8]}"
    async with ProcessorRuntime(CountingProcessor(name, topic), kafka).running():
        pass  # sources and changelog created with 2 partitions
    await add_partitions(kafka, topic, 4)  # an operator adds partitions to the source
    with pytest.raises(PartitionCountMismatch) as refused:
        await ProcessorRuntime(CountingProcessor(name, topic), kafka).start()
    assert f"{topic}: 4" in str(refused.value) and f"ioc.internal.{name}.changelog: 2" in str(refused.value)

    # Nor does a fresh processor start on sources whose count differs from the catalogue's (its changelog
    # would be created with the catalogue's count).
    with pytest.raises(PartitionCountMismatch):
        await ensure_topics(
            kafka,
            [
                TOPICS[topic],
                TopicSpec(f"ioc.internal.{name}-2.changelog", 2, "k", "t", "t", None, True, True),
            ],
        )


async def test_the_publisher_sees_added_partitions_without_a_restart(kafka_cluster):
    kafka = kafka_cluster.kafka_settings(metadata_max_age_ms=500)
    topic = f"ioc.test.grow-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka, [TopicSpec(topic, 2, "id", "test", "partition increase test")])
    # Keys whose partition changes from a 2-partition to a 4-partition topic.
    keys = [
        k for k in (f"key-{i}".encode() for i in range(200)) if partition_for(k, 2) != partition_for(k, 4)
    ][:20]
    publisher = EventPublisher(kafka, client_id="grow")
    try:
        await publisher.publish([EncodedEvent(topic, k, b"{}", [], "x") for k in keys[:1]])
        await add_partitions(kafka, topic, 4)
        await asyncio.sleep(1.5)  # past metadata_max_age_ms
        await publisher.publish([EncodedEvent(topic, k, b"{}", [], "x") for k in keys])
    finally:
        await publisher.stop()
    records = await read_topic(kafka, topic, raw=True, expect=len(keys) + 1, timeout=20)
    after = records  # every key once more after the increase: each must be where the 4-partition hash puts it
    placed = {(r.key, r.partition) for r in after}
    assert all((k, partition_for(k, 4)) in placed for k in keys), "keys hashed with the old partition count"


def test_compacted_topics_get_segment_and_compaction_settings():
    from shared.config import KafkaSettings

    cfg = KafkaSettings(replication_factor=3).topic_config(
        TopicSpec("ioc.internal.x.changelog", 6, "k", "x", "x", None, True, True)
    )
    assert cfg["cleanup.policy"] == "compact" and cfg["min.insync.replicas"] == "2"
    assert int(cfg["segment.ms"]) <= 3_600_000 and float(cfg["min.cleanable.dirty.ratio"]) <= 0.1
