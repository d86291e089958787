"""Every faust-streaming (and Faust-created aiokafka consumer) internal IOC touches, in one place.

:mod:`shared.stream.faust_driver` runs a :class:`~shared.stream.core.ProcessorCore` inside a Faust app but
replaces Faust's per-message consumer loop with a batch loop. Faust has no public hook for that, so the driver
needs Faust's private methods and attributes; they are all here, each behind a named override or accessor
(:data:`OVERRIDES`, :data:`PRIVATE_ATTRIBUTES`), so that the driver itself uses only this module's public
names. ``tests/shared/test_faust_adapter.py`` pins the installed version (:data:`FAUST_VERSION`) and checks
that each overridden method still exists with the signature written here and that each private attribute is
still there: a Faust upgrade fails loudly in that one test, not as a stalled worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import faust
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger(__name__)

#: the faust-streaming release whose internals this module was written against (and constraints.txt pins)
FAUST_VERSION = "0.15.3"


@dataclass(frozen=True)
class Override:
    """A private Faust method a class here overrides: where it is defined, its parameters there, and the Faust
    function that calls it (an upgrade that stops calling it would bypass the override silently)."""

    name: str
    faust_class: type
    parameters: tuple[str, ...]
    called_from: Callable[..., Any]
    why: str


#: each private Faust method the adapter's classes override (checked against the installed Faust by the test)
OVERRIDES: tuple[Override, ...] = (
    Override(
        "_create_worker_consumer",
        faust_aiokafka.AIOKafkaConsumerThread,
        ("self", "transport"),
        faust_aiokafka.AIOKafkaConsumerThread._create_consumer,
        "configure the aiokafka consumer Faust builds (fetch wait, bare records, assignor, isolation)",
    ),
    Override(
        "_new_consumer_thread",
        faust_aiokafka.Consumer,
        ("self",),
        faust.transport.consumer.ThreadDelegateConsumer.__init__,
        "make Faust's consumer use the thread class above",
    ),
    Override(
        "_filter_tps_with_pending_acks",
        faust.transport.consumer.Consumer,
        ("self", "topics"),
        faust.transport.consumer.Consumer.force_commit,
        "commit the partitions the core made durable (no per-message acks)",
    ),
    Override(
        "_new_offset",
        faust.transport.consumer.Consumer,
        ("self", "tp"),
        faust.transport.consumer.Consumer._filter_committable_offsets,
        "commit the core's durable offsets, never Faust's acked ones",
    ),
    Override(
        "_drain_messages",
        faust.transport.consumer.Consumer,
        ("self", "fetcher"),
        faust.transport.consumer.Fetcher._fetcher.fun,  # (a mode ServiceTask: .fun is the coroutine function)
        "hand whole fetched batches to the core instead of one message at a time",
    ),
    Override(
        "_new_transport",
        faust.App,
        ("self",),
        faust.App.transport.fget,  # type: ignore[attr-defined]  # a property (Faust types it as a cached one)
        "make the app use the transport whose consumer is the batch consumer",
    ),
)

#: private attributes/methods read or written (owner, name); the test checks each still exists
PRIVATE_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("faust Consumer", "_stopped"),  # mode.Service: the consumer/fetcher stop events
    ("faust Consumer", "_read_offset"),  # the read position Faust reports in its monitor
    ("faust Consumer", "_get_active_partitions"),  # partitions not paused by a rebalance
    ("faust Consumer", "_getmany"),  # one fetch from the consumer thread
    ("faust ThreadDelegateConsumer", "_thread"),
    ("faust AIOKafkaConsumerThread", "_ensure_consumer"),
    ("aiokafka AIOKafkaConsumer", "_coordinator"),  # .generation: the group generation this member is in
    ("aiokafka AIOKafkaConsumer", "_fetch_max_wait_ms"),
    ("aiokafka AIOKafkaConsumer", "_key_deserializer"),
    ("aiokafka AIOKafkaConsumer", "_partition_assignment_strategy"),
    ("aiokafka AIOKafkaConsumer", "_isolation_level"),
)


class BatchHost(Protocol):
    """What the driver gives the adapter: consumer settings, the core's durable offsets, and the batch loop."""

    assignor: AbstractPartitionAssignor
    fetch_wait_ms: int
    key_deserializer: Callable[[bytes | None], Any]

    @property
    def read_committed(self) -> bool: ...

    @property
    def durable_offsets(self) -> Mapping[tuple[str, int], int]: ...

    def may_commit(self) -> bool: ...

    async def drain(self, source: BatchSource) -> None: ...


def _host(app: object) -> BatchHost:
    # Faust types a consumer's app as its abstract AppT; a BatchApp carries the host
    return cast(BatchApp, app).ioc_host


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        configure_worker_consumer(consumer, _host(self.app))
        return consumer


def configure_worker_consumer(consumer: Any, host: BatchHost) -> None:
    """Settings Faust does not expose for the aiokafka consumer it builds (set before ``start()`` reads them)."""
    # Faust hard-codes a 1,500 ms fetch wait; the embedded broker does not wake waiting fetches when data
    # arrives, so sparse topics would see ~0.4 s median latency. 100 ms keeps it ~10 ms.
    consumer._fetch_max_wait_ms = host.fetch_wait_ms
    # The core reads records per TopicPartition: skip aiokafka's per-record ConsumerRecord
    # (shared.kafka.records; read by the Fetcher that start() creates).
    consumer._key_deserializer = host.key_deserializer
    # Faust uses its co-partitioning assignor only for apps with tables and round robin otherwise, which split
    # one state partition's topics over workers: ours co-partitions (shared.stream.assignor).
    consumer._partition_assignment_strategy = [host.assignor]
    if host.read_committed:
        consumer._isolation_level = "read_committed"  # never fold a batch another worker aborted


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose drain loop is the host's batch loop and whose commits are the host's
    durable offsets."""

    def _new_consumer_thread(self):
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    # Faust's commit loop asks _new_offset for every tp with pending acks; ours are the offsets the core
    # reports durable (outputs and state changes acknowledged), never more.
    def _filter_tps_with_pending_acks(self, topics=None):
        host = _host(self.app)
        if not host.may_commit():
            return iter(())
        pending = set(super()._filter_tps_with_pending_acks(topics))
        durable = host.durable_offsets
        pending.update(
            tp
            for tp in self.assignment()
            if (tp.topic, tp.partition) in durable and (topics is None or tp in topics or tp.topic in topics)
        )
        return iter(pending)

    def _new_offset(self, tp):
        offset = _host(self.app).durable_offsets.get((tp.topic, tp.partition))
        if offset is not None:
            return offset
        return super()._new_offset(tp)

    async def _drain_messages(
        self, fetcher
    ) -> None:  # pragma: no cover - exercised through the runtime tests
        source = BatchSource(self, fetcher)
        try:
            await _host(self.app).drain(source)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise


class BatchSource:
    """The fetch side of a :class:`BatchConsumer`, for the host's batch loop (public names over Faust's)."""

    def __init__(self, consumer: BatchConsumer, fetcher: Any):
        self._consumer = consumer
        self._fetcher = fetcher

    def should_stop(self) -> bool:
        return (
            self._consumer._stopped.is_set()
            or self._fetcher._stopped.is_set()
            or bool(self._consumer.should_stop)
        )

    def generation(self) -> int:
        """The consumer group generation Faust last saw assigned (set by its rebalance listener)."""
        return int(self._consumer.app.consumer_generation_id)

    def assignment(self) -> set[Any]:
        return set(self._consumer.assignment())

    def highwater(self, tp: Any) -> int | None:
        return self._consumer.highwater(tp)

    def readable_end(self, tp: Any, read_committed: bool) -> int | None:
        """See :func:`readable_end`."""
        return readable_end(cast(faust.App, self._consumer.app), tp, read_committed)

    async def position(self, tp: Any) -> int | None:
        """The consumer's fetch position of ``tp`` (next offset it will return; past control records)."""
        return await self._consumer.position(tp)

    async def fetch(self, timeout: float) -> tuple[Mapping[Any, Sequence[Any]], frozenset[Any]]:
        """One fetch of the partitions Faust has not paused; returns the records and the partitions asked for.

        Faust's own ``_wait_next_records`` hands the consumer thread Faust's *live* set of active partitions,
        which a rebalance empties and refills in place while the fetch waits (pause on revoke and on assign,
        resume after Faust's recovery), and aiokafka's ``fetched_records`` reads an empty set as "every
        partition". A copy is stable for the whole fetch; the host seeks back whatever it does not process.
        """
        consumer = self._consumer
        if not consumer.flow_active:
            # mode types the waitable as its own Event; Service.wait takes anything with an awaitable .wait()
            await consumer.wait(consumer.can_resume_flow)  # type: ignore[arg-type]
        active = frozenset(consumer._get_active_partitions())
        if not active:
            await consumer.sleep(min(timeout, 0.2))
            return {}, active
        return await consumer._getmany(active_partitions=set(active), timeout=timeout), active

    def flow_active(self) -> bool:
        """False while Faust handles a rebalance (from revocation until its recovery resumes the streams)."""
        return bool(self._consumer.flow_active)

    def active_partitions(self) -> frozenset[Any]:
        return frozenset(self._consumer._get_active_partitions())

    async def seek_back(self, first_offsets: Mapping[Any, int]) -> list[Any]:
        """Seek each partition still assigned back to ``offset`` (records fetched but not handed to the core
        must be fetched again); returns the partitions sought."""
        assigned = self.assignment()
        sought = []
        for tp, offset in first_offsets.items():
            if tp in assigned:
                try:
                    await self._consumer.seek(tp, offset)
                    sought.append(tp)
                except Exception as exc:  # unassigned meanwhile: its next owner starts from the commit
                    log.info("seek back of %s skipped: %r", tp, exc)
        return sought

    def mark_read(self, tp: Any, offset: int) -> None:
        """Tell Faust's monitor the last offset read (``offset``: the last record's)."""
        self._consumer._read_offset[tp] = offset


def readable_end(app: faust.App, tp: Any, read_committed: bool) -> int | None:
    """The end of what the app's consumer can read of ``tp``, as of its last fetch answer (None before one): the
    last stable offset for a ``read_committed`` consumer (it never reads past a transaction still open), else the
    high watermark. Faust's own ``highwater`` answers the LSO only for apps in its exactly-once mode."""
    consumer = app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]  # Faust's aiokafka thread
    if read_committed:
        lso = consumer.last_stable_offset(tp)
        return None if lso is None or lso < 0 else lso
    return consumer.highwater(tp)


def group_generation(app: faust.App) -> int | None:
    """The generation the aiokafka group coordinator is in now (a heartbeat that found this member evicted
    resets it), or None before the consumer started."""
    consumer = app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]  # Faust's aiokafka thread
    coordinator = consumer._coordinator
    return None if coordinator is None else coordinator.generation


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A Faust app whose consumer drains batches into a :class:`BatchHost`."""

    ioc_host: BatchHost

    def _new_transport(self):
        return BatchTransport(self.conf.broker_consumer, self)


def connect_rebalance_handlers(
    app: faust.App,
    on_revoked: Callable[..., Awaitable[None]],
    on_assigned: Callable[..., Awaitable[None]],
) -> None:
    """Faust's rebalance signals (public, but typed to want a ``signal`` keyword its senders pass through
    ``**kwargs``: the handlers take ``**_``)."""
    app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
