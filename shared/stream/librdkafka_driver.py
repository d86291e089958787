"""The stream core (:class:`shared.stream.core.ProcessorCore`) under a librdkafka consumer (confluent-kafka).

Why: the per-record cost of the consumer client. librdkafka fetches, decompresses and parses records in C on
its own threads; the Python side only turns each message into the small record object the core reads
(``offset``, ``key``, ``value``, ``headers``, ``timestamp``), where aiokafka parses record batches in Python
(``docs/stream-design.md``, "librdkafka driver").

What stays as in :class:`shared.stream.runtime.AiokafkaDriver`: the core does state, dedup, recovery and
durability (commit markers, or Kafka transactions, with its own aiokafka producers); this driver only consumes,
follows the group's assignment and commits what the core reports durable.

Co-partitioning without a client-side assignor: confluent-kafka cannot run a Python assignor, so the group uses
librdkafka's ``range`` assignor. For every topic it lays partitions out in number order and the members in member
id order and gives member *i* the same range of numbers (``rd_kafka_range_assignor_assign_cb``, the Java
client's ``RangeAssignor``): members that subscribe to the same topics of equal partition counts (a processor's
sources always are, ``shared.stream.runtime.source_partitions``) get partition *p* of every topic or none. Rack
aware range assignment (librdkafka 2.3+) only applies with ``client.rack`` set, which this driver never sets.
The core refuses records of partitions not held whole anyway (``ioc_stream_records_refused_total``).

Threads: ``consume`` blocks, so it runs in a thread of its own; librdkafka calls the rebalance callbacks from
inside ``consume``, in that thread, and they hand the core's work (flush, recovery) to the event loop and wait
for it. Everything else that touches the consumer's position (rewinds after a failure) runs between two
``consume`` calls, so no record fetched before a rewind is processed after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from typing import Any

from aiokafka import TopicPartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_INVALID, Consumer, KafkaError
from confluent_kafka import TopicPartition as RdTopicPartition

from shared.config import KafkaSettings
from shared.metrics import CONSUMER_LAG
from shared.stream.core import ProcessorCore, whole_partitions
from shared.tasks import stop_tasks

log = logging.getLogger(__name__)


class Record:
    """A fetched record as the core reads it (the shape of :mod:`shared.kafka.records`' bare records)."""

    __slots__ = ("headers", "key", "offset", "timestamp", "value")

    def __init__(self, offset: int, key: bytes | None, value: bytes | None, headers: Any, timestamp: int):
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp = timestamp


def consumer_config(kafka: KafkaSettings, group: str, *, fetch_wait_ms: int, read_committed: bool) -> dict:
    """librdkafka properties equivalent to the aiokafka driver's consumer."""
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": group,
        "client.id": f"{group}-worker",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 3000,
        "fetch.wait.max.ms": fetch_wait_ms,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        # range, alone: it co-partitions (module docstring); librdkafka's default list also offers roundrobin
        "partition.assignment.strategy": "range",
        # with transactions, never fold what another worker's aborted batch wrote
        "isolation.level": "read_committed" if read_committed else "read_uncommitted",
        "topic.metadata.refresh.interval.ms": kafka.metadata_max_age_ms,
    }
    if kafka.security_protocol != "PLAINTEXT":
        config["security.protocol"] = kafka.security_protocol
    if kafka.sasl_mechanism:
        config["sasl.mechanism"] = kafka.sasl_mechanism
        config["sasl.username"] = kafka.sasl_username or ""
        config["sasl.password"] = kafka.sasl_password or ""
    if kafka.ssl_cafile and kafka.security_protocol in ("SSL", "SASL_SSL"):
        config["ssl.ca.location"] = kafka.ssl_cafile
    return config


def group_records(messages: list) -> tuple[dict[TopicPartition, list[Record]], int]:
    """``consume``'s messages as the core takes them (records per topic-partition, in offset order), and how many
    errors were skipped (logged)."""
    batch: dict[TopicPartition, list[Record]] = {}
    tps: dict[tuple[str, int], TopicPartition] = {}
    errors = 0
    current_key: tuple[str, int] | None = None
    current: list[Record] = []
    for m in messages:
        err = m.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                errors += 1
                log.warning("consumer error: %s", err)
            continue
        key = (m.topic(), m.partition())
        if key != current_key:
            tp = tps.get(key)
            if tp is None:
                tp = tps[key] = TopicPartition(*key)
                batch[tp] = []
            current_key, current = key, batch[tp]
        current.append(Record(m.offset(), m.key(), m.value(), m.headers(), m.timestamp()[1]))
    return batch, errors


class LibrdkafkaDriver:
    """The core under a librdkafka (confluent-kafka) consumer group."""

    def __init__(self, core: ProcessorCore, kafka: KafkaSettings, *, max_records: int, fetch_wait_ms: int):
        self.core = core
        self.kafka = kafka
        self.max_records = max_records
        self.fetch_wait_ms = fetch_wait_ms
        self.consumer: Consumer | None = None
        #: the topic-partitions of the current assignment (swapped whole by the rebalance callbacks)
        self.assigned: frozenset[TopicPartition] = frozenset()
        self._committed: dict[TopicPartition, int] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._loop_ref: asyncio.AbstractEventLoop | None = None
        # one thread: consume, the rebalance callbacks inside it, and close never overlap
        self._thread = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"{core.processor.name}-rdk"
        )
        self._rewind_wanted = False
        # high watermarks and positions as of the last ``consume``, read in the consumer's thread: a consumer
        # call from the event loop while a rebalance callback waits for the loop would never return
        self._watermarks: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int] = {}
        self.busy = False
        core.owner_check = self.owns

    async def start(self) -> None:
        p = self.core.processor
        self._loop_ref = asyncio.get_running_loop()
        self.consumer = Consumer(
            consumer_config(
                self.kafka, p.name, fetch_wait_ms=self.fetch_wait_ms, read_committed=self.core.transactional
            ),
            logger=log,
        )
        self.consumer.subscribe(
            list(p.topics), on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._tasks = [
            asyncio.create_task(self._loop(), name=f"{p.name}:loop"),
            asyncio.create_task(self._every(p.tick_seconds, self.core.tick, "tick"), name=f"{p.name}:tick"),
            asyncio.create_task(
                self._every(p.emit_interval_seconds / 4, self.core.emit_pending, "emit"),
                name=f"{p.name}:emit",
            ),
        ]

    async def stop(self) -> None:
        self._stopping = True
        pending = await stop_tasks(self._tasks, timeout=5)
        loop = asyncio.get_running_loop()
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                offsets = self._committable()
                if offsets:
                    await loop.run_in_executor(self._thread, self._commit_sync, offsets)
            # in the consumer's thread: close revokes the assignment, whose callback waits for this loop
            with contextlib.suppress(Exception):
                await loop.run_in_executor(self._thread, self.consumer.close)
        if pending:
            await stop_tasks(pending, timeout=5)
        self._thread.shutdown(wait=False)

    def owns(self, partition: int) -> bool:
        """Checked by the core right before it writes a partition: held whole in the current assignment. (A
        member the group evicted learns it in its next ``consume``, whose lost-assignment callback drops the
        partitions; with transactions the next owner's transactional id fences a late write in any case.)"""
        return partition in whole_partitions(self.assigned, self.core.processor.topics)

    # Rebalance callbacks: in the consumer's thread, inside ``consume`` ---------------------------------------
    def _on_loop(self, coro) -> Any:
        assert self._loop_ref is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop_ref).result()

    def _on_assign(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        # Owned from now on, before the recovery: a tick while it runs must not take the partitions for lost ones
        # (it fenced and dropped them under the recovery's feet, and they stayed fenced).
        self.assigned = frozenset(tps)
        try:
            self._on_loop(self._recover(tps))
        except Exception:
            # the first batch recovers what is missing (ProcessorCore.process), from the committed offsets
            log.exception("%s: recovery on assignment failed", self.core.processor.name)
        for tp in partitions:
            applied = self.core.applied_offset(tp.topic, tp.partition)
            tp.offset = applied if applied is not None else OFFSET_INVALID  # invalid: the committed offset
        consumer.assign(partitions)

    async def _recover(self, tps: list[TopicPartition]) -> None:
        self.core.fenced.clear()
        await self.core.recover({tp.partition for tp in tps})

    def _on_revoke(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        revoked = {tp.partition for tp in partitions}
        try:
            self._on_loop(self._flush())
            self._commit_now(consumer)
        except Exception:
            log.exception("%s: commit on revocation failed", self.core.processor.name)
        # dropped before the assignment is emptied: a tick in between finds nothing to write, not lost partitions
        self._on_loop(self._drop(revoked))
        self.assigned = frozenset()
        consumer.unassign()

    def _on_lost(self, consumer: Consumer, partitions: list[RdTopicPartition]) -> None:
        # another member may own them already: commit nothing, forget their state
        self.assigned = frozenset()  # first: nothing more of them may be written
        log.warning("%s: assignment lost (evicted from the group)", self.core.processor.name)
        self._on_loop(self._drop({tp.partition for tp in partitions}))
        consumer.unassign()

    async def _flush(self) -> None:
        async with self.core.lock:
            await self.core.settle()

    async def _drop(self, partitions: set[int]) -> None:
        async with self.core.lock:
            self.core.drop(partitions)

    # Offsets ---------------------------------------------------------------------------------------------------
    def _committable(self) -> list[RdTopicPartition]:
        out = []
        for tp in self.assigned:
            o = self.core.durable_offsets.get((tp.topic, tp.partition))
            if o is not None and o > self._committed.get(tp, -1):
                out.append(RdTopicPartition(tp.topic, tp.partition, o))
                self._committed[tp] = o
        return out

    def _commit_now(self, consumer: Consumer) -> None:
        offsets = self._committable()
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=False)

    def _commit_sync(self, offsets: list[RdTopicPartition]) -> None:
        assert self.consumer is not None
        self.consumer.commit(offsets=offsets, asynchronous=False)

    def _commit_async(self) -> None:
        """Commit what the core reports durable (never more), for the partitions still assigned. Only between
        two ``consume`` calls (the loop's task): asynchronous, as a failed commit only means a restart re-reads
        records the changelog's markers already skip."""
        assert self.consumer is not None
        offsets = self._committable()
        if offsets:
            self.consumer.commit(offsets=offsets, asynchronous=True)

    def _consume(self) -> list:
        """One ``consume`` (in the consumer's thread), then the assigned partitions' watermarks and positions."""
        assert self.consumer is not None
        consumer = self.consumer
        messages = consumer.consume(self.max_records, 0.5)
        assigned = self.assigned
        if assigned:
            rd = [RdTopicPartition(tp.topic, tp.partition) for tp in assigned]
            self._positions = {
                TopicPartition(tp.topic, tp.partition): tp.offset for tp in consumer.position(rd)
            }
            self._watermarks = {
                TopicPartition(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, cached=True)[1]
                for tp in rd
            }
        return messages

    # The loop --------------------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        assert self.consumer is not None
        loop = asyncio.get_running_loop()
        topics = self.core.processor.topics
        last_commit = time.monotonic()
        while not self._stopping:
            try:
                messages = await loop.run_in_executor(self._thread, self._consume)
                if self._rewind_wanted or self.core.needs_rewind:
                    # fetched before the failure was known: from positions the rewind discards
                    await self._rewind()
                    continue
                if messages:
                    batch, _ = group_records(messages)
                    if batch:
                        self.busy = True
                        try:
                            await self.core.process(batch, owned=whole_partitions(self.assigned, topics))
                        finally:
                            self.busy = False
                        self._report_lag(batch)
                if time.monotonic() - last_commit > 0.5:
                    self._commit_async()
                    last_commit = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: batch failed; rewinding to the durable state", self.core.processor.name)
                await asyncio.sleep(1)
                self._rewind_wanted = True

    def _report_lag(self, batch: dict[TopicPartition, list[Record]]) -> None:
        for tp, recs in batch.items():
            if not recs or tp.partition not in self.core.partitions:
                continue
            hw = self._watermarks.get(tp, -1)
            if hw >= 0:
                CONSUMER_LAG.labels(self.core.processor.name, tp.topic, str(tp.partition)).set(
                    max(0, hw - recs[-1].offset - 1)
                )

    async def _rewind(self) -> None:
        """Seek every assigned partition back to the offsets its recovered state reflects (between two
        ``consume`` calls: the loop's own task)."""
        assert self.consumer is not None
        try:
            tps = list(self.assigned)
            await self.core.recover({tp.partition for tp in tps})
            unknown = [
                RdTopicPartition(tp.topic, tp.partition)
                for tp in tps
                if self.core.applied_offset(tp.topic, tp.partition) is None
            ]
            committed = {}
            if unknown:  # nothing applied yet: back to the committed offset (the start when there is none)
                got = await asyncio.get_running_loop().run_in_executor(
                    self._thread, self.consumer.committed, unknown, 10
                )
                committed = {(tp.topic, tp.partition): tp.offset for tp in got}
            targets = []
            for tp in tps:
                applied = self.core.applied_offset(tp.topic, tp.partition)
                if applied is None:
                    applied = committed.get((tp.topic, tp.partition), OFFSET_BEGINNING)
                    applied = applied if applied >= 0 else OFFSET_BEGINNING
                targets.append(RdTopicPartition(tp.topic, tp.partition, applied))
            seek = self.consumer.seek
            await asyncio.get_running_loop().run_in_executor(self._thread, lambda: [seek(t) for t in targets])
            self.core.needs_rewind = False
            self._rewind_wanted = False
        except Exception:
            log.exception("rewind failed; will retry")
            await asyncio.sleep(1)

    async def _every(self, interval: float, action, what: str) -> None:
        """Run the core's ``action`` every ``interval`` seconds (ticks, pending emits); a failure asks the loop to
        rewind."""
        while True:
            await asyncio.sleep(interval)
            try:
                await action()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: %s failed", self.core.processor.name, what)
                self._rewind_wanted = True

    def caught_up(self) -> bool:
        """Every assigned partition applied up to its high watermark (as of the last ``consume``)."""
        assigned = self.assigned
        for tp in assigned:
            hw = self._watermarks.get(tp, -1)
            # the position also passes transaction control records, which no applied offset ever does
            done = max(self.core.applied_offset(tp.topic, tp.partition) or -1, self._positions.get(tp, -1))
            if hw < 0 or (hw > 0 and done < hw):
                return False
        return bool(assigned) and not self.busy and not self.core.writes_in_flight
