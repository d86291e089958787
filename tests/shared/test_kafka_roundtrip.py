"""The shared producer, consumer and dead-lettering against the real embedded broker."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import encode
from shared.contracts.common import DEAD_LETTER_TOPIC
from shared.contracts.platform import AUDIT_TOPIC, AuditRecorded
from shared.kafka import EventConsumer, EventPublisher
from shared.testing import read_topic

pytestmark = pytest.mark.integration


def _audit(target: str) -> AuditRecorded:
    return AuditRecorded(principal="p1", action="test", target=target, at=datetime.now(UTC), service="test")


async def test_published_events_are_cloudevents_readable_by_outside_clients(kafka_settings, topics_ready):
    pub = EventPublisher(kafka_settings, client_id="test")
    target = f"t-{uuid.uuid4().hex[:8]}"
    et = event_type_of(AuditRecorded)
    await pub.publish([encode(et, _audit(target), source="/ioc/test")])
    await pub.stop()

    events = await read_topic(kafka_settings, AUDIT_TOPIC.name, where=lambda e: e.subject == target, expect=1)
    assert len(events) == 1 and events[0].type == "ioc.platform.audit.recorded.v1"

    # An outside subscriber: confluent-kafka + the cloudevents SDK's Kafka binding.
    from cloudevents.core.bindings.kafka import KafkaMessage, from_binary_event
    from confluent_kafka import Consumer, TopicPartition

    def consume_with_confluent():
        c = Consumer(
            {
                "bootstrap.servers": kafka_settings.bootstrap_servers,
                "group.id": f"g-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        md = c.list_topics(AUDIT_TOPIC.name, timeout=10)
        parts = md.topics[AUDIT_TOPIC.name].partitions
        c.assign([TopicPartition(AUDIT_TOPIC.name, p, 0) for p in parts])
        found = None
        # The audit topic holds every earlier test's audit records: read in batches until the target or 30 s.
        deadline = time.monotonic() + 30
        while found is None and time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error():
                    continue
                headers = {k: v for k, v in (m.headers() or [])}
                ce = from_binary_event(KafkaMessage(headers=headers, key=m.key(), value=m.value()))
                if ce.get_subject() == target:
                    found = ce
                    break
        c.close()
        return found

    ce = await asyncio.to_thread(consume_with_confluent)
    assert ce is not None, "confluent-kafka did not read the event"
    assert ce.get_type() == "ioc.platform.audit.recorded.v1"
    assert ce.get_source() == "/ioc/test"
    assert ce.get_specversion() == "1.0"
    data = ce.get_data()
    data = orjson.loads(data) if isinstance(data, bytes | str) else data
    assert data["target"] == target


async def test_consumer_dead_letters_poison_and_moves_on(kafka_settings, topics_ready):
    pub = EventPublisher(kafka_settings, client_id="test")
    target = f"poison-{uuid.uuid4().hex[:8]}"
    et = event_type_of(AuditRecorded)
    good = encode(et, _audit(target), source="/ioc/test")
    bad_value = encode(
        et,
        {"principal": "p1", "action": "x", "target": target, "at": "not a time", "service": "t"},
        source="/ioc/test",
    )
    from shared.contracts.cloudevents import EncodedEvent

    not_json = EncodedEvent(good.topic, good.key, b"{oops", good.headers, "x")
    await pub.publish([bad_value, not_json, good])

    seen: list = []

    async def handler(events):
        seen.extend(e for e in events if e.data.get("target") == target)

    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = EventConsumer(
        kafka_settings, group_id=group, topics=[AUDIT_TOPIC.name], handler=handler, publisher=pub
    )
    await consumer.start()
    try:
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.1)
    finally:
        await consumer.stop()
    assert len(seen) == 1
    dead = await read_topic(kafka_settings, DEAD_LETTER_TOPIC.name, raw=True)
    mine = [r for r in dead if dict(r.headers).get("dlq_consumer") == group.encode()]
    assert len(mine) == 2
    hdrs = dict(mine[0].headers)
    assert hdrs["dlq_topic"] == AUDIT_TOPIC.name.encode()
    assert "dlq_offset" in hdrs and "dlq_partition" in hdrs and hdrs["dlq_error"]
    # the original bytes are kept verbatim
    assert {r.value for r in mine} == {bad_value.value, b"{oops"}
    await pub.stop()
