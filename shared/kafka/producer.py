"""The event publisher every service uses.

Never fire-and-forget and never one awaited round trip per event: ``publish`` appends a whole set of events
to per-partition record batches (``create_batch``/``send_batch``, partitioned with Kafka's murmur2 so keys land
where any Kafka client would put them) and awaits every acknowledgement together. It returns only when the
broker acknowledged all of them (``acks=all``), and raises :class:`BrokerUnavailable` otherwise, so callers
answer 2xx only for what is durable.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from shared.config import KafkaSettings
from shared.contracts.cloudevents import EncodedEvent
from shared.contracts.provenance import signer_for
from shared.metrics import EVENTS_PRODUCED, PUBLISH_SECONDS

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The broker did not acknowledge a publish in time: nothing may be reported as accepted."""


_M = 0x5BD1E995
_SEED = 0x9747B28C
_WORDS = [struct.Struct(f"<{n}I").unpack_from for n in range(64)]


def murmur2_python(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``; the same values as aiokafka's), with the
    4-byte words unpacked in one call rather than assembled byte by byte. The fallback where the C extension
    (:data:`murmur2`) has no wheel."""
    length = len(data)
    h = _SEED ^ length
    n4 = length >> 2
    for k in _WORDS[n4](data) if n4 < 64 else struct.unpack_from(f"<{n4}I", data):
        k = (k * _M) & 0xFFFFFFFF
        k = ((k ^ (k >> 24)) * _M) & 0xFFFFFFFF
        h = ((h * _M) & 0xFFFFFFFF) ^ k
    tail = length & 3
    if tail:
        i = length - tail
        if tail == 3:
            h ^= data[i + 2] << 16
        if tail >= 2:
            h ^= data[i + 1] << 8
        h = ((h ^ data[i]) * _M) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * _M) & 0xFFFFFFFF
    return h ^ (h >> 15)


try:  # it runs once per published record: the C MurmurHash2 (Kafka's is the standard one with this seed)
    from murmurhash2 import murmurhash2 as _murmurhash2

    def murmur2(data: bytes) -> int:
        """Kafka's murmur2, the same values as :func:`murmur2_python` (tests/shared/test_partitioner.py)."""
        return _murmurhash2(data, _SEED)

except ImportError:  # pragma: no cover - platforms without the wheel
    murmur2 = murmur2_python


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2, positive), as the Java client and aiokafka compute it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class EventPublisher:
    """Publishes encoded CloudEvents with ``acks=all``; one per process, opened in the app lifespan."""

    def __init__(self, kafka: KafkaSettings, *, client_id: str, timeout_s: float = 15.0):
        self._kafka = kafka
        self._client_id = client_id
        self._timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, int] = {}
        # Partition counts are read again from the producer's metadata (itself refreshed every
        # ``metadata_max_age_ms``) this often, so a partition increase is seen without a restart.
        self._partitions_read_at = time.monotonic()
        self._start_lock = asyncio.Lock()
        # Set when the broker failed us: the next send first makes sure its topics exist, because a broker can
        # come back without its topics (the embedded broker keeps them in memory) while the producer's metadata
        # still lists them, and records sent to a topic the broker does not have are never readable.
        self._broker_lost = False
        self._signer = signer_for(kafka)  # authenticated event sources; None without event keys

    @property
    def broker_lost(self) -> bool:
        """The broker failed the last send; the next one re-creates its topics first."""
        return self._broker_lost

    @property
    def started(self) -> bool:
        return self._producer is not None

    async def start(self) -> None:
        """Connect. Failing here is not fatal: ``publish`` retries the connection (the broker may come later)."""
        async with self._start_lock:
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(
                **self._kafka.client_kwargs(),
                client_id=self._client_id,
                acks="all",
                enable_idempotence=self._kafka.enable_idempotence,
                linger_ms=self._kafka.linger_ms,
                metadata_max_age_ms=self._kafka.metadata_max_age_ms,
                max_batch_size=1024 * 1024,
                max_request_size=8 * 1024 * 1024,
                request_timeout_ms=int(self._timeout_s * 1000),
                compression_type=self._kafka.producer_compression,
            )
            try:
                async with asyncio.timeout(self._timeout_s):
                    await producer.start()
            except Exception as exc:  # e.g. aiokafka's KeyError on a refused SCRAM login
                try:
                    await producer.stop()
                except Exception:
                    pass
                raise BrokerUnavailable(f"cannot connect to Kafka: {type(exc).__name__}") from exc
            self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                async with asyncio.timeout(self._timeout_s):
                    await producer.stop()
            except (KafkaError, OSError, TimeoutError):
                log.warning("producer did not stop cleanly")

    async def _partition_count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            assert self._producer is not None
            try:
                async with asyncio.timeout(min(5.0, self._timeout_s)):
                    parts = await self._producer.partitions_for(topic)
            except (KafkaError, TimeoutError):
                # The topic is missing (e.g. a broker that restarted empty): create it from the catalogue.
                from shared.contracts import TOPICS
                from shared.kafka.admin import ensure_topics

                if topic not in TOPICS:
                    raise
                await ensure_topics(self._kafka, [TOPICS[topic]])
                async with asyncio.timeout(self._timeout_s):
                    parts = await self._producer.partitions_for(topic)
            n = self._partitions[topic] = len(parts)
        return n

    async def publish(self, events: Sequence[EncodedEvent] | Iterable[EncodedEvent]) -> int:
        """Publish events and wait for every acknowledgement. Returns how many were published.

        Order is kept per key (one key always maps to one partition, batches are appended in order).
        """
        events = list(events)
        if not events:
            return 0
        await self.wait(await self.send(events))
        return len(events)

    async def send(self, events: Sequence[EncodedEvent]) -> asyncio.Future:
        """Queue ``events`` and return a future of all their acknowledgements (for pipelining).

        Pair with :meth:`wait`, which maps broker failures to :class:`BrokerUnavailable`.
        """
        events = list(events)
        if self._signer is not None:
            self._signer.sign(events)
        if self._producer is None:
            try:
                await self.start()
            except BrokerUnavailable:
                # A broker that cannot be reached failed this send too: it may come back without its topics.
                self._broker_lost = True
                raise
        producer = self._producer
        assert producer is not None
        if self._broker_lost:
            await self._recreate_topics({ev.topic for ev in events})
        started = time.perf_counter()
        if time.monotonic() - self._partitions_read_at > self._kafka.metadata_max_age_ms / 1000:
            self._partitions.clear()
            self._partitions_read_at = time.monotonic()
        try:
            by_tp: dict[tuple[str, int], list[EncodedEvent]] = defaultdict(list)
            # No key → partition cache: a city's keys (millions of meters) do not repeat within a cache's
            # reach, and one entry per key cost the meter service ~160 B a meter (docs/performance-targets.md).
            for ev in events:
                n = self._partitions.get(ev.topic) or await self._partition_count(ev.topic)
                by_tp[(ev.topic, partition_for(ev.key, n))].append(ev)
            futures = []
            for (topic, partition), evs in by_tp.items():
                batch = producer.create_batch()
                for ev in evs:
                    if batch.append(key=ev.key, value=ev.value, timestamp=None, headers=ev.headers) is None:
                        futures.append(await producer.send_batch(batch, topic, partition=partition))
                        batch = producer.create_batch()
                        if (
                            batch.append(key=ev.key, value=ev.value, timestamp=None, headers=ev.headers)
                            is None
                        ):
                            raise ValueError("event larger than the maximum batch size")
                futures.append(await producer.send_batch(batch, topic, partition=partition))
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("publish failed: %s", type(exc).__name__)
            await self._reset()
            raise BrokerUnavailable(f"broker did not accept the events: {type(exc).__name__}") from exc

        def acked(_: asyncio.Future) -> None:
            if _.cancelled() or _.exception() is not None:
                return
            PUBLISH_SECONDS.observe(time.perf_counter() - started)
            counts: dict[tuple[str, str], int] = defaultdict(int)
            for ev in events:
                counts[(ev.topic, ev.type or _ce_type(ev))] += 1
            for (topic, etype), k in counts.items():
                EVENTS_PRODUCED.labels(topic=topic, type=etype).inc(k)

        fut = asyncio.gather(*futures)
        fut.add_done_callback(acked)
        return fut

    async def wait(self, acks: asyncio.Future) -> None:
        """Wait for a :meth:`send`'s acknowledgements; :class:`BrokerUnavailable` if they do not come."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await acks
        except (KafkaError, OSError, TimeoutError) as exc:
            # The producer may be wedged on a dead connection; rebuild it on the next call.
            log.warning("publish failed: %s", type(exc).__name__)
            await self._reset()
            raise BrokerUnavailable(f"broker did not acknowledge: {type(exc).__name__}") from exc

    async def _recreate_topics(self, topics: set[str]) -> None:
        from shared.contracts import TOPICS
        from shared.kafka.admin import ensure_topics

        try:
            async with asyncio.timeout(self._timeout_s):
                await ensure_topics(self._kafka, [TOPICS[t] for t in sorted(topics) if t in TOPICS])
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._reset()
            raise BrokerUnavailable(f"broker did not answer: {type(exc).__name__}") from exc
        self._broker_lost = False
        self._partitions.clear()

    async def _reset(self) -> None:
        self._broker_lost = True
        producer, self._producer = self._producer, None
        self._partitions.clear()
        if producer is not None:
            try:
                async with asyncio.timeout(2):
                    await producer.stop()
            except Exception:
                pass

    async def ping(self) -> bool:
        """Readiness: can we reach the broker's metadata?"""
        try:
            if self._producer is None:
                await self.start()
            assert self._producer is not None
            async with asyncio.timeout(3):
                await self._producer.client.fetch_all_metadata()
            return True
        except Exception:
            return False


def _ce_type(ev: EncodedEvent) -> str:
    for k, v in ev.headers:
        if k == "ce_type":
            return v.decode()
    return "unknown"
