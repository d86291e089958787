"""IOC's records on a real Apache Kafka 4 cluster, read by an outside client (confluent-kafka + the CloudEvents
SDK's Kafka binding), published by IOC's own publisher with idempotence on, acks=all and replication factor 3."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import orjson

from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import encode
from shared.contracts.platform import AUDIT_TOPIC, AuditRecorded
from shared.kafka import EventPublisher
from shared.kafka.admin import ensure_topics
from shared.testing import read_topic


async def test_ioc_records_are_cloudevents_an_outside_client_reads_from_apache_kafka(kafka_cluster):
    kafka = kafka_cluster.kafka_settings()
    await ensure_topics(kafka, [AUDIT_TOPIC])
    publisher = EventPublisher(kafka, client_id="roundtrip")
    target = f"t-{uuid.uuid4().hex[:8]}"
    event = AuditRecorded(principal="p1", action="test", target=target, at=datetime.now(UTC), service="test")
    try:
        await publisher.publish([encode(event_type_of(AuditRecorded), event, source="/ioc/test")])
        # The idempotent producer really ran: the broker handed it a producer id (the embedded broker cannot).
        assert publisher._producer._txn_manager is not None
        assert publisher._producer._txn_manager.producer_id >= 0
    finally:
        await publisher.stop()

    # The topic is replicated as production runs it.
    md = kafka_cluster.admin().list_topics(AUDIT_TOPIC.name, timeout=10)
    assert {len(p.replicas) for p in md.topics[AUDIT_TOPIC.name].partitions.values()} == {3}

    events = await read_topic(kafka, AUDIT_TOPIC.name, where=lambda e: e.subject == target, expect=1)
    assert [e.type for e in events] == ["ioc.platform.audit.recorded.v1"]

    from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event
    from confluent_kafka import Consumer, TopicPartition

    def consume() -> object | None:
        consumer = Consumer(
            {
                "bootstrap.servers": kafka_cluster.bootstrap_servers,
                "group.id": f"outside-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        try:
            parts = consumer.list_topics(AUDIT_TOPIC.name, timeout=10).topics[AUDIT_TOPIC.name].partitions
            consumer.assign([TopicPartition(AUDIT_TOPIC.name, p, 0) for p in parts])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                for m in consumer.consume(num_messages=1000, timeout=0.5):
                    if m.error():
                        continue
                    headers = dict(m.headers() or [])
                    ce = from_binary_event(KafkaMessage(headers=headers, key=m.key(), value=m.value()))
                    if ce.get_subject() == target:
                        return ce
            return None
        finally:
            consumer.close()

    ce = await asyncio.to_thread(consume)
    assert ce is not None, "confluent-kafka did not read the event from Apache Kafka"
    assert ce.get_type() == "ioc.platform.audit.recorded.v1"
    assert ce.get_source() == "/ioc/test" and ce.get_specversion() == "1.0"
    data = ce.get_data()
    data = orjson.loads(data) if isinstance(data, bytes | str) else data
    assert data["target"] == target
