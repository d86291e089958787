"""The archiver: every record of the archived topics into the archive, exactly once.

It reads the topics like a stream processor (batches from an aiokafka consumer, nothing per message) but keeps
its offsets where its output is: in the archive's state file, written in the same atomic step that publishes
the Parquet files (:mod:`services.archive.store`). It assigns itself every partition of its topics (one writer
per state file; no consumer group to rebalance) and starts each partition at the offset of its last commit.

Broker epochs: an embedded broker keeps records in memory and restarts empty, its offsets from 0 again. The
archiver marks each broker's life with an id on ``ioc.internal.archive.epoch`` (written by whoever finds that
topic empty) and keeps offsets per epoch; records that a replay copied from the archive carry the
``ioc_archive_replay`` header and are skipped (counted as consumed), so a restore never archives them twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import fnmatch
import logging
import time
import uuid
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.archive.metrics import (
    ARCHIVED,
    BYTES_WRITTEN,
    COMMIT_SECONDS,
    COMMITS,
    LAG,
    LAST_COMMIT,
    SKIPPED,
)
from services.archive.settings import ArchiveSettings
from services.archive.store import KEPT_EPOCHS, ArchiveStore, Commit
from services.archive.tables import REPLAY_HEADER, TopicBuffer, event_dates
from shared.config import KafkaSettings
from shared.contracts import TOPICS
from shared.contracts.base import TopicSpec, register_topic
from shared.kafka.admin import ensure_topics
from shared.tasks import stop_tasks

log = logging.getLogger(__name__)

EPOCH_TOPIC = register_topic(
    TopicSpec(
        name="ioc.internal.archive.epoch",
        partitions=1,
        key="none",
        owner="archive",
        description="One record per broker life: the id the archiver files its offsets under (internal)",
        # kept forever: were the record deleted by retention, the archiver would take the broker for a new
        # one and read every retained record again under a new epoch
        retention_ms=-1,
        compacted=False,
        internal=True,
    )
)


def archived_topics(settings: ArchiveSettings) -> list[str]:
    """The topics this archiver writes: its ``topics`` setting, else every non-internal catalogue topic."""
    names = settings.topics or [t.name for t in TOPICS.values() if not t.internal]
    return sorted(n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in settings.exclude))


def retention_for(settings: ArchiveSettings, topic: str) -> int:
    for pattern, days in settings.retention_days.items():
        if fnmatch.fnmatchcase(topic, pattern):
            return days
    return settings.retention_days_default


async def broker_epoch(kafka: KafkaSettings) -> str:
    """The id of this broker's life: the first record of the epoch topic, written now if there is none."""
    await ensure_topics(kafka, [EPOCH_TOPIC])
    tp = TopicPartition(EPOCH_TOPIC.name, 0)
    for attempt in range(3):
        consumer = AIOKafkaConsumer(**kafka.client_kwargs(), enable_auto_commit=False, fetch_max_wait_ms=100)
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                batch = await consumer.getmany(tp, timeout_ms=200, max_records=1)
                if batch.get(tp):
                    return batch[tp][0].value.decode()
                if consumer.highwater(tp) == 0:
                    break  # answered, and empty
        finally:
            await consumer.stop()
        if attempt == 2:
            break
        producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(EPOCH_TOPIC.name, uuid.uuid4().hex.encode(), partition=0)
        finally:
            await producer.stop()
    raise RuntimeError("could not read or write the broker epoch")


class Archiver:
    """Consume the archived topics and commit Parquet files with their offsets."""

    def __init__(self, settings: ArchiveSettings, kafka: KafkaSettings | None = None):
        self.settings = settings
        self.kafka = kafka or settings.kafka
        self.store = ArchiveStore(
            settings.root,
            settings.storage_options,
            row_group_rows=settings.row_group_rows,
            compression_level=settings.compression_level,
        )
        self.topics = archived_topics(settings)
        self.epoch = ""
        self.state: dict[str, Any] = {}
        self.buffers: dict[str, TopicBuffer] = {}
        self.buffered = 0
        self.oldest_buffered = 0.0
        self.consumer: AIOKafkaConsumer | None = None
        self.archived = 0
        self.skipped = 0
        self.commits = 0
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self._positions: dict[TopicPartition, int] = {}
        self._last_maintenance = 0.0
        self._committing: asyncio.Future | None = None

    # Life ------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await ensure_topics(self.kafka, [TOPICS[t] for t in self.topics if t in TOPICS])
        self.epoch = await broker_epoch(self.kafka)
        self.state = await asyncio.to_thread(self.store.recover, self.settings.name)
        epochs = self.state.setdefault("epochs", [])
        if self.epoch not in epochs:
            epochs.append(self.epoch)
        self.buffers = {t: TopicBuffer(t, self.epoch) for t in self.topics}
        self.consumer = AIOKafkaConsumer(
            **self.kafka.client_kwargs(),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            client_id=f"{self.settings.name}-archiver",
        )
        await self.consumer.start()
        tps = []
        for topic in self.topics:
            spec = TOPICS.get(topic)
            if spec is not None:  # created with this count (ensure_topics above)
                parts = set(range(self.kafka.partitions_override or spec.partitions))
            else:
                parts = self.consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        done = self.state.get("offsets", {}).get(self.epoch, {})
        for tp in tps:
            offset = done.get(tp.topic, {}).get(str(tp.partition))
            if offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)
        self._tasks = [asyncio.create_task(self._loop(), name="archiver:loop")]
        log.info("archiver started", extra={"topics": len(self.topics), "epoch": self.epoch})

    async def stop(self) -> None:
        self._stopping = True
        await stop_tasks(self._tasks, timeout=30)
        if self._committing is not None and not self._committing.done():
            with contextlib.suppress(Exception):
                await self._committing
        with contextlib.suppress(Exception):
            await self.flush()
        if self.consumer is not None:
            await self.consumer.stop()
            self.consumer = None

    @contextlib.asynccontextmanager
    async def running(self):
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    # Consuming -------------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        assert self.consumer is not None
        while not self._stopping:
            try:
                batch = await self.consumer.getmany(timeout_ms=200, max_records=50_000)
                lag: dict[str, int] = {}
                for tp, records in batch.items():
                    self._buffer(tp, records)
                    hw = self.consumer.highwater(tp)
                    if hw is not None and records:
                        lag[tp.topic] = lag.get(tp.topic, 0) + max(0, hw - records[-1].offset - 1)
                for topic, n in lag.items():
                    LAG.labels(topic).set(n)
                if self.buffered and (
                    self.buffered >= self.settings.flush_records
                    or time.monotonic() - self.oldest_buffered >= self.settings.flush_seconds
                ):
                    await self.flush()
                if time.monotonic() - self._last_maintenance >= self.settings.maintenance_seconds:
                    self._last_maintenance = time.monotonic()
                    await asyncio.to_thread(self.maintain, datetime.now(UTC).date())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("archiver batch failed; resuming from the last commit")
                await asyncio.sleep(1)
                await self._rewind()

    def _buffer(self, tp: TopicPartition, records) -> None:
        buf = self.buffers[tp.topic]
        if not self.buffered:
            self.oldest_buffered = time.monotonic()
        p = tp.partition
        for r in records:
            if r.headers and any(k == REPLAY_HEADER for k, _ in r.headers):
                buf.skip(p, r.offset)
                self.skipped += 1
                SKIPPED.labels(tp.topic).inc()
                continue
            buf.add(p, r.offset, r.key, r.value, r.timestamp, r.headers)
            self.buffered += 1
        if records:
            self._positions[tp] = records[-1].offset + 1

    async def _rewind(self) -> None:
        """Forget what is buffered and seek back to the committed offsets (after a failed commit)."""
        self.buffers = {t: TopicBuffer(t, self.epoch) for t in self.topics}
        self.buffered = 0
        self.state = await asyncio.to_thread(self.store.recover, self.settings.name)
        assert self.consumer is not None
        done = self.state.get("offsets", {}).get(self.epoch, {})
        for tp in self.consumer.assignment():
            offset = done.get(tp.topic, {}).get(str(tp.partition))
            if offset is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, offset)

    async def flush(self) -> int:
        """Commit what is buffered (files and offsets in one step); returns the records written."""
        pending = [(t, b) for t, b in self.buffers.items() if b.ranges]
        if not pending:
            return 0
        started = time.perf_counter()
        taken = [(t, *b.take()) for t, b in pending]
        self.buffered = 0
        # Shielded: a stop cancelling the loop must not leave a commit running behind a second one.
        self._committing = asyncio.ensure_future(asyncio.to_thread(self._commit, taken))
        rows = await asyncio.shield(self._committing)
        self.archived += rows
        self.commits += 1
        COMMITS.inc()
        COMMIT_SECONDS.observe(time.perf_counter() - started)
        LAST_COMMIT.set(time.time())
        for topic, table, _ in taken:
            ARCHIVED.labels(topic).inc(table.num_rows)
        return rows

    def _commit(self, taken: list[tuple[str, pa.Table, dict[int, list[int]]]]) -> int:
        self.state, rows = commit_tables(self.store, self.settings.name, self.state, self.epoch, taken)
        return rows

    # Maintenance -----------------------------------------------------------------------------------------
    def maintain(self, today: date) -> dict[str, int]:
        """Compact small files and expire dates past each topic's retention (between commits)."""
        merged = expired = 0
        for topic in self.store.topics():
            expired += len(self.store.expire(topic, retention_for(self.settings, topic), today))
            for day in self.store.dates(topic):
                files = self.store.compaction_candidates(
                    topic,
                    day,
                    small_bytes=self.settings.compact_small_bytes,
                    min_files=self.settings.compact_min_files if day >= today else 2,
                )
                if files:
                    self.store.compact(self.settings.name, self.state, topic, day, files)
                    merged += len(files)
        return {"files_merged": merged, "dates_expired": expired}

    # Tests and tools -------------------------------------------------------------------------------------
    def caught_up(self, ends: dict[TopicPartition, int]) -> bool:
        done = self.state.get("offsets", {}).get(self.epoch, {})
        return all(done.get(tp.topic, {}).get(str(tp.partition), 0) >= end for tp, end in ends.items())


def commit_tables(
    store: ArchiveStore,
    name: str,
    state: dict[str, Any],
    epoch: str,
    taken: list[tuple[str, pa.Table, dict[int, list[int]]]],
) -> tuple[dict[str, Any], int]:
    """Write the tables of one commit (one file per topic and event date) and publish them with the offsets
    they cover; returns the new state (``state`` itself is left as it was) and the rows written."""
    state = copy.deepcopy(state)
    seq = int(state.get("seq", 0)) + 1
    commit = Commit()
    offsets = state.setdefault("offsets", {}).setdefault(epoch, {})
    for topic, table, ranges in taken:
        if table.num_rows:
            dates = event_dates(table)
            for day in pc.unique(dates).to_pylist():
                if day is None:  # neither an event time nor a Kafka timestamp
                    part, day = table.filter(pc.is_null(dates)), date(1970, 1, 1)
                else:
                    part = table.filter(pc.equal(dates, pa.scalar(day, pa.date32())))
                store.stage(commit, topic, day, f"part-{epoch[:8]}-{seq:010d}", part)
        topic_offsets = offsets.setdefault(topic, {})
        for p, (_, end) in ranges.items():
            topic_offsets[str(p)] = max(end, topic_offsets.get(str(p), 0))
    state["seq"] = seq
    epochs = state.setdefault("epochs", [])
    if epoch not in epochs:
        epochs.append(epoch)
    state["epochs"] = epochs[-KEPT_EPOCHS:]
    state["offsets"] = {e: o for e, o in state["offsets"].items() if e in state["epochs"]}
    store.publish(name, state, commit)
    BYTES_WRITTEN.inc(commit.bytes)
    return state, commit.rows


def write_records(store: ArchiveStore, name: str, epoch: str, records) -> int:
    """Archive ``records`` — (topic, partition, offset, key, value, timestamp_ms, headers) tuples read some
    other way than from the broker (benchmarks, imports) — in one commit; returns the rows written."""
    buffers: dict[str, TopicBuffer] = {}
    for topic, partition, offset, key, value, ts_ms, headers in records:
        buf = buffers.get(topic)
        if buf is None:
            buf = buffers[topic] = TopicBuffer(topic, epoch)
        buf.add(partition, offset, key, value, ts_ms, headers)
    state = store.recover(name)
    _, rows = commit_tables(store, name, state, epoch, [(t, *b.take()) for t, b in buffers.items()])
    return rows


async def run(settings: ArchiveSettings, stop: asyncio.Event) -> None:
    """Run an archiver until ``stop`` is set (``ioc archive run``)."""
    async with Archiver(settings).running():
        await stop.wait()
