"""The transactional outbox every IOC service uses for a write that must publish.

A state change and the events it causes are written in **one PostgreSQL transaction**: the events go into the
``outbox`` table of the service's own schema (``await outbox.add(conn, events)`` inside the caller's
transaction). The write is then durable and may be answered 2xx; a relay task publishes the rows to Kafka.

Use::

    outbox = Outbox(ctx)                       # ctx: anything with name, pool, publisher (ServiceContext)
    await outbox.install()                     # on_start: the outbox table in the service's schema (migration)
    ctx.spawn(outbox.run(), f"{ctx.name}-outbox-relay")
    async with ctx.pool.acquire() as conn, conn.transaction():
        ...                                    # the state change
        await outbox.add(conn, events)         # its events, same transaction
    outbox.notify()                            # after the commit: publish now rather than at the next poll
    await outbox.flush()                       # on_stop: best effort; what is left goes out at the next start

A write that must still answer only once the broker acknowledged (the meter registry) calls
``await outbox.drain(wait=True)`` after its commit: ``BrokerUnavailable`` (503) if the broker is away, and its
rows are published later all the same, even if the client never retries. An event id already in the outbox is
not added again (a retried write with deterministic ids).

Guarantees (docs/guarantees.md, "Transactional outbox"):

- **Nothing committed is lost**: a row is marked sent only after the broker acknowledged it (``acks=all``);
  while the broker is away the relay retries with exponential backoff (capped), and rows left at shutdown are
  published by the next start.
- **At least once**: a row acknowledged but not marked (the mark's commit failed, the process died between
  ack and commit, a batch acknowledged in part) is published again, with the same CloudEvents id, which every
  IOC consumer drops (dedup on ``source`` + ``id``).
- **Order per key**: rows are published in ``id`` order, one batch at a time (a batch only after the previous
  one was acknowledged), and only one relay per schema publishes at a time (a transaction-level advisory lock,
  so replicas do not overtake each other). A key's events keep their order when the writes to that key are
  serialised by the caller (the entity's row locked in the transaction, as the dossier service does): a later
  write then takes a larger ``id`` and commits after.
- Metrics: ``ioc_outbox_backlog_events{service}`` (rows not yet published), ``ioc_outbox_published_total{service}``
  and ``ioc_outbox_publish_failures_total{service}``.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import orjson
from prometheus_client import Counter

from shared.contracts.cloudevents import EncodedEvent
from shared.db import apply_migrations
from shared.kafka.producer import BrokerUnavailable, EventPublisher
from shared.metrics import OUTBOX_BACKLOG
from shared.tasks import wait_event

__all__ = ["MIGRATIONS", "Outbox", "OutboxHost", "from_row", "publish_now", "to_row"]

log = logging.getLogger(__name__)
#: The outbox table's migration, applied in each service's own schema (``Outbox.install``).
MIGRATIONS = Path(__file__).parent / "outbox_migrations"

OUTBOX_PUBLISHED = Counter(
    "ioc_outbox_published_total", "Outbox rows published and acknowledged by the broker", ["service"]
)
OUTBOX_FAILURES = Counter(
    "ioc_outbox_publish_failures_total", "Outbox relay attempts that failed (broker or database)", ["service"]
)

Row = tuple[str, str, bytes, bytes, list[list[str]]]


class OutboxHost(Protocol):
    """What the relay needs of its service (``shared.http.ServiceContext`` is one). ``publisher`` is read on every
    batch, so it may be replaced while the relay runs."""

    name: str
    pool: asyncpg.Pool | None
    publisher: EventPublisher


def to_row(ev: EncodedEvent) -> Row:
    """An encoded event as an outbox row (CloudEvents header values are text)."""
    return ev.id, ev.topic, ev.key, ev.value, [[k, v.decode()] for k, v in ev.headers]


def from_row(row: Any) -> EncodedEvent:
    headers = [(k, v.encode()) for k, v in row["headers"]]
    return EncodedEvent(row["topic"], bytes(row["key"]), bytes(row["value"]), headers, row["event_id"])


class Outbox:
    """One service's outbox table (in its schema, first in the pool's ``search_path``) and its relay."""

    def __init__(
        self,
        host: OutboxHost,
        *,
        batch_size: int = 500,
        poll_seconds: float = 0.5,
        max_backoff_seconds: float = 10.0,
        retention_seconds: float = 86400.0,
        purge_interval_seconds: float = 60.0,
    ):
        self.host = host
        self.service = host.name
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.max_backoff = max_backoff_seconds
        self.retention_seconds = retention_seconds
        self.purge_interval_seconds = purge_interval_seconds
        self.wake = asyncio.Event()
        self.published = 0
        # One relay per schema publishes at a time (order per key across replicas).
        self._lock_id = zlib.crc32(f"ioc-outbox:{self.service}".encode()) & 0x7FFFFFFF

    @property
    def pool(self) -> asyncpg.Pool:
        assert self.host.pool is not None, "the outbox needs the service's database pool"
        return self.host.pool

    async def install(self) -> list[str]:
        """Create the outbox table in the service's schema if missing (a migration recorded there)."""
        return await apply_migrations(self.pool, self.service, MIGRATIONS)

    # -------------------------------------------------------------------------------------------- writing
    @staticmethod
    async def add(conn: asyncpg.Connection, events: Iterable[EncodedEvent]) -> int:
        """Write ``events`` to the outbox on ``conn``, inside the caller's transaction; how many were given. An
        event id already in the outbox (a retried write with deterministic ids) is not added again."""
        evs = list(events)
        if evs:
            # One statement whatever the count (a registry import writes tens of thousands of events).
            await conn.execute(
                "INSERT INTO outbox(event_id, topic, key, value, headers) "
                "SELECT e, t, k, v, h::jsonb FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::text[]) "
                "WITH ORDINALITY AS u(e, t, k, v, h, n) ORDER BY n ON CONFLICT (event_id) DO NOTHING",
                [e.id for e in evs],
                [e.topic for e in evs],
                [e.key for e in evs],
                [e.value for e in evs],
                # as JSON text: a list of header pairs would be taken for a multi-dimensional array
                [orjson.dumps([[k, v.decode()] for k, v in e.headers]).decode() for e in evs],
            )
        return len(evs)

    def notify(self) -> None:
        """A transaction with outbox rows committed: publish now rather than at the next poll."""
        self.wake.set()

    # ------------------------------------------------------------------------------------------ publishing
    async def publish_once(self, *, wait: bool = False) -> int:
        """Publish one batch of unsent rows and mark them sent; how many (0: none waiting, or another relay
        holds the schema's lock and ``wait`` is false). Raises ``BrokerUnavailable``."""
        async with self.pool.acquire() as conn, conn.transaction():
            if wait:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_id)
            elif not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", self._lock_id):
                return 0
            rows = await conn.fetch(
                "SELECT id, event_id, topic, key, value, headers FROM outbox WHERE sent_at IS NULL "
                "ORDER BY id LIMIT $1",
                self.batch_size,
            )
            if not rows:
                return 0
            await self.host.publisher.publish([from_row(r) for r in rows])
            await conn.execute(
                "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", [r["id"] for r in rows]
            )
        self.published += len(rows)
        OUTBOX_PUBLISHED.labels(self.service).inc(len(rows))
        return len(rows)

    async def drain(self, *, wait: bool = False) -> int:
        """Publish every unsent row now, batch after batch; how many. For a service that drives publishing from
        its own request or loop rather than (or besides) :meth:`run`. Raises ``BrokerUnavailable``."""
        total = 0
        while n := await self.publish_once(wait=wait):
            total += n
        return total

    async def flush(self, timeout: float = 5.0) -> bool:
        """Best effort at shutdown: publish what is waiting; whether it all went out (rows left over are
        published at the next start). Waits for a batch the relay task is publishing, then drains."""
        try:
            async with asyncio.timeout(timeout):
                await self.drain(wait=True)
            await self._safe_backlog()
            return True
        except (BrokerUnavailable, TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            log.warning("outbox not flushed at shutdown; it will be published at the next start")
            return False

    async def backlog(self) -> int:
        """Rows not yet published (also set as ``ioc_outbox_backlog_events{service}``)."""
        n = await self.pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        OUTBOX_BACKLOG.labels(self.service).set(n)
        return int(n)

    async def state(self, event_ids: Sequence[str]) -> dict[str, bool]:
        """Whether each of these events has been published (tests and operations)."""
        rows = await self.pool.fetch(
            "SELECT event_id, sent_at IS NOT NULL AS sent FROM outbox WHERE event_id = ANY($1)",
            list(event_ids),
        )
        return {r["event_id"]: r["sent"] for r in rows}

    async def purge_sent(self) -> None:
        """Delete rows published more than ``retention_seconds`` ago (kept that long for inspection)."""
        await self.pool.execute(
            "DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => $1)",
            float(self.retention_seconds),
        )

    async def run(self) -> None:
        """Forever: drain the outbox; on broker (or database) failure back off, exponentially and capped, and
        retry."""
        backoff = self.poll_seconds
        last_purge: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                n = await self.publish_once()
                backoff = self.poll_seconds
                if n:
                    continue  # more may be waiting
                await self.backlog()
                if last_purge is None or loop.time() - last_purge > self.purge_interval_seconds:
                    await self.purge_sent()
                    last_purge = loop.time()
                await self._sleep(self.poll_seconds)
            except asyncio.CancelledError:
                raise
            except BrokerUnavailable:
                OUTBOX_FAILURES.labels(self.service).inc()
                log.warning("outbox relay: broker unavailable; retrying", extra={"backoff_s": backoff})
                await self._safe_backlog()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            except Exception as exc:  # the database may be down for a while too
                OUTBOX_FAILURES.labels(self.service).inc()
                log.warning("outbox relay failed: %s; retrying", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _safe_backlog(self) -> None:
        try:
            await self.backlog()
        except Exception:
            pass

    async def _sleep(self, seconds: float) -> None:
        await wait_event(self.wake, seconds)
        self.wake.clear()


async def publish_now(outbox: Outbox, timeout: float) -> bool:
    """After a commit whose answer says whether its events are on the broker yet: publish what is waiting (after a
    batch the relay has in flight) for at most ``timeout`` seconds. True: the outbox was drained, so the events
    committed before the call are published. Never raises: what is left goes out with the relay's retries."""
    try:
        async with asyncio.timeout(timeout):
            await outbox.drain(wait=True)
        return True
    except (BrokerUnavailable, TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("outbox: committed, not yet published (%s); the relay retries", type(exc).__name__)
        return False
