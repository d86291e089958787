"""Re-keying after a partition increase (docs/operations.md, "Adding partitions"), on Apache Kafka.

A processor counts the distinct events of each key (the core drops an event id it saw in the partition). Events
of 16 keys go to a 2-partition source; then it gets 4 partitions, and more events follow, plus a second delivery
of one earlier event per key (a gateway retrying). A key whose partition changed now has history in two
partitions. After the documented procedure (workers stopped, ``ioc rekey``, workers started) every key's count
is held by exactly one partition, the one its key hashes to with 4 partitions, and equals its distinct events:
6. Rebuilding from the sources as they are (what the procedure said before: drop the changelog and the group's
offsets; the test runs it too, under another group) gives the moved keys two partial counts, 3 and 4, the
retried event counted twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from shared.contracts import TOPICS
from shared.contracts.base import TopicSpec
from shared.contracts.cloudevents import EncodedEvent, encode
from shared.contracts.common import kpi_observed_payload
from shared.contracts.kiosk import KPI_EVENT
from shared.kafka import EventPublisher
from shared.kafka.admin import PartitionCountMismatch
from shared.kafka.producer import partition_for
from shared.kafka.rekey import RekeyRefused, rekey
from shared.stream.runtime import ProcessorRuntime
from tests.kafka.test_partitions_and_compaction import CountingProcessor, add_partitions

pytestmark = pytest.mark.slow


def event(topic: str, key: bytes, event_id: str) -> EncodedEvent:
    """A registered event type (any would do: the processor only counts) on the test's topic, with ``key``."""
    payload = kpi_observed_payload(
        "kiosk.rekey", "city", "HN", "2026-01-01T00:00:00Z", 60, 1.0, 1.0, None, "", 0, "2026-01-01T00:00:00Z"
    )
    e = encode(KPI_EVENT, payload, source="/ioc/test/rekey", id=event_id)
    return EncodedEvent(topic, key, e.value, e.headers, e.id, e.type)


def counts_by_partition(rt: ProcessorRuntime, keys: list[bytes]) -> dict[bytes, dict[int, int]]:
    out: dict[bytes, dict[int, int]] = {k: {} for k in keys}
    for p, pr in rt.core.partitions.items():
        for k in keys:
            n = pr.state.get(k.decode())
            if n:
                out[k][p] = n
    return out


async def until_counted(rt: ProcessorRuntime, keys: list[bytes], total: int, timeout: float = 60) -> dict:
    """Until the counts of ``keys`` add up to ``total`` (the events are folded), then a moment more."""
    deadline = time.monotonic() + timeout
    while True:
        got = counts_by_partition(rt, keys)
        if sum(sum(c.values()) for c in got.values()) >= total:
            await asyncio.sleep(1)
            return counts_by_partition(rt, keys)
        assert time.monotonic() < deadline, f"counted {got}"
        await asyncio.sleep(0.2)


async def test_after_adding_partitions_the_rekey_procedure_puts_each_keys_whole_history_in_one_partition(
    kafka_cluster, monkeypatch
):
    kafka = kafka_cluster.kafka_settings(metadata_max_age_ms=500)
    topic = f"ioc.test.rekey-{uuid.uuid4().hex[:8]}"
    monkeypatch.setitem(TOPICS, topic, TopicSpec(topic, 2, "id", "test", "re-keying test source"))
    name = f"kaf-rekey-{uuid.uuid4().hex[:8]}"
    candidates = [f"key-{i}".encode() for i in range(100)]
    moving = [k for k in candidates if partition_for(k, 2) != partition_for(k, 4)][:12]
    staying = [k for k in candidates if partition_for(k, 2) == partition_for(k, 4)][:4]
    keys = moving + staying
    publisher = EventPublisher(kafka, client_id="rekey-test")
    try:
        async with ProcessorRuntime(CountingProcessor(name, topic), kafka).running() as rt:
            await publisher.publish([event(topic, k, f"{k.decode()}-{i}") for k in keys for i in range(3)])
            before = await until_counted(rt, keys, 3 * len(keys))
        assert all(c == {partition_for(k, 2): 3} for k, c in before.items())

        await add_partitions(kafka, topic, 4)  # the operator raises the count, and the catalogue's with it
        monkeypatch.setitem(TOPICS, topic, TopicSpec(topic, 4, "id", "test", "re-keying test source"))
        await asyncio.sleep(1.5)  # past the publisher's metadata max age: it hashes with 4 from now on
        await publisher.publish([event(topic, k, f"{k.decode()}-{i}") for k in keys for i in range(3, 6)])
        await publisher.publish([event(topic, k, f"{k.decode()}-0") for k in keys])  # delivered twice
        placed = {k: partition_for(k, 4) for k in keys}

        with pytest.raises(PartitionCountMismatch):  # as it stands, the processor refuses to start
            await ProcessorRuntime(CountingProcessor(name, topic), kafka).start()
    finally:
        await publisher.stop()

    # What the procedure did before: a fresh state (new changelog) rebuilt from the sources as they are. The
    # moved keys are split, their retried event counted twice. (Its group also shows that `rekey` refuses to
    # run while a processor's workers are in its group.)
    async with ProcessorRuntime(CountingProcessor(f"{name}-rebuilt", topic), kafka).running() as rt:
        rebuilt = await until_counted(rt, keys, 7 * len(moving) + 6 * len(staying))
        with pytest.raises(RekeyRefused):
            await rekey(kafka, f"{name}-rebuilt", [topic], settle_s=0)
    assert rebuilt == {
        **{k: {partition_for(k, 2): 3, placed[k]: 4} for k in moving},
        **{k: {placed[k]: 6} for k in staying},
    }

    # The procedure: workers stopped, `ioc rekey`, workers started.
    copied = await rekey(kafka, name, [topic], settle_s=0)
    assert copied == {topic: 3 * len(moving)}  # the moved keys' events from before the increase
    async with ProcessorRuntime(CountingProcessor(name, topic), kafka).running() as rt:
        after = await until_counted(rt, keys, 6 * len(keys))
        rekeyed = rt.core.rekeyed
    assert after == {k: {placed[k]: 6} for k in keys}, (after, rekeyed)
