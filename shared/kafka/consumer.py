"""A validating, batch-at-a-time consumer with dead-lettering and manual commits.

Records are fetched with ``getmany``, decoded and validated; a record that fails goes to ``ioc.deadletter``
(original bytes and headers plus the error, topic, partition and offset) and the consumer moves on, so a
poison message never stalls a partition. The handler gets the valid events of a batch; offsets are committed
only after it returned (at-least-once), so handlers must be idempotent (dedup on ``source`` + ``id``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from shared.config import KafkaSettings
from shared.contracts.cloudevents import EncodedEvent, EventDecodeError, ReceivedEvent, decode, parse_time
from shared.contracts.common import DEAD_LETTER_TOPIC
from shared.contracts.provenance import verifier_for
from shared.kafka.producer import EventPublisher
from shared.metrics import (
    CONSUMER_LAG,
    EVENTS_CONSUMED,
    EVENTS_DEAD_LETTERED,
    LAST_PROCESSED,
    PROCESSING_LATENCY,
)
from shared.tasks import stop_tasks

log = logging.getLogger(__name__)

BatchHandler = Callable[[list[ReceivedEvent]], Awaitable[None]]


def dead_letter(
    record: ConsumerRecord, error: str, consumer: str, tp: TopicPartition | None = None
) -> EncodedEvent:
    """The dead-letter record for ``record``: its original key, value and headers plus what went wrong.

    ``tp``: where the record was read, for records that do not carry it (bare records,
    :mod:`shared.kafka.records`)."""
    topic, partition = (record.topic, record.partition) if tp is None else (tp.topic, tp.partition)
    headers = list(record.headers or [])
    headers += [
        ("dlq_error", error[:1000].encode()),
        ("dlq_topic", topic.encode()),
        ("dlq_partition", str(partition).encode()),
        ("dlq_offset", str(record.offset).encode()),
        ("dlq_consumer", consumer.encode()),
    ]
    return EncodedEvent(DEAD_LETTER_TOPIC.name, record.key or b"", record.value or b"", headers, "")


class EventConsumer:
    """Consume ``topics`` as consumer group ``group_id`` and hand batches of valid events to a handler."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        group_id: str | None,
        topics: Sequence[str],
        handler: BatchHandler,
        publisher: EventPublisher,
        auto_offset_reset: str = "earliest",
        max_records: int = 5000,
        fetch_wait_ms: int = 100,
    ):
        self.kafka = kafka
        self.group_id = group_id
        self.name = group_id or "anonymous"
        self.topics = list(topics)
        self.handler = handler
        self.publisher = publisher
        self.auto_offset_reset = auto_offset_reset
        self.max_records = max_records
        self.fetch_wait_ms = fetch_wait_ms
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._verifier = verifier_for(kafka)

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            *self.topics,
            **self.kafka.client_kwargs(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            # Tansu makes a join wait about half the session timeout: keep it short.
            session_timeout_ms=10000,
            heartbeat_interval_ms=3000,
            rebalance_timeout_ms=10000,
            fetch_max_wait_ms=self.fetch_wait_ms,
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.name}")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await stop_tasks([self._task], timeout=10)
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while not self._stopping.is_set():
            try:
                batches = await consumer.getmany(timeout_ms=1000, max_records=self.max_records)
                if not batches:
                    continue
                records = [r for recs in batches.values() for r in recs]
                await self.process_records(records)
                if self.group_id:
                    await consumer.commit()
                for tp, recs in batches.items():
                    hw = consumer.highwater(tp)
                    if hw is not None and recs:
                        CONSUMER_LAG.labels(self.name, tp.topic, str(tp.partition)).set(
                            max(0, hw - recs[-1].offset - 1)
                        )
            except asyncio.CancelledError:
                raise
            except Exception:
                # Handler or broker failure: do not commit; re-seek to the last commit and retry after a pause.
                log.exception("consumer %s batch failed; will retry", self.name)
                await asyncio.sleep(1)
                if self.group_id:
                    try:
                        for tp in consumer.assignment():
                            committed = await consumer.committed(tp)
                            if committed is not None:
                                consumer.seek(tp, committed)
                            else:
                                await consumer.seek_to_beginning(tp)
                    except Exception:
                        log.exception("re-seek failed")

    def _refuse_unauthenticated(self, records: Sequence[ConsumerRecord], dead: list[EncodedEvent]) -> list:
        """Records whose producer is authenticated (:mod:`shared.contracts.provenance`); the others are added
        to ``dead`` with the reason."""
        if not self._verifier.checks:
            return list(records)
        kept: list = []
        by_topic: dict[str, list] = {}
        for r in records:
            by_topic.setdefault(r.topic, []).append(r)
        for topic, recs in by_topic.items():
            good, refused = self._verifier.verify(recs, topic, self.name)
            kept.extend(good)
            for r, reason in refused:
                dead.append(dead_letter(r, reason, self.name))
                EVENTS_DEAD_LETTERED.labels(self.name, topic).inc()
        return kept

    async def process_records(self, records: Sequence[ConsumerRecord]) -> None:
        """Decode, dead-letter the invalid ones, hand the rest to the handler."""
        good: list[ReceivedEvent] = []
        dead: list[EncodedEvent] = []
        records = self._refuse_unauthenticated(records, dead)
        for r in records:
            try:
                good.append(decode(r))
            except EventDecodeError as exc:
                dead.append(dead_letter(r, exc.reason, self.name))
                EVENTS_DEAD_LETTERED.labels(self.name, r.topic).inc()
        if dead:
            await self.publisher.publish(dead)
        if good:
            await self.handler(good)
            now = time.time()
            counts: dict[tuple[str, str], int] = {}
            for ev in good:
                counts[(ev.topic, ev.type)] = counts.get((ev.topic, ev.type), 0) + 1
            for (topic, etype), n in counts.items():
                EVENTS_CONSUMED.labels(self.name, topic, etype).inc(n)
            last = good[-1]
            try:
                PROCESSING_LATENCY.labels(self.name).observe(
                    max(0.0, now - parse_time(last.time).timestamp())
                )
            except ValueError:
                pass
        LAST_PROCESSED.labels(self.name).set(time.time())
