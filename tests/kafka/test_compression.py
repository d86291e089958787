"""Every IOC producer compresses (KafkaSettings.compression_type, default zstd): meter readings published by the
meter service's encoder through EventPublisher take a fraction of the disk they take uncompressed, on the real
log segments of an Apache Kafka node. (The figures per codec: bench/producer_compression.py.)"""

from __future__ import annotations

import asyncio
import uuid

# The bench's readings: what the meter service publishes, for 20,000 meters.
from bench.producer_compression import readings, retopic, topic_bytes
from shared.contracts.base import TopicSpec
from shared.kafka import EventPublisher
from shared.kafka.admin import ensure_topics


async def publish_to_fresh_topic(kafka_cluster, events, **settings) -> str:
    kafka = kafka_cluster.kafka_settings(**settings)
    topic = f"ioc.test.compression-{uuid.uuid4().hex[:8]}"
    await ensure_topics(
        kafka, [TopicSpec(topic, 3, "meter_id", "test", "compression test", retention_ms=None)]
    )
    publisher = EventPublisher(kafka, client_id="compression")
    try:
        for i in range(0, len(events), 1000):
            await publisher.publish([retopic(e, topic) for e in events[i : i + 1000]])
    finally:
        await publisher.stop()
    return topic


async def test_the_default_producer_compresses_meter_readings(kafka_cluster):
    events = readings(5000)
    default = await publish_to_fresh_topic(kafka_cluster, events)
    plain = await publish_to_fresh_topic(kafka_cluster, events, compression_type="none")
    await asyncio.sleep(0.5)
    data_dir = kafka_cluster.nodes[1].data_dir
    compressed, uncompressed = topic_bytes(data_dir, default), topic_bytes(data_dir, plain)
    assert uncompressed > 5000 * 400  # ~509 bytes of key, value and headers per reading
    assert compressed * 4 < uncompressed, (compressed, uncompressed)
