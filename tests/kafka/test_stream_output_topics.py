"""A processor's output topics exist before its first batch.

A transactional emit to a topic that does not exist yet waited on the topic's metadata inside the batch (the
publisher probed for it, gave up after 5 s, then created it from the catalogue), holding the batch lock and
the partition's open transaction; seen with ``ioc.city.kpis`` when city-kpi ran before the city service had
created its topics. The runtime now creates its processor's missing output topics at start, as it does for
its sources and changelog: the dead letters and its domain's catalogue topics (a processor is named
``<domain>-<what>``; the same rule as its KafkaUser's ACLs).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

import pytest
from aiokafka import AIOKafkaProducer

from shared.contracts import TOPICS
from shared.contracts.base import TopicSpec
from shared.contracts.cloudevents import EncodedEvent, ReceivedEvent
from shared.stream.processor import State, StreamProcessor
from shared.stream.runtime import ProcessorRuntime, output_topics
from shared.testing import read_topic
from tests.kafka.test_stream_catch_up import create_topic, event

pytestmark = pytest.mark.slow


class Forwarder(StreamProcessor):
    """Publishes one event on ``output`` per event folded."""

    tick_seconds = 0.5
    emit_interval_seconds = 0.1

    def __init__(self, name: str, source: str, output: str):
        self.name = name  # type: ignore[misc]
        self.topics = (source,)  # type: ignore[misc]
        self.output = output

    def apply(self, event: ReceivedEvent, state: State) -> None:
        state.put("out", [*state.get("out", []), event.id])

    def emit(self, state: State, now: datetime) -> Iterable[EncodedEvent]:
        ids = state.pop("out", None) or []
        out = []
        for i in ids:
            ev = event(0, i)
            ev.topic = self.output
            out.append(ev)
        return out


async def topic_names(kafka_cluster) -> set[str]:
    return set(kafka_cluster.admin().list_topics(timeout=10).topics)


async def test_missing_output_topics_are_created_at_start_before_any_batch(kafka_cluster, monkeypatch):
    kafka = kafka_cluster.kafka_settings()
    marker = uuid.uuid4().hex[:8]
    domain = f"zz{marker}"  # a domain of this test only, with one catalogue topic nobody created yet
    source, output = f"test.out-src.{marker}", f"test.out-dst.{marker}"
    monkeypatch.setitem(
        TOPICS,
        output,
        TopicSpec(name=output, partitions=2, key="id", owner=domain, description="test output"),
    )
    await create_topic(kafka, source)
    processor = Forwarder(f"{domain}-forward", source, output)
    assert [t.name for t in output_topics(processor)] == ["ioc.deadletter", output]
    assert output not in await topic_names(kafka_cluster)
    rt = ProcessorRuntime(processor, kafka)
    async with rt.running():
        assert output in await topic_names(kafka_cluster)  # before any batch
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            ev = event(1, marker)
            await producer.send_and_wait(source, ev.value, key=ev.key, headers=ev.headers)
        finally:
            await producer.stop()
        await rt.drain(timeout=30)
        assert rt.core.emitted == 1
    got = await read_topic(kafka, output, raw=True, timeout=20)
    assert [dict(r.headers)["ce_id"] for r in got] == [f"{marker}-1-0".encode()]  # (event 0 of the folded id)
