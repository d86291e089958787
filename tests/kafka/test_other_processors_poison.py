"""Poison records on Apache Kafka for the meter feeder-outage, traffic-signals, dossier-kpi and city-kpi
processors (their other fault scenarios: ``test_<processor>_processor_faults.py``; meter-kpi and kiosk-kpi have
the full set in ``test_meter_processor_faults.py`` and ``test_kiosk_processor_faults.py``).

Each processor, as ``ioc up`` builds it but under a consumer group of its own, reads records on every one of its
source topics that it must not fold: not JSON, and a CloudEvent of a type nobody declared. Every one goes to
``ioc.deadletter`` (inside the batch's transaction here) with the processor as ``dlq_consumer``, none is folded,
and each source partition's applied offset moves past them: the partition does not stall.
"""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from services.city.processors import city_kpi_processor
from services.dossier.processors import kpi_processor as dossier_kpi_processor
from services.meter.processors import FeederOutageProcessor
from services.traffic.processors import traffic_processor
from services.traffic.settings import TrafficSettings
from shared.contracts import TOPICS
from shared.contracts.common import DEAD_LETTER_TOPIC
from shared.kafka.admin import ensure_topics
from shared.stream.runtime import ProcessorRuntime
from shared.testing import read_topic

pytestmark = pytest.mark.slow

PROCESSORS = {
    "meter-feeder-outage": FeederOutageProcessor,
    "traffic-signals": lambda: traffic_processor(TrafficSettings()),
    "dossier-kpi": dossier_kpi_processor,
    # last: it reads the KPI topics the processors above have just written with transactions (their commit
    # markers kept its drain from ever returning: tests/kafka/test_stream_catch_up.py)
    "city-kpi": city_kpi_processor,
}


@pytest.mark.parametrize("factory", list(PROCESSORS.values()), ids=list(PROCESSORS))
async def test_poison_on_every_source_topic_is_dead_lettered_and_the_partitions_move_on(
    kafka_cluster, factory
):
    kafka = kafka_cluster.kafka_settings()
    processor = factory()
    name = f"kaf-poison-{processor.name}-{uuid.uuid4().hex[:8]}"
    processor.name = name  # its own consumer group and changelog: the topics are shared with other tests
    marker = uuid.uuid4().hex
    # its sources, as the owning services create them at start (to be poisoned before the processor starts)
    await ensure_topics(kafka, list(TOPICS.values()))
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    ends: dict[str, int] = {}
    try:
        for topic in processor.topics:
            for i, (value, ce_type) in enumerate(
                [(b"{not json", b"ioc.test.thing.v1"), (b"{}", b"ioc.nonsense.v9")]
            ):
                headers = [
                    ("ce_specversion", b"1.0"),
                    ("ce_id", f"poison-{marker}-{i}".encode()),
                    ("ce_source", b"/ioc/test/poisoner"),
                    ("ce_type", ce_type),
                    ("content-type", b"application/json"),
                ]
                meta = await producer.send_and_wait(topic, value, key=b"poison", headers=headers, partition=0)
                ends[topic] = meta.offset + 1
    finally:
        await producer.stop()
    async with ProcessorRuntime(processor, kafka).running() as rt:
        await rt.drain(timeout=90)
        assert rt.core.dead_lettered >= 2 * len(processor.topics)
        for topic, end in ends.items():
            applied = rt.core.applied_offset(topic, 0)
            assert applied is not None and applied >= end, (
                f"{topic}: partition 0 stalled at {applied} < {end}"
            )
    dead = await read_topic(kafka, DEAD_LETTER_TOPIC.name, raw=True, timeout=20)
    mine = [
        h
        for h in (dict(r.headers) for r in dead)
        if h.get("dlq_consumer") == name.encode()
        and h.get("ce_id", b"").startswith(f"poison-{marker}".encode())
    ]
    # each poison record exactly once (the topics may hold other tests' records, dead-lettered or not)
    assert sorted((h["dlq_topic"].decode(), h["ce_id"]) for h in mine) == sorted(
        (topic, f"poison-{marker}-{i}".encode()) for topic in processor.topics for i in range(2)
    )
    assert all(h["dlq_error"] for h in mine)
