"""The stream runtime against the real broker: batches, outputs, dedup, exactly-once state across restarts."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from shared.contracts.cloudevents import encode
from shared.kafka import EventPublisher
from shared.stream.runtime import ProcessorRuntime
from shared.testing import read_topic
from tests.shared.stream_fixtures import AUDIT, KPI_TYPE, ActionCounter, audit

pytestmark = pytest.mark.integration


async def _latest_counts(kafka_settings, action_prefix: str) -> dict[str, float]:
    events = await read_topic(
        kafka_settings, KPI_TYPE.topic, where=lambda e: e.data["kpi"].startswith(action_prefix)
    )
    latest: dict[tuple[str, int], float] = {}
    for e in events:  # keep the latest per (kpi, partition), then merge partitions
        latest[(e.data["kpi"], e.data["partition"])] = e.data["numerator"]
    merged: dict[str, float] = {}
    for (kpi, _), v in latest.items():
        merged[kpi] = merged.get(kpi, 0) + v
    return merged


@pytest.mark.parametrize("driver", ["aiokafka", "faust", "librdkafka"])
async def test_counts_survive_restart_without_double_counting(kafka_settings, topics_ready, driver):
    tag = uuid.uuid4().hex[:6]
    pub = EventPublisher(kafka_settings, client_id="t")
    first = [
        encode(AUDIT, audit(f"a{tag}{i % 3}", f"x{n}"), source="/ioc/test") for n, i in enumerate(range(300))
    ]
    await pub.publish(first)
    # the same events delivered again (same source+id): must not count twice
    await pub.publish(first[:50])
    name = f"test-counter-{driver}-{tag}"
    async with ProcessorRuntime(ActionCounter(name), kafka_settings, driver=driver).running() as rt:
        await rt.drain(timeout=40)
    counts = await _latest_counts(kafka_settings, f"streamtest.a{tag}")
    assert counts == {f"streamtest.a{tag}0": 100, f"streamtest.a{tag}1": 100, f"streamtest.a{tag}2": 100}

    # a restarted worker recovers its state from the changelog and goes on counting
    await pub.publish([encode(AUDIT, audit(f"a{tag}0", "y"), source="/ioc/test") for _ in range(7)])
    async with ProcessorRuntime(ActionCounter(name), kafka_settings, driver=driver).running() as rt:
        await rt.drain(timeout=40)
    counts = await _latest_counts(kafka_settings, f"streamtest.a{tag}")
    assert counts[f"streamtest.a{tag}0"] == 107
    await pub.stop()


async def test_copies_of_applied_events_after_a_restart_are_dropped(kafka_settings, topics_ready):
    """The dedup window is refilled from the source on recovery: a copy (same source + id) that arrives at a new
    offset after the worker restarted is not applied again."""
    tag = uuid.uuid4().hex[:6]
    pub = EventPublisher(kafka_settings, client_id="t")
    events = [
        encode(AUDIT, audit(f"r{tag}", f"x{i}"), source="/ioc/test", id=f"{tag}-{i}") for i in range(30)
    ]
    await pub.publish(events)
    name = f"test-refill-{tag}"
    async with ProcessorRuntime(ActionCounter(name), kafka_settings, driver="aiokafka").running() as rt:
        await rt.drain(timeout=40)
    # a gateway re-sends ten of them (same CloudEvents ids) while the worker is down
    await pub.publish(events[:10])
    async with ProcessorRuntime(ActionCounter(name), kafka_settings, driver="aiokafka").running() as rt:
        await rt.drain(timeout=40)
        assert sum(pr.state.get(f"count:r{tag}", 0) for pr in rt.core.partitions.values()) == 30
    counts = await _latest_counts(kafka_settings, f"streamtest.r{tag}")
    assert counts == {f"streamtest.r{tag}": 30}
    await pub.stop()


class _SlowTickCounter(ActionCounter):
    # ticks far apart and a long emit interval: only the pending-emit timer can publish the second batch in time
    tick_seconds = 60.0
    emit_interval_seconds = 2.0


@pytest.mark.parametrize("driver", ["aiokafka", "faust", "librdkafka"])
async def test_a_batch_after_an_emit_is_published_within_the_emit_interval_when_the_stream_pauses(
    kafka_settings, topics_ready, driver
):
    """The last batch before a pause is emitted once the emit interval has passed, not at the next tick."""
    tag = uuid.uuid4().hex[:6]
    pub = EventPublisher(kafka_settings, client_id="t")
    async with ProcessorRuntime(
        _SlowTickCounter(f"test-pending-{driver}-{tag}"), kafka_settings, driver=driver
    ).running() as rt:
        # not rt.drain(): it ticks at the end, which would emit what is pending and hide a missing emit
        async def applied(n: int) -> None:
            async with asyncio.timeout(40):
                while rt.core.processed < n:
                    await asyncio.sleep(0.02)

        await pub.publish([encode(AUDIT, audit(f"p{tag}", "x0"), source="/ioc/test")])
        await applied(1)  # the first batch emits at once
        await pub.publish([encode(AUDIT, audit(f"p{tag}", "x1"), source="/ioc/test")])
        await applied(2)  # applied within the emit interval after that emit: its own emit is pending
        deadline = asyncio.get_running_loop().time() + 15  # well inside the 60 s tick
        counts: dict[str, float] = {}
        while asyncio.get_running_loop().time() < deadline:
            counts = await _latest_counts(kafka_settings, f"streamtest.p{tag}")
            if counts.get(f"streamtest.p{tag}") == 2:
                break
            await asyncio.sleep(0.2)
        assert counts == {f"streamtest.p{tag}": 2}
    await pub.stop()
