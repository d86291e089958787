"""The runtime's catch-up check on sources written with Kafka transactions.

A transactional producer ends every transaction with a control record (the commit or abort marker), which takes
an offset of its own; an aborted transaction's records take offsets too, and a transaction still open holds the
last stable offset (LSO) below the high watermark. A ``read_committed`` consumer (the runtime's, whenever the
broker grants transactions) never gets any of these as records, so the offset the core has applied stops below
the high watermark for good. ``ProcessorRuntime.drain`` used to wait for the applied offset to reach the high
watermark: on a topic whose last record was a transaction marker (every processor's output topic, e.g. the
domain KPI topics city-kpi reads) it never returned. It now counts a partition caught up once the consumer's
position (which moves past control records and aborted data) reached the LSO.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import REGISTRY

from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import EncodedEvent, ReceivedEvent, encode
from shared.contracts.meter import FeederSupplyChanged
from shared.stream.processor import State, StreamProcessor
from shared.stream.runtime import ProcessorRuntime
from tests.areas import area

pytestmark = pytest.mark.slow


class CountingProcessor(StreamProcessor):
    """Counts the events it folds per partition (in its state: recovered like any processor's)."""

    tick_seconds = 0.5
    emit_interval_seconds = 0.2

    def __init__(self, name: str, topic: str):
        self.name = name  # type: ignore[misc]
        self.topics = (topic,)  # type: ignore[misc]

    def apply(self, event: ReceivedEvent, state: State) -> None:
        state.put("n", state.get("n", 0) + 1)

    def emit(self, state: State, now: datetime) -> Iterable[EncodedEvent]:
        return []


def event(i: int, marker: str) -> EncodedEvent:
    """A valid event (any declared type decodes on any topic; this one is small)."""
    return encode(
        event_type_of(FeederSupplyChanged),
        {
            "feeder": f"F-{marker}",
            "meter_id": f"M-{i}",
            "supply": "lost",
            "at": "2026-01-01T00:00:00Z",
            "district": area("BD"),
            "feeder_meters": 10,
        },
        source="/ioc/test/catch-up",
        id=f"{marker}-{i}",
    )


async def send(producer: AIOKafkaProducer, topic: str, ev: EncodedEvent) -> None:
    await producer.send_and_wait(topic, ev.value, key=ev.key, headers=ev.headers)


async def create_topic(kafka, name: str) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 3, topic_configs={"min.insync.replicas": "2"})])
    finally:
        await admin.close()


def txn_producer(kafka, transactional_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        transactional_id=transactional_id,
    )


@pytest.mark.parametrize("driver", ["faust", "aiokafka"])
async def test_drain_returns_when_a_transactional_source_ends_in_markers_aborted_and_open_transactions(
    kafka_cluster, driver
):
    kafka = kafka_cluster.kafka_settings()
    marker = uuid.uuid4().hex[:8]
    topic = f"test.catch-up.{marker}"
    await create_topic(kafka, topic)

    committed = txn_producer(kafka, f"catch-up-committed-{marker}")
    aborted = txn_producer(kafka, f"catch-up-aborted-{marker}")
    hanging = txn_producer(kafka, f"catch-up-open-{marker}")
    for p in (committed, aborted, hanging):
        await p.start()
    try:
        # 10 committed events in two transactions: the partition's last record is now a commit marker
        for batch in range(2):
            async with committed.transaction():
                for i in range(5 * batch, 5 * batch + 5):
                    await send(committed, topic, event(i, marker))
        processor = CountingProcessor(f"kaf-catch-up-{marker}", topic)
        async with ProcessorRuntime(processor, kafka, driver=driver).running() as rt:
            assert rt.core.transactional  # read_committed
            await rt.drain(timeout=30)
            assert rt.core.partitions[0].state.get("n") == 10
            # and the lag gauge says so too (the commit marker after the last event is no lag)
            assert (
                REGISTRY.get_sample_value(
                    "ioc_consumer_lag_records", {"consumer": processor.name, "topic": topic, "partition": "0"}
                )
                == 0
            )
            # an aborted transaction after them (its records and its abort marker take offsets) ...
            await aborted.begin_transaction()
            for i in range(100, 105):
                await send(aborted, topic, event(i, marker))
            await aborted.abort_transaction()
            # ... and a transaction left open (a writer that died): the LSO stays at its first record
            await hanging.begin_transaction()
            await send(hanging, topic, event(200, marker))
            await rt.drain(timeout=30)
            assert rt.core.partitions[0].state.get("n") == 10
            # the open transaction commits: its event is folded and drain returns again
            await hanging.commit_transaction()
            await rt.drain(timeout=30)
            assert rt.core.partitions[0].state.get("n") == 11
    finally:
        for p in (committed, aborted, hanging):
            await p.stop()
