"""The driver-independent heart of the stream runtime.

:class:`ProcessorCore` owns the per-partition state of one processor and does, for each fetched batch:
decode + validate (poison records to the dead-letter topic), skip what the state already reflects (per
topic-partition applied offsets, and a window of recent CloudEvents ``source``+``id``), ``apply`` every event,
``emit`` outputs, then makes the batch durable in one step: outputs and the changed state keys go to the broker
and a *commit marker* closes the batch on the changelog. Only then are source offsets committable.

Changelog layout (topic ``ioc.internal.<processor>.changelog``, compacted, partition = source partition):
- one record per changed state key (key = state key, value = JSON, or a tombstone for a deleted key), with a
  header ``ioc_seq`` = the batch sequence number;
- then one marker record, key ``__applied__``, value ``{"seq": n, "offsets": {topic: next offset}}``.
Recovery reads the partition to the high watermark of the fetch responses (the embedded broker's ListOffsets
can be wrong), keeps the last marker, and sets aside key records newer than that marker (a crash between the
key records and the marker, even when they spanned several record batches) without losing the values earlier
markers made durable (:class:`_ChangelogReplay`): the batch is simply applied again from the source. This gives
at-least-once delivery with exactly-once effects on state: a worker killed mid-batch never double-counts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced

from shared.config import KafkaSettings
from shared.contracts.base import TopicSpec
from shared.contracts.cloudevents import EncodedEvent, decode_batch, parse_time
from shared.contracts.provenance import verifier_for
from shared.kafka.consumer import dead_letter
from shared.kafka.producer import EventPublisher, partition_for
from shared.kafka.rekey import Boundaries, misplaced, read_boundaries
from shared.metrics import (
    CONSUMER_LAG,
    EVENTS_CONSUMED,
    EVENTS_DEAD_LETTERED,
    LAST_PROCESSED,
    PROCESSING_LATENCY,
    STATE_KEYS,
    STREAM_RECORDS_REFUSED,
    STREAM_WRITES_FENCED,
)
from shared.stream.processor import State, StreamProcessor

log = logging.getLogger(__name__)

MARKER_KEY = b"__applied__"
SEQ_HEADER = "ioc_seq"
_type_of = attrgetter("type")
_event_key = attrgetter("source", "id")  # CloudEvents identity


def _itself(x):
    return x


#: how batches become durable: ``markers`` (commit markers on the changelog, any broker), ``transactions`` (one
#: Kafka transaction per partition and batch: outputs, changelog and source offsets; needs a broker with
#: transactions), ``auto`` (transactions when the broker grants a transactional producer, else markers)
DURABILITY_MODES = ("auto", "markers", "transactions")
#: longest a partition's transaction may take to commit (or abort) before the batch fails and is retried
TRANSACTION_TIMEOUT_S = 30.0


def read_to_end(applied: int | None, end: int | None, read: tuple[int, int] | None, generation: int) -> bool:
    """Whether a driver has read a source partition to ``end`` (its readable end; None before a fetch answer):
    its applied offset reached it, or (transaction markers and aborted records take offsets no data record
    passes) the consumer's position ``read`` = (generation, position), noted in this ``generation``, did."""
    if end is None:
        return False
    if end <= 0 or (applied is not None and applied >= end):
        return True
    return applied is not None and read is not None and read[0] == generation and read[1] >= end


def whole_partitions(assignment: Iterable[TopicPartition], topics: Iterable[str]) -> set[int]:
    """The partition numbers of which ``assignment`` holds every one of ``topics``: the partitions whose state a
    worker may fold (a partition of only some source topics would fold half of its events)."""
    need = set(topics)
    held: dict[int, set[str]] = {}
    for tp in assignment:
        held.setdefault(tp.partition, set()).add(tp.topic)
    return {p for p, got in held.items() if got >= need}


def changelog_topic(processor: StreamProcessor, partitions: int) -> TopicSpec:
    return TopicSpec(
        name=f"ioc.internal.{processor.name}.changelog",
        partitions=partitions,
        key="state key",
        owner=processor.name,
        description=f"State changelog of the {processor.name} processor (internal)",
        retention_ms=None,
        compacted=True,
        internal=True,
    )


@dataclass
class PartitionRuntime:
    """A partition's state plus what the runtime needs to keep effects exactly-once."""

    state: State
    seq: int = 0
    applied: dict[str, int] = field(default_factory=dict)  # topic → next offset already reflected in state
    marked: dict[str, int] = field(default_factory=dict)  # ``applied`` as of the last commit marker sent
    recent: set = field(default_factory=set)
    recent_order: deque = field(default_factory=deque)  # eviction order of ``recent`` (oldest first)
    window: int = StreamProcessor.dedup_window  # how many keys ``recent`` keeps (the processor's); 0: none

    def unseen(self, items: list, key=_event_key) -> list:
        """The items of a batch whose ``key`` (CloudEvents ``source`` + ``id``) was not seen before, remembering
        them. A set plus a deque, evicted once per batch (the window briefly holds a batch more): O(1) both
        ways. (Evicting the first key of a dict is not: CPython skips the deleted slots at the front of the dict
        on every ``next(iter(d))``, which made this quadratic.)
        """
        if not self.window:
            return items
        recent = self.recent
        add = recent.add
        order = self.recent_order
        remember = order.append
        fresh: list = []
        keep = fresh.append
        for item in items:
            k = key(item)
            if k not in recent:
                add(k)
                remember(k)
                keep(item)
        for _ in range(len(order) - self.window):
            recent.discard(order.popleft())
        return fresh


class _ChangelogReplay:
    """One changelog partition read in log order: the state as of its last commit marker.

    Key records carry their batch's sequence number ``ioc_seq``; a marker of sequence *s* makes every key record
    read so far with a sequence up to *s* durable, in log order (a tombstone deletes). Key records after the last
    marker (a batch cut short by a crash, however many record batches it spanned) are set aside without touching
    the values earlier markers made durable: :attr:`cut_short` names their keys, which the next batch writes again
    with their durable value, so that a compacted log (where older markers are gone and "up to *s*" is all one can
    tell) never lets a later marker adopt them. Sequence numbers are never reused after a cut-short batch.
    Only the records after the last marker are buffered, not the whole log.
    """

    __slots__ = ("_durable", "_open", "cut_short", "marker", "max_seq")

    def __init__(self) -> None:
        self._durable: dict[bytes, bytes] = {}
        self._open: dict[int, dict[bytes, bytes | None]] = {}  # seq → key records after the last marker
        self.marker: dict = {"seq": 0, "offsets": {}}
        self.max_seq = 0
        self.cut_short: set[str] = set()

    def add(self, record) -> None:
        if record.key == MARKER_KEY:
            marker = orjson.loads(record.value)
            seq = marker["seq"]
            for open_seq in sorted(s for s in self._open if s <= seq):
                for key, value in self._open.pop(open_seq).items():
                    if value is None:
                        self._durable.pop(key, None)
                    else:
                        self._durable[key] = value
            self.marker = marker
            self.max_seq = max(self.max_seq, seq)
            return
        seq = 0
        for name, value in record.headers or ():
            if name == SEQ_HEADER:
                seq = int(value)
                break
        self.max_seq = max(self.max_seq, seq)
        self._open.setdefault(seq, {})[record.key] = record.value

    def state(self) -> dict:
        """The durable state (call once, at the end of the partition)."""
        for recs in self._open.values():
            self.cut_short.update(k.decode() for k in recs)
        self._open = {}
        return {k.decode(): orjson.loads(v) for k, v in self._durable.items()}


class ProcessorCore:
    """State, batch processing and durability for one processor in one worker process."""

    def __init__(
        self,
        processor: StreamProcessor,
        kafka: KafkaSettings,
        publisher: EventPublisher,
        changelog: TopicSpec,
        *,
        durability: str = "auto",
    ):
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {DURABILITY_MODES}, not {durability!r}")
        self.processor = processor
        self.durability = durability
        #: decided in :meth:`start`: each batch commits as Kafka transactions (else: commit markers)
        self.transactional = False
        self._txn_producers: dict[int, AIOKafkaProducer] = {}
        self._output_partitions: dict[str, int] = {}
        #: set by the driver: does this worker still own partition ``p`` (checked before each write)?
        self.owner_check: Callable[[int], bool] | None = None
        #: partitions whose writes were fenced (another worker owns them now); the driver clears it on assignment
        self.fenced: set[int] = set()
        #: who wrote a commit marker (worker process and instance): tells owners apart on the changelog
        self.writer = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.kafka = kafka
        self.publisher = publisher
        self.changelog = changelog
        self.provenance = verifier_for(kafka)  # who may produce on each source topic
        self.partitions: dict[int, PartitionRuntime] = {}
        self.lock = asyncio.Lock()
        self._recovering = asyncio.Lock()  # one recovery at a time (see ``recover``)
        self._producer: AIOKafkaProducer | None = None
        self.processed = 0
        self.emitted = 0
        self.dead_lettered = 0
        #: set after a failure: the driver must seek its sources back to the recovered applied offsets
        self.needs_rewind = False
        self._pending: asyncio.Future | None = None
        self._last_emit = 0.0
        self._unemitted: set[int] = set()  # partitions with batches applied since the last emit
        self._sent_offsets: dict[tuple[str, int], int] = {}
        #: (topic, partition) → next offset whose effects are acknowledged by the broker: safe to commit
        self.durable_offsets: dict[tuple[str, int], int] = {}
        #: re-key boundaries of the sources (shared/kafka/rekey.py): records below them in the wrong partition
        #: were copied to their key's partition, where they are folded instead; read in :meth:`start`
        self.rekeyed: Boundaries = {}

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            **self.kafka.client_kwargs(),
            acks="all",
            linger_ms=0,
            enable_idempotence=self.kafka.enable_idempotence,
            compression_type=self.kafka.producer_compression,  # the changelog too (docs/operations.md, Disk)
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
            client_id=f"{self.processor.name}-state",
        )
        await self._producer.start()
        await self.publisher.start()
        self.rekeyed = await read_boundaries(self.kafka, self.processor.name)
        if self.durability != "markers":
            self.transactional = await self._broker_grants_transactions()
            if self.durability == "transactions" and not self.transactional:
                raise RuntimeError(
                    f"{self.processor.name}: IOC_STREAM_DURABILITY=transactions but the broker refuses a "
                    "transactional producer (the embedded broker has no transactions; on Kafka, check the "
                    f"principal's TransactionalId ACL for ioc-{self.processor.name}-*)"
                )
        log.info(
            "stream durability",
            extra={"processor": self.processor.name, "transactions": self.transactional},
        )

    async def _broker_grants_transactions(self) -> bool:
        """Whether the broker gives a transactional producer its id (the embedded Tansu broker answers
        InitProducerId with an error; Apache Kafka grants it)."""
        probe = self._transactional_producer(f"ioc-{self.processor.name}-probe")
        try:
            async with asyncio.timeout(15):
                await probe.start()
            return True
        except Exception as exc:  # UnknownError, UnsupportedVersion, a timeout...
            log.info("broker refused a transactional producer (%s): commit markers", type(exc).__name__)
            return False
        finally:
            try:
                await probe.stop()
            except Exception:
                pass

    def _transactional_producer(self, transactional_id: str) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **self.kafka.client_kwargs(),
            acks="all",
            linger_ms=0,
            enable_idempotence=True,
            transactional_id=transactional_id,
            compression_type=self.kafka.producer_compression,
            max_batch_size=1024 * 1024,
            max_request_size=8 * 1024 * 1024,
            client_id=f"{self.processor.name}-txn",
        )

    def transactional_id(self, partition: int) -> str:
        """One transactional id per state partition (aiokafka's TxnOffsetCommit carries no group generation, so
        zombies are fenced the Kafka Streams "EOS v1" way: the next owner of a partition initialises the same id,
        which aborts the old owner's open transaction and makes its later writes fail with ProducerFenced)."""
        return f"ioc-{self.processor.name}-{partition}"

    async def stop(self) -> None:
        producers, self._txn_producers = list(self._txn_producers.values()), {}
        for producer in producers:
            try:
                await producer.stop()
            except Exception:
                pass
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    # Recovery ------------------------------------------------------------------------------------------------
    async def recover(self, partitions: Iterable[int]) -> None:
        """Load the state of ``partitions`` from the changelog (those not loaded yet).

        Drivers call it outside ``lock`` too (a rebalance listener, a rewind), so a batch may be processed
        meanwhile. Recoveries run one at a time and a partition loaded by the one before is not loaded again:
        that would replace the state a batch was just applied to with the durable one, losing the batch."""
        async with self._recovering:
            await self._recover([p for p in partitions if p not in self.partitions])

    async def _recover(self, todo: list[int]) -> None:
        if not todo:
            return
        self.processor.forget_emitted(todo)
        started = time.perf_counter()
        if self.transactional:
            # Initialising the partition's transactional id first aborts whatever transaction a previous owner
            # left open, so the read below (read_committed) is not held up by it and sees only committed batches.
            await asyncio.gather(*(self._claim(p) for p in todo))
        consumer = AIOKafkaConsumer(
            **self.kafka.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            isolation_level="read_committed" if self.transactional else "read_uncommitted",
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self.changelog.name, p) for p in todo]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            # End from ListOffsets is only a lower bound on the embedded broker; fetch high watermarks win.
            listed = await consumer.end_offsets(tps)
            logs = {p: _ChangelogReplay() for p in todo}
            remaining = set(tps)
            last_data = time.monotonic()
            while remaining:
                # A short poll: an empty changelog partition returns no records, and its high watermark (known
                # after the first fetch answer) is what ends it; a 200 ms poll made every empty recovery ~0.27 s.
                batch = await consumer.getmany(*remaining, timeout_ms=50, max_records=50_000)
                got = 0
                for tp, recs in batch.items():
                    got += len(recs)
                    replay = logs[tp.partition]
                    for r in recs:
                        replay.add(r)
                for tp in list(remaining):
                    hw = consumer.highwater(tp)
                    end = hw if hw is not None else listed.get(tp, 0)
                    # without a fetch answer, trust the listed end only after 200 ms without any data
                    if await consumer.position(tp) >= end and (
                        hw is not None or time.monotonic() - last_data >= 0.2
                    ):
                        remaining.discard(tp)
                if got:
                    last_data = time.monotonic()
        finally:
            await consumer.stop()
        for p in todo:
            replay = logs[p]
            marker = replay.marker
            state = State(p, replay.state())
            if replay.cut_short:
                log.warning(
                    "changelog tail without commit marker ignored (a batch cut short by a crash)",
                    extra={"processor": self.processor.name, "partition": p, "keys": len(replay.cut_short)},
                )
                for key in replay.cut_short:
                    state.mark_changed(key)  # the next batch writes its durable value (or a tombstone) again
            self.partitions[p] = PartitionRuntime(
                state,
                # never reuse the sequence number of a batch cut short: its records must stay unclosed
                seq=max(marker["seq"], replay.max_seq),
                applied=dict(marker["offsets"]),
                marked=dict(marker["offsets"]),
                window=self.processor.dedup_window,
            )
        await self._refill_dedup_windows(todo)
        self._count_state()
        log.info(
            "state recovered",
            extra={
                "processor": self.processor.name,
                "partitions": todo,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )

    async def _claim(self, partition: int) -> None:
        old = self._txn_producers.pop(partition, None)
        if old is not None:
            try:
                await old.stop()
            except Exception:
                pass
        producer = self._transactional_producer(self.transactional_id(partition))
        await producer.start()
        self._txn_producers[partition] = producer

    async def _refill_dedup_windows(self, partitions: list[int]) -> None:
        """Refill each recovered partition's window of recent CloudEvents ids from the source records just below
        its applied offsets (headers only), so a copy of an already applied event that arrives at a new offset
        after a restart or a rebalance is still dropped."""
        window = self.processor.dedup_window
        if not window:
            return
        ranges: dict[TopicPartition, tuple[int, int]] = {}
        per_topic = max(1, window // max(1, len(self.processor.topics)))
        for p in partitions:
            for topic, applied in self.partitions[p].applied.items():
                if applied > 0:
                    ranges[TopicPartition(topic, p)] = (max(0, applied - per_topic), applied)
        if not ranges:
            return
        consumer = AIOKafkaConsumer(
            **self.kafka.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=8 * 1024 * 1024,
        )
        await consumer.start()
        try:
            consumer.assign(list(ranges))
            for tp, (start, _) in ranges.items():
                consumer.seek(tp, start)
            remaining = set(ranges)
            idle = 0
            while remaining and idle < 20:
                batch = await consumer.getmany(*remaining, timeout_ms=200, max_records=50_000)
                idle = idle + 1 if not batch else 0
                for tp, recs in batch.items():
                    end = ranges[tp][1]
                    keys = []
                    for r in recs:
                        if r.offset >= end:
                            break
                        h = dict(r.headers or ())
                        source, event_id = h.get("ce_source"), h.get("ce_id")
                        if source is not None and event_id is not None:
                            keys.append((source.decode(errors="replace"), event_id.decode(errors="replace")))
                    self.partitions[tp.partition].unseen(keys, key=_itself)
                    if recs and recs[-1].offset + 1 >= end:
                        remaining.discard(tp)
                for tp in list(remaining):
                    if await consumer.position(tp) >= ranges[tp][1]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this worker no longer owns (their state is durable already)."""
        partitions = list(partitions)
        for p in partitions:
            if self.partitions.pop(p, None) is not None:
                for topic in self.processor.topics:
                    try:  # a revoked partition's lag is its new owner's to report
                        CONSUMER_LAG.remove(self.processor.name, topic, str(p))
                    except KeyError:
                        pass
            self._unemitted.discard(p)
        self.processor.forget_emitted(partitions)
        self._count_state()

    def _count_state(self) -> None:
        # After each emit (where processors prune): lets an SRE tell state growth from other memory growth.
        STATE_KEYS.labels(self.processor.name).set(sum(len(pr.state) for pr in self.partitions.values()))

    def applied_offset(self, topic: str, partition: int) -> int | None:
        pr = self.partitions.get(partition)
        return None if pr is None else pr.applied.get(topic)

    # Processing ----------------------------------------------------------------------------------------------
    async def process(
        self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]], owned: Iterable[int] | None = None
    ) -> dict[TopicPartition, int]:
        """Process one fetched batch; returns the committable next offset per topic-partition.

        ``owned``: the partitions this worker owns whole (every source topic, :func:`whole_partitions`). Those
        not loaded yet are recovered together with the batch's: one recovery for all, rather than one per
        partition as its first records arrive (each held up every partition's processing while it ran). Records
        of any other partition are refused: never folded, never committed, logged and counted
        (``ioc_stream_records_refused_total``); a co-partitioning assignor (:mod:`shared.stream.assignor`)
        never hands such records out. ``None``: no ownership known (tests of the core)."""
        async with self.lock:
            try:
                return await self._process(records, owned)
            except BaseException:
                self.needs_rewind = True
                # State may hold effects that never became durable (this batch's, or the previous pipelined
                # batch's on any partition): forget all of it, recover from the changelog.
                self.drop(list(self.partitions))
                raise

    async def _process(
        self, records: Mapping[TopicPartition, Sequence[ConsumerRecord]], owned: Iterable[int] | None
    ) -> dict[TopicPartition, int]:
        if owned is not None:
            owned = set(owned) - self.fenced
            refused = {tp: recs for tp, recs in records.items() if recs and tp.partition not in owned}
            if refused:
                self._refuse(refused, owned)
                records = {tp: recs for tp, recs in records.items() if tp not in refused}
        await self.recover({tp.partition for tp in records}.union(owned or ()))
        dead: dict[int, list[EncodedEvent]] = {}
        committable: dict[TopicPartition, int] = {}
        touched: set[int] = set()
        apply_batch = self.processor.apply_batch
        latest_time = None
        counts: dict[tuple[str, str], int] = {}
        for tp, recs in records.items():
            if not recs:
                continue
            pr = self.partitions[tp.partition]
            floor = pr.applied.get(tp.topic, -1)
            # older ones are in the recovered state
            fresh = recs if recs[0].offset >= floor else [r for r in recs if r.offset >= floor]
            boundary = self.rekeyed.get((tp.topic, tp.partition))
            if boundary is not None and fresh and fresh[0].offset < boundary[0]:
                fresh = [r for r in fresh if not misplaced(r.key, tp.partition, r.offset, boundary)]
            fresh, unauthenticated = self.provenance.verify(fresh, tp.topic, self.processor.name)
            decoded, failed = decode_batch(fresh, tp)
            failed += unauthenticated
            for r, reason in failed:
                dead.setdefault(tp.partition, []).append(dead_letter(r, reason, self.processor.name, tp))
                EVENTS_DEAD_LETTERED.labels(self.processor.name, tp.topic).inc()
            events = pr.unseen(decoded)
            if events:
                apply_batch(events, pr.state)
                latest_time = events[-1].time
                for etype, n in Counter(map(_type_of, events)).items():
                    counts[(tp.topic, etype)] = counts.get((tp.topic, etype), 0) + n
                self.processed += len(events)
            # Never move backwards: a consumer resuming at its last commit re-reads records the recovered
            # state already reflects; they were skipped above and must not lower the floor.
            pr.applied[tp.topic] = max(floor, recs[-1].offset + 1)
            committable[tp] = pr.applied[tp.topic]
            touched.add(tp.partition)
        self.dead_lettered += sum(len(d) for d in dead.values())
        now_mono = time.monotonic()
        if now_mono - self._last_emit >= self.processor.emit_interval_seconds:
            touched |= self._unemitted  # emit changes their state too: write it with this batch
            outputs = self._emit(touched, datetime.now(UTC))
            self._unemitted = set()
            self._last_emit = now_mono
        else:
            outputs = {}
            self._unemitted |= touched
        for p, letters in dead.items():
            outputs[p] = outputs.get(p, []) + letters
        await self._make_durable(touched, outputs, pipelined=True)
        for (topic, etype), n in counts.items():
            EVENTS_CONSUMED.labels(self.processor.name, topic, etype).inc(n)
        now = time.time()
        LAST_PROCESSED.labels(self.processor.name).set(now)
        if latest_time:
            try:
                PROCESSING_LATENCY.labels(self.processor.name).observe(
                    max(0.0, now - parse_time(latest_time).timestamp())
                )
            except ValueError:
                pass
        return committable

    def _refuse(self, refused: dict[TopicPartition, Sequence[ConsumerRecord]], owned: set[int]) -> None:
        n = sum(len(recs) for recs in refused.values())
        STREAM_RECORDS_REFUSED.labels(self.processor.name).inc(n)
        log.error(
            "records of a partition this worker does not own whole refused (not folded, not committed): the "
            "consumer group's assignor does not co-partition the source topics",
            extra={
                "processor": self.processor.name,
                "records": n,
                "topic_partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in refused),
                "owned": sorted(owned),
            },
        )

    async def tick(self, now: datetime | None = None) -> int:
        """Run ``emit`` on every owned partition (silence detection, window closing). Returns outputs sent."""
        async with self.lock:
            sent = await self._emit_durably(set(self.partitions), now or datetime.now(UTC), pipelined=False)
            LAST_PROCESSED.labels(self.processor.name).set(time.time())
            return sent

    async def emit_pending(self) -> int:
        """Emit for partitions whose last batches were applied but not yet emitted, once the emit interval has
        passed. Drivers call it a few times per interval: without it, the changes of the last batch before a
        pause (or of a quiet stream) would wait for the next batch or tick, seconds later. Returns outputs sent."""
        if not self._unemitted or time.monotonic() - self._last_emit < self.processor.emit_interval_seconds:
            return 0
        async with self.lock:
            parts = self._unemitted & set(self.partitions)
            # pipelined like a batch: under load the next batch need not wait for these acknowledgements
            return await self._emit_durably(parts, datetime.now(UTC), pipelined=True) if parts else 0

    async def _emit_durably(self, parts: set[int], now: datetime, *, pipelined: bool) -> int:
        """Emit ``parts`` (they are then emitted, whatever was pending) and make outputs and state changes
        durable; the caller holds the lock. On failure all state is forgotten, as after a failed batch (a
        pipelined batch may be the one that was lost)."""
        try:
            outputs = self._emit(parts, now)
            self._unemitted = set()
            self._last_emit = time.monotonic()
            await self._make_durable(parts, outputs, pipelined=pipelined)
        except BaseException:
            self.needs_rewind = True
            self.drop(list(self.partitions))
            raise
        return sum(len(out) for out in outputs.values())

    def _emit(self, partitions: Iterable[int], now: datetime) -> dict[int, list[EncodedEvent]]:
        """Outputs per partition (a partition's go in its own transaction, or are dropped if it was lost)."""
        outputs: dict[int, list[EncodedEvent]] = {}
        for p in sorted(partitions):
            outputs[p] = list(self.processor.emit(self.partitions[p].state, now))
            self.emitted += len(outputs[p])
        self._count_state()  # every emit goes through here, the batch's inline one included
        return outputs

    async def flush(self) -> None:
        """Wait until the last batch's outputs and state changes are acknowledged."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await self.publisher.wait(pending)

    @property
    def writes_in_flight(self) -> bool:
        """Whether the last batch's outputs and state changes still await the broker's acknowledgement."""
        return self._pending is not None

    async def settle(self) -> None:
        """Wait for the last batch's acknowledgements (:meth:`flush`), then count its source offsets as durable
        (committable). The caller holds the lock."""
        await self.flush()
        self.durable_offsets.update(self._sent_offsets)

    def _still_owned(self, partitions: Iterable[int]) -> list[int]:
        """``partitions`` this worker still owns, checked right before writing them. A worker that lost one (its
        consumer was evicted: paused, stalled past the session timeout) drops that partition's state and writes
        nothing of it: the new owner recovered from the changelog and applies the batch again."""
        check = self.owner_check
        keep = [p for p in partitions if p in self.partitions and p not in self.fenced]
        if check is None:
            return keep
        lost = [p for p in keep if not check(p)]
        if lost:
            self._fence(lost, "the consumer group moved it")
            keep = [p for p in keep if p not in lost]
        return keep

    def _fence(self, partitions: list[int], why: str) -> None:
        STREAM_WRITES_FENCED.labels(self.processor.name).inc(len(partitions))
        log.error(
            "writes of partitions this worker no longer owns dropped",
            extra={"processor": self.processor.name, "partitions": sorted(partitions), "why": why},
        )
        self.fenced.update(partitions)
        self.drop(partitions)

    async def _make_durable(
        self, partitions: Iterable[int], outputs: dict[int, list[EncodedEvent]], *, pipelined: bool = False
    ) -> None:
        """Send outputs, then each partition's changed keys and its commit marker (or, with transactions, each
        partition's outputs, changed keys, marker and source offsets as one transaction).

        At most one batch is in flight: the previous batch must be acknowledged before this one is sent, so a
        marker can never be durable while an earlier batch's records are not. With ``pipelined`` this batch's
        acknowledgements are awaited by the next call (or :meth:`flush`), overlapping them with the next batch's
        work; :attr:`durable_offsets` then says what is safe to commit.
        """
        await self.flush()
        self.durable_offsets.update(self._sent_offsets)
        partitions = self._still_owned(partitions)
        if self.transactional:
            await self._commit_transactions(partitions, outputs)
            return
        assert self._producer is not None
        producer = self._producer
        futures = []
        flat = [ev for p in partitions for ev in outputs.get(p, ())]
        if flat:
            futures.append(await self.publisher.send(flat))
        for p in partitions:
            pr = self.partitions[p]
            changes = pr.state.take_changes()
            if not changes and pr.applied == pr.marked:
                continue  # nothing new since the last marker (an idle tick): writing one more would be noise
            for batch in self._changelog_batches(producer, pr, changes):
                futures.append(await producer.send_batch(batch, self.changelog.name, partition=p))
        self._sent_offsets = {
            (topic, p): off for p in partitions for topic, off in self.partitions[p].applied.items()
        }
        if futures:
            self._pending = asyncio.gather(*futures)
        if not pipelined:
            await self.flush()
            self.durable_offsets.update(self._sent_offsets)

    def _changelog_batches(self, producer: AIOKafkaProducer, pr: PartitionRuntime, changes: dict) -> list:
        """The record batches of one partition's changed keys and its commit marker (the marker last)."""
        pr.marked = dict(pr.applied)
        pr.seq += 1
        seq_header = [(SEQ_HEADER, str(pr.seq).encode())]
        batches = [producer.create_batch()]
        for key, value in changes.items():
            kb = key.encode()
            vb = None if value is None else orjson.dumps(value)
            if batches[-1].append(key=kb, value=vb, timestamp=None, headers=seq_header) is None:
                batches.append(producer.create_batch())
                batches[-1].append(key=kb, value=vb, timestamp=None, headers=seq_header)
        marker = orjson.dumps({"seq": pr.seq, "offsets": pr.applied, "writer": self.writer})
        if batches[-1].append(key=MARKER_KEY, value=marker, timestamp=None, headers=seq_header) is None:
            batches.append(producer.create_batch())
            batches[-1].append(key=MARKER_KEY, value=marker, timestamp=None, headers=seq_header)
        return batches

    async def _commit_transactions(
        self, partitions: list[int], outputs: dict[int, list[EncodedEvent]]
    ) -> None:
        """One transaction per partition: its outputs, changed keys and marker (which holds the source offsets the
        state reflects) commit together or not at all (read_committed readers never see an aborted batch), all
        partitions at once. The source offsets are not sent to the consumer group inside the transaction: the
        marker is what recovery and the drivers resume from (records below it are skipped), and a TxnOffsetCommit
        (aiokafka's carries no group generation) in every transaction involved the group coordinator in the
        middle of rebalances; the group commit after the transaction, as with markers, is only where a consumer
        starts reading."""
        results = await asyncio.gather(
            *(self._commit_transaction(p, outputs.get(p, [])) for p in partitions), return_exceptions=True
        )
        failure = None
        for p, result in zip(partitions, results, strict=True):
            if isinstance(result, ProducerFenced):
                self._fence([p], "another worker initialised its transactional id")
            elif isinstance(result, BaseException):
                failure = failure or result
            elif p in self.partitions:
                for topic, off in self.partitions[p].applied.items():
                    self.durable_offsets[(topic, p)] = off
        if failure is not None:
            raise failure

    async def _commit_transaction(self, p: int, outputs: list[EncodedEvent]) -> None:
        pr = self.partitions[p]
        changes = pr.state.take_changes()
        if not changes and not outputs and pr.applied == pr.marked:
            return
        producer = self._txn_producers.get(p)
        if producer is None:  # loaded before transactions were decided (never in practice): claim it now
            await self._claim(p)
            producer = self._txn_producers[p]
        await producer.begin_transaction()
        try:
            futures = []
            by_tp: dict[tuple[str, int], list[EncodedEvent]] = {}
            for ev in outputs:
                n = self._output_partitions.get(ev.topic)
                if n is None:  # the publisher's count (it creates a catalogued topic that is missing)
                    n = self._output_partitions[ev.topic] = await self.publisher._partition_count(ev.topic)
                by_tp.setdefault((ev.topic, partition_for(ev.key, n)), []).append(ev)
            for (topic, part), evs in by_tp.items():
                batch = producer.create_batch()
                for ev in evs:
                    if batch.append(key=ev.key, value=ev.value, timestamp=None, headers=ev.headers) is None:
                        futures.append(await producer.send_batch(batch, topic, partition=part))
                        batch = producer.create_batch()
                        batch.append(key=ev.key, value=ev.value, timestamp=None, headers=ev.headers)
                futures.append(await producer.send_batch(batch, topic, partition=part))
            for batch in self._changelog_batches(producer, pr, changes):
                futures.append(await producer.send_batch(batch, self.changelog.name, partition=p))
            # A stuck broker must not hold the batch lock (and with it a rebalance) for ever.
            async with asyncio.timeout(TRANSACTION_TIMEOUT_S):
                # every send's outcome retrieved (a fenced producer fails them all: only the first is raised,
                # the others would be logged as "Future exception was never retrieved")
                sent = await asyncio.gather(*futures, return_exceptions=True)
                failed = next((r for r in sent if isinstance(r, BaseException)), None)
                if failed is not None:
                    raise failed
                await producer.commit_transaction()
        except ProducerFenced:
            raise
        except (KafkaError, OSError, TimeoutError):
            try:
                async with asyncio.timeout(TRANSACTION_TIMEOUT_S):
                    await producer.abort_transaction()
            except Exception:
                pass
            raise
