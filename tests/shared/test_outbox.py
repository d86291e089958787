"""The shared transactional outbox (shared/outbox.py) on the real PostgreSQL and the real embedded broker.

Each test has its own schema (a service of its own) and its own topic, so nothing is shared with other tests.
The broker "goes away" by giving the relay a publisher pointed at a port nobody listens on, and "comes back" by
giving it one on the session broker (the session broker itself is never stopped: other tests use it).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import asyncpg
import pytest
from prometheus_client import REGISTRY

from shared.config import KafkaSettings
from shared.contracts.base import TopicSpec
from shared.contracts.cloudevents import EncodedEvent
from shared.db import create_pool
from shared.embedded.tansu import free_port
from shared.kafka.admin import ensure_topics
from shared.kafka.producer import EventPublisher
from shared.outbox import Outbox
from shared.tasks import stop_tasks
from shared.testing import read_topic

pytestmark = pytest.mark.integration


@dataclass
class Host:
    """What a service context gives the outbox: its name (= schema), pool and publisher."""

    name: str
    pool: asyncpg.Pool | None
    publisher: EventPublisher


def dead_publisher() -> EventPublisher:
    return EventPublisher(
        KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}"), client_id="outbox-test", timeout_s=1.0
    )


@pytest.fixture
async def host(db_settings, kafka_settings):
    name = f"outbox_{uuid.uuid4().hex[:8]}"
    topic = f"test.outbox.{name}"
    spec = TopicSpec(topic, 3, "key", "test", "outbox test topic", compacted=False)
    await ensure_topics(kafka_settings, [spec])
    pool = await create_pool(db_settings, schema=name)
    h = Host(name, pool, EventPublisher(kafka_settings, client_id="outbox-test"))
    yield h, topic
    await h.publisher.stop()
    await pool.execute(f'DROP SCHEMA "{name}" CASCADE')
    await pool.close()


def events(topic: str, keys: list[str], n: int, tag: str) -> list[EncodedEvent]:
    """``n`` events per key, interleaved across keys; the value says key and sequence number."""
    out = []
    for i in range(n):
        for k in keys:
            eid = f"{tag}-{k}-{i}"
            out.append(EncodedEvent(topic, k.encode(), f"{k}:{i}".encode(), [("ce_id", eid.encode())], eid))
    return out


async def write(outbox: Outbox, evs: list[EncodedEvent], per_transaction: int = 5) -> None:
    """Commit the events a few at a time, as a service's writes would (state change + events)."""
    for i in range(0, len(evs), per_transaction):
        async with outbox.pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, evs[i : i + per_transaction])
        outbox.notify()


async def on_topic(kafka, topic: str, expect: int) -> list:
    return await read_topic(kafka, topic, raw=True, expect=expect)


async def drained(outbox: Outbox, timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        while await outbox.backlog():
            await asyncio.sleep(0.05)


async def test_rows_are_published_in_order_per_key_and_marked_sent(host, kafka_settings):
    h, topic = host
    outbox = Outbox(h, poll_seconds=0.05, batch_size=7)  # batches that cut across transactions and keys
    await outbox.install()
    keys = [f"k{j}" for j in range(6)]
    evs = events(topic, keys, 10, "order")
    relay = asyncio.create_task(outbox.run())
    try:
        await write(outbox, evs)
        await drained(outbox)
    finally:
        await stop_tasks([relay])
    assert all((await outbox.state([e.id for e in evs])).values())
    records = await on_topic(kafka_settings, topic, len(evs))
    assert len(records) == len(evs)
    for k in keys:
        seq = [int(r.value.decode().split(":")[1]) for r in records if r.key == k.encode()]
        assert seq == list(range(10)), k  # the order the writes committed in


async def test_nothing_committed_is_lost_across_a_broker_outage(host, kafka_settings):
    h, topic = host
    h.publisher = dead_publisher()
    outbox = Outbox(h, poll_seconds=0.05, max_backoff_seconds=0.2)
    await outbox.install()
    keys = ["a", "b", "c"]
    evs = events(topic, keys, 4, "outage")
    relay = asyncio.create_task(outbox.run())
    try:
        await write(outbox, evs)  # the writes commit although the broker is away: they are accepted
        await asyncio.sleep(0.6)  # the relay tries, fails and backs off a few times
        assert not any((await outbox.state([e.id for e in evs])).values())
        assert await outbox.backlog() == len(evs)
        assert REGISTRY.get_sample_value("ioc_outbox_backlog_events", {"service": h.name}) == len(evs)
        assert REGISTRY.get_sample_value("ioc_outbox_publish_failures_total", {"service": h.name}) >= 2
        await h.publisher.stop()
        h.publisher = EventPublisher(kafka_settings, client_id="outbox-test")  # the broker is back
        await drained(outbox)
    finally:
        await stop_tasks([relay])
    records = await on_topic(kafka_settings, topic, len(evs))
    # Nothing lost, nothing doubled (a row is re-sent only if acknowledged and not marked: at least once).
    assert sorted(dict(r.headers)["ce_id"].decode() for r in records) == sorted(e.id for e in evs)
    for k in keys:
        assert [r.value for r in records if r.key == k.encode()] == [f"{k}:{i}".encode() for i in range(4)]
    assert REGISTRY.get_sample_value("ioc_outbox_backlog_events", {"service": h.name}) == 0
    assert REGISTRY.get_sample_value("ioc_outbox_published_total", {"service": h.name}) == len(evs)


async def test_a_rolled_back_write_publishes_nothing_and_an_id_is_added_once(host, kafka_settings):
    h, topic = host
    outbox = Outbox(h)
    await outbox.install()
    evs = events(topic, ["x"], 3, "rollback")
    with pytest.raises(RuntimeError):
        async with outbox.pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, evs[:2])
            raise RuntimeError("the state change failed")
    assert await outbox.backlog() == 0
    async with outbox.pool.acquire() as conn, conn.transaction():
        await outbox.add(conn, evs)
    async with outbox.pool.acquire() as conn, conn.transaction():
        await outbox.add(conn, evs[1:])  # a retried write with the same deterministic ids
    assert await outbox.backlog() == 3


async def test_flush_on_shutdown_publishes_the_backlog(host, kafka_settings):
    h, topic = host
    outbox = Outbox(h, poll_seconds=3600, batch_size=4)  # the relay would not look again before the stop
    await outbox.install()
    evs = events(topic, ["s", "t"], 5, "flush")
    await write(outbox, evs)
    assert await outbox.flush() is True
    assert await outbox.backlog() == 0
    records = await on_topic(kafka_settings, topic, len(evs))
    assert len(records) == len(evs)


async def test_flush_waits_for_a_batch_in_flight_and_then_publishes_it(host, kafka_settings):
    # The stop comes while the relay task is publishing a batch; the relay is then cancelled before it marks
    # the rows. Flush must wait for that batch's transaction and publish the rows itself, not skip them.
    h, topic = host
    outbox = Outbox(h)
    await outbox.install()
    evs = events(topic, ["w"], 3, "inflight")
    await write(outbox, evs)
    async with outbox.pool.acquire() as relay_conn:
        tx = relay_conn.transaction()
        await tx.start()  # what publish_once holds while the broker has the batch
        await relay_conn.execute("SELECT pg_advisory_xact_lock($1)", outbox._lock_id)
        await relay_conn.fetch("SELECT id FROM outbox WHERE sent_at IS NULL ORDER BY id FOR UPDATE")
        flush = asyncio.create_task(outbox.flush())
        await asyncio.sleep(0.3)
        assert not flush.done()
        await tx.rollback()  # the relay was cancelled: its batch is not marked
    assert await flush is True
    assert await outbox.backlog() == 0
    records = await on_topic(kafka_settings, topic, 3)
    assert [r.value for r in records] == [b"w:0", b"w:1", b"w:2"]


async def test_flush_with_the_broker_away_keeps_the_rows_for_the_next_start(host, kafka_settings):
    h, topic = host
    h.publisher = dead_publisher()
    outbox = Outbox(h)
    await outbox.install()
    evs = events(topic, ["u"], 3, "kept")
    await write(outbox, evs)
    assert await outbox.flush(timeout=3.0) is False
    assert await outbox.backlog() == 3
    await h.publisher.stop()
    # The next start: a new relay on the same table publishes what was left.
    h.publisher = EventPublisher(kafka_settings, client_id="outbox-test")
    assert await Outbox(h).flush() is True
    records = await on_topic(kafka_settings, topic, 3)
    assert [r.value for r in records] == [b"u:0", b"u:1", b"u:2"]


async def test_only_one_relay_per_schema_publishes_at_a_time(host, kafka_settings):
    h, topic = host
    first, second = Outbox(h), Outbox(h)
    await first.install()
    await write(first, events(topic, ["v"], 2, "lock"))
    async with first.pool.acquire() as conn, conn.transaction():
        # Another replica's relay holds the schema's lock (as it does while publishing a batch).
        assert await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", first._lock_id)
        assert await second.publish_once() == 0
    assert await second.publish_once() == 2


async def test_a_relay_cancelled_as_it_is_nudged_stops():
    # A nudge (a committed write) and the shutdown's cancel in the same moment: on Python 3.11,
    # asyncio.wait_for returned normally here and the relay ran on, so the service never stopped.
    for yields in range(6):
        outbox = Outbox(Host("none", None, dead_publisher()), poll_seconds=10)  # _sleep touches nothing else
        task = asyncio.create_task(outbox._sleep(10))
        await asyncio.sleep(0)
        outbox.notify()
        for _ in range(yields):
            await asyncio.sleep(0)
        if task.cancel():  # the cancel reached a task still running: it must end cancelled
            try:
                await task
            except asyncio.CancelledError:
                pass
            assert task.cancelled(), f"cancellation swallowed after {yields} yields"
        else:
            assert task.done() and not outbox.wake.is_set()


async def test_a_relay_sleep_ends_at_its_interval_or_its_nudge():
    outbox = Outbox(Host("none", None, dead_publisher()), poll_seconds=10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await outbox._sleep(0.05)
    assert 0.04 <= loop.time() - started < 1
    outbox.notify()
    started = loop.time()
    await outbox._sleep(10)
    assert loop.time() - started < 1 and not outbox.wake.is_set()
