"""Running stream processors: :class:`ProcessorRuntime` hosts a :class:`StreamProcessor` in a worker.

Two drivers share :class:`shared.stream.core.ProcessorCore` (state, dedup, changelog, recovery):

- ``faust`` (default, :mod:`shared.stream.faust_driver`): a faust-streaming app supplies the worker, the
  consumer group and rebalancing, offset commits and timers; its consumer loop is replaced by one that hands
  whole fetched batches to the core instead of wrapping every message in asyncio tasks (the per-message cost
  that limits a plain Faust agent to a few thousand events/s here).
- ``aiokafka``: the same core under a plain aiokafka consumer group (tests of the core, the benchmark's
  reference, and a fallback).
- ``librdkafka`` (:mod:`shared.stream.librdkafka_driver`): the same core under a confluent-kafka consumer
  (records parsed in C; the group co-partitioned by librdkafka's range assignor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from shared.config import KafkaSettings
from shared.contracts import TOPICS, TopicSpec
from shared.contracts.common import DEAD_LETTER_TOPIC
from shared.gc_tuning import tune_gc
from shared.kafka.admin import ensure_topics
from shared.kafka.aiokafka_adapter import bare_records, group_generation, route_bare_records_fetches
from shared.kafka.producer import EventPublisher
from shared.metrics import CONSUMER_LAG
from shared.stream.assignor import CoPartitionedAssignor
from shared.stream.core import DURABILITY_MODES, ProcessorCore, changelog_topic, read_to_end, whole_partitions
from shared.stream.health import HEARTBEAT
from shared.stream.processor import StreamProcessor
from shared.tasks import stop_tasks

if TYPE_CHECKING:
    from shared.stream.faust_driver import FaustDriver
    from shared.stream.librdkafka_driver import LibrdkafkaDriver

log = logging.getLogger(__name__)


def source_partitions(processor: StreamProcessor, kafka: KafkaSettings) -> int:
    counts = {kafka.partitions_override or TOPICS[t].partitions for t in processor.topics if t in TOPICS}
    if len(counts) > 1:
        raise ValueError(f"{processor.name}: source topics are not co-partitioned: {counts}")
    return counts.pop() if counts else 1


def output_topics(processor: StreamProcessor) -> list[TopicSpec]:
    """The catalogue topics a processor may write besides its sources: the dead letters and every topic of its
    domain (a processor is named ``<domain>-<what>``), the rule its KafkaUser's ACLs follow
    (deploy/k8s/generate_topics.py, ``processor_outputs``). The name is the class's when it declares one: an
    instance renamed for a consumer group of its own (tests, benchmarks) still writes its domain's topics."""
    domain = str(getattr(type(processor), "name", None) or processor.name).split("-", 1)[0]
    own = [t for t in TOPICS.values() if t.owner == domain and not t.internal]
    return [t for t in [DEAD_LETTER_TOPIC, *own] if t.name not in processor.topics]


def durability_mode() -> str:
    """``IOC_STREAM_DURABILITY``: ``auto`` (default: Kafka transactions where the broker grants them, else commit
    markers), ``transactions`` or ``markers`` (see :data:`shared.stream.core.DURABILITY_MODES`)."""
    mode = os.environ.get("IOC_STREAM_DURABILITY", "auto").strip().lower() or "auto"
    if mode not in DURABILITY_MODES:
        raise ValueError(f"IOC_STREAM_DURABILITY must be one of {', '.join(DURABILITY_MODES)}, not {mode!r}")
    return mode


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, runtime: AiokafkaDriver):
        self.runtime = runtime

    async def on_partitions_revoked(self, revoked):
        async with self.runtime.core.lock:
            await self.runtime.core.settle()
        await self.runtime.commit()
        async with self.runtime.core.lock:
            self.runtime.core.drop({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned):
        runtime = self.runtime
        assert runtime.consumer is not None  # the consumer whose assignment this listener is told of
        generation = group_generation(runtime.consumer)
        runtime.generation = -1 if generation is None else generation
        runtime.core.fenced.clear()
        runtime._read_to.clear()
        await runtime.seek_to_applied(assigned)


class AiokafkaDriver:
    """The core under a plain aiokafka consumer group."""

    def __init__(self, core: ProcessorCore, kafka: KafkaSettings, *, max_records: int, fetch_wait_ms: int):
        self.core = core
        self.kafka = kafka
        self.max_records = max_records
        self.fetch_wait_ms = fetch_wait_ms
        self.consumer: AIOKafkaConsumer | None = None
        self._committed: dict[TopicPartition, int] = {}
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.busy = False
        self.generation = -1  # the consumer group generation of the current assignment
        #: topic partition → (generation, position) noted after a fetch (see ``_note_positions``)
        self._read_to: dict[TopicPartition, tuple[int, int]] = {}
        core.owner_check = self.owns

    async def start(self) -> None:
        p = self.core.processor
        self.consumer = AIOKafkaConsumer(
            **self.kafka.client_kwargs(),
            group_id=p.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10000,
            heartbeat_interval_ms=3000,
            rebalance_timeout_ms=10000,
            fetch_max_wait_ms=self.fetch_wait_ms,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            client_id=f"{p.name}-worker",
            key_deserializer=bare_records,  # the core reads records per TopicPartition (aiokafka_adapter)
            partition_assignment_strategy=(CoPartitionedAssignor(),),
            # with transactions, never fold what another worker's aborted batch wrote (a processor's sources
            # may be another one's outputs)
            isolation_level="read_committed" if self.core.transactional else "read_uncommitted",
        )
        self.consumer.subscribe(list(p.topics), listener=_Rebalance(self))
        await self.consumer.start()
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
        # A cancellation can be swallowed (Python 3.11's wait_for, see shared/tasks.py): stop_tasks cancels again
        # until the tasks end, and the loop checks ``_stopping``.
        pending = await stop_tasks(self._tasks, timeout=5)
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.commit()
            await self.consumer.stop()
        if pending:
            await stop_tasks(pending, timeout=5)

    def owns(self, partition: int) -> bool:
        """Checked by the core right before it writes a partition: still in the generation of the assignment
        (a heartbeat that found this member evicted resets it) and holding the partition whole."""
        consumer = self.consumer
        if consumer is None:
            return False
        if group_generation(consumer) != self.generation:
            return False
        return partition in whole_partitions(consumer.assignment(), self.core.processor.topics)

    async def seek_to_applied(self, tps) -> None:
        assert self.consumer is not None
        await self.core.recover({tp.partition for tp in tps})
        for tp in tps:
            applied = self.core.applied_offset(tp.topic, tp.partition)
            if applied is not None:
                self.consumer.seek(tp, applied)

    async def commit(self) -> None:
        """Commit what the core reports durable (never more), for the partitions still assigned."""
        if self.consumer is None:
            return
        assigned = self.consumer.assignment()
        offsets = {
            tp: o
            for tp in assigned
            if (o := self.core.durable_offsets.get((tp.topic, tp.partition))) is not None
            and o > self._committed.get(tp, -1)
        }
        if offsets:
            await self.consumer.commit(offsets)
            self._committed.update(offsets)

    async def _loop(self) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        last_commit = time.monotonic()
        while not self._stopping:
            try:
                generation = self.generation
                batch = await consumer.getmany(timeout_ms=500, max_records=self.max_records)
                if generation == self.generation:
                    await self._note_positions(consumer.assignment() - batch.keys(), generation)
                if batch:
                    self.busy = True
                    try:
                        owned = whole_partitions(consumer.assignment(), self.core.processor.topics)
                        await self.core.process(batch, owned=owned)
                    finally:
                        self.busy = False
                    for tp, recs in batch.items():
                        end = self._readable_end(tp)
                        if end is not None and recs and tp.partition in self.core.partitions:
                            CONSUMER_LAG.labels(self.core.processor.name, tp.topic, str(tp.partition)).set(
                                max(0, end - recs[-1].offset - 1)
                            )
                if time.monotonic() - last_commit > 0.5:
                    await self.commit()
                    last_commit = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: batch failed; rewinding to the durable state", self.core.processor.name)
                await asyncio.sleep(1)
                await self._rewind()

    def _readable_end(self, tp: TopicPartition) -> int | None:
        """The last stable offset when reading committed data (an open transaction holds it below the high
        watermark), else the high watermark; None before the first fetch answer."""
        assert self.consumer is not None
        if self.core.transactional:
            lso = self.consumer.last_stable_offset(tp)
            return None if lso is None or lso < 0 else lso
        return self.consumer.highwater(tp)

    async def _note_positions(self, quiet: set[TopicPartition], generation: int) -> None:
        """Remember the position of partitions the last fetch got no records of while their applied offset is
        below their readable end: transaction markers and aborted records take offsets that no data record,
        so no applied offset, ever passes; the position does (see FaustDriver._note_positions)."""
        assert self.consumer is not None
        for tp in quiet:
            applied = self.core.applied_offset(tp.topic, tp.partition)
            end = self._readable_end(tp)
            if applied is None or end is None or applied >= end:
                continue
            try:
                position = await self.consumer.position(tp)
            except Exception:  # unassigned meanwhile
                continue
            self._read_to[tp] = (generation, position)
            if tp.partition in self.core.partitions:  # (a trailing transaction marker is no lag)
                CONSUMER_LAG.labels(self.core.processor.name, tp.topic, str(tp.partition)).set(
                    max(0, end - position)
                )

    async def _rewind(self) -> None:
        assert self.consumer is not None
        self._read_to.clear()  # the positions move back to the applied offsets
        try:
            await self.seek_to_applied(self.consumer.assignment())
            self.core.needs_rewind = False
        except Exception:
            log.exception("rewind failed; will retry")

    async def _every(self, interval: float, action, what: str) -> None:
        """Run the core's ``action`` every ``interval`` seconds (ticks, pending emits); rewind when it fails."""
        while True:
            await asyncio.sleep(interval)
            try:
                await action()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: %s failed", self.core.processor.name, what)
                await self._rewind()

    def caught_up(self) -> bool:
        """Every assigned partition applied up to its readable end, or (transaction markers and aborted records
        in between) the consumer's position there in this generation."""
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            applied = self.core.applied_offset(tp.topic, tp.partition)
            if not read_to_end(applied, self._readable_end(tp), self._read_to.get(tp), self.generation):
                return False
        return bool(self.consumer.assignment()) and not self.busy and not self.core.writes_in_flight


class ProcessorRuntime:
    """Host one processor in this process. ``driver`` is ``"faust"`` (default), ``"aiokafka"`` or
    ``"librdkafka"``."""

    def __init__(
        self,
        processor: StreamProcessor,
        kafka: KafkaSettings,
        *,
        publisher: EventPublisher | None = None,
        driver: str = "faust",
        max_records: int = 20000,
        fetch_wait_ms: int = 100,
        durability: str | None = None,
        outputs: Iterable[TopicSpec] | None = None,
    ):
        self.processor = processor
        #: created at start when missing (default: :func:`output_topics`)
        self.outputs = list(output_topics(processor) if outputs is None else outputs)
        self.kafka = kafka
        self.publisher = publisher or EventPublisher(kafka, client_id=f"ioc-{processor.name}")
        self.partitions = source_partitions(processor, kafka)
        self.changelog = changelog_topic(processor, self.partitions)
        self.core = ProcessorCore(
            processor, kafka, self.publisher, self.changelog, durability=durability or durability_mode()
        )
        self.driver_name = driver
        self.max_records = max_records
        self.fetch_wait_ms = fetch_wait_ms
        self.driver: FaustDriver | AiokafkaDriver | LibrdkafkaDriver | None = None

    async def start(self) -> None:
        tune_gc()
        route_bare_records_fetches()  # the aiokafka overrides (shared.kafka.aiokafka_adapter)
        HEARTBEAT.start()  # /livez of `ioc process` fails when this loop stops beating (shared.stream.health)
        await ensure_topics(
            self.kafka, [TOPICS[t] for t in self.processor.topics if t in TOPICS] + [self.changelog]
        )
        await self._ensure_outputs()
        await self.core.start()
        if self.driver_name == "faust":
            from shared.stream.faust_driver import FaustDriver

            driver: FaustDriver | AiokafkaDriver | LibrdkafkaDriver = FaustDriver(
                self.core, self.kafka, max_records=self.max_records, fetch_wait_ms=self.fetch_wait_ms
            )
        elif self.driver_name == "librdkafka":
            from shared.stream.librdkafka_driver import LibrdkafkaDriver

            driver = LibrdkafkaDriver(
                self.core, self.kafka, max_records=self.max_records, fetch_wait_ms=self.fetch_wait_ms
            )
        else:
            driver = AiokafkaDriver(
                self.core, self.kafka, max_records=self.max_records, fetch_wait_ms=self.fetch_wait_ms
            )
        self.driver = driver
        await driver.start()

    async def _ensure_outputs(self) -> None:
        """Create the output topics that do not exist yet, before the first batch: a batch emitting to a missing
        topic would wait for its metadata (the publisher probes for it, then creates it from the catalogue),
        holding the batch lock and, with transactions, the partition's open transaction; an uncatalogued one
        failed every batch that way, retried for ever. A topic that exists is left as it is (production's
        are created by the operator: processors hold no Create ACL on them and need none then)."""
        if not self.outputs:
            return
        try:
            created = await ensure_topics(self.kafka, self.outputs)
        except Exception as exc:
            raise RuntimeError(
                f"{self.processor.name}: cannot make sure its output topics exist "
                f"({', '.join(t.name for t in self.outputs)}): {type(exc).__name__}: {exc}. Create them first "
                "(the owning service does at its start with IOC_CREATE_TOPICS; in Kubernetes, the KafkaTopics)"
            ) from exc
        if created:
            log.info("output topics created", extra={"processor": self.processor.name, "topics": created})

    async def stop(self) -> None:
        if self.driver is not None:
            await self.driver.stop()
        await self.core.stop()
        await self.publisher.stop()
        await HEARTBEAT.stop()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ProcessorRuntime]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until every assigned source partition is consumed to the end of what the consumer can read (the
        high watermark; with transactions the last stable offset, past the transaction markers), then tick once."""
        deadline = time.monotonic() + timeout
        stable = 0
        while time.monotonic() < deadline:
            if self.driver is not None and self.core.writes_in_flight and not self.driver.busy:
                async with self.core.lock:
                    await self.core.settle()
            if self.driver is not None and self.driver.caught_up():
                stable += 1
                if stable >= 3:
                    await self.core.tick()
                    return
            else:
                stable = 0
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.processor.name} did not catch up within {timeout}s")
