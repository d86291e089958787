"""The Faust driver: a faust-streaming app runs the worker; batches bypass Faust's per-message path.

What stays Faust's: the app and its lifecycle, the consumer (in Faust's consumer thread) and its consumer
group, rebalancing and the assignor, offset commits (Faust's commit loop and commit-on-revoke), and timers
(``app.timer`` drives the processor's ticks).

What we replace, and why (profiled on this machine: a bare ``async for event in stream`` agent tops out at
~3,000 events/s at 100% CPU): Faust's ``Consumer._drain_messages`` wraps every message in
``wait_first(callback(message), suspend_flow.wait())`` and then routes it through the conductor, a channel
queue, the stream iterator and per-message acks and sensors. :class:`BatchConsumer` instead hands each whole
fetched batch (per topic-partition lists of raw records) to :class:`ProcessorCore`, which decodes with orjson,
applies the processor in a tight loop, and writes each changed state key once per batch. Commits then come
from the core's "durable up to" offsets instead of per-message ack lists.

Faust tables are not used for processor state: a batch must change many keys atomically (see
:mod:`shared.stream.core` on commit markers), and Faust's table recovery trusts ListOffsets, which the embedded
broker answers wrongly after batched produce (it lost ~1% of a changelog in a measured recovery). The core's
changelog follows the same idea as a Faust table changelog (compacted topic, partition = source partition,
one record per key) plus a commit marker, and recovers to the fetch high watermark.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from shared.config import KafkaSettings
from shared.kafka.records import bare_records
from shared.metrics import CONSUMER_LAG
from shared.stream.assignor import CoPartitionedAssignor
from shared.stream.core import ProcessorCore, whole_partitions

log = logging.getLogger(__name__)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):
        consumer = super()._create_worker_consumer(transport)
        # Faust hard-codes a 1,500 ms fetch wait; the embedded broker does not wake waiting fetches when
        # data arrives, so sparse topics would see ~0.4 s median latency. 100 ms keeps it ~10 ms.
        consumer._fetch_max_wait_ms = getattr(self.app, "ioc_fetch_wait_ms", 100)
        # The core reads records per TopicPartition: skip aiokafka's per-record ConsumerRecord
        # (shared.kafka.records; read by the Fetcher that start() creates).
        consumer._key_deserializer = bare_records
        # Faust uses its co-partitioning assignor only for apps with tables and round robin otherwise, which
        # split one state partition's topics over workers: ours co-partitions (shared.stream.assignor).
        driver = _driver(self.app)
        consumer._partition_assignment_strategy = [driver.assignor]
        if driver.core.transactional:
            consumer._isolation_level = "read_committed"  # never fold a batch another worker aborted
        return consumer


class BatchConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with a batch drain loop for the topics an IOC processor owns."""

    def _new_consumer_thread(self):
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    # Commits: Faust's commit loop asks _new_offset for every tp with pending acks; ours are the offsets the
    # core reports durable (outputs and state changes acknowledged), never more.
    def _filter_tps_with_pending_acks(self, topics=None):
        pending = set(super()._filter_tps_with_pending_acks(topics))
        durable = _driver(self.app).core.durable_offsets
        pending.update(
            tp
            for tp in self.assignment()
            if (tp.topic, tp.partition) in durable and (topics is None or tp in topics or tp.topic in topics)
        )
        return iter(pending)

    def _new_offset(self, tp):
        offset = _driver(self.app).core.durable_offsets.get((tp.topic, tp.partition))
        if offset is not None:
            return offset
        return super()._new_offset(tp)

    async def _drain_messages(
        self, fetcher
    ) -> None:  # pragma: no cover - exercised through the runtime tests
        driver: FaustDriver = _driver(self.app)
        core = driver.core
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                if core.needs_rewind:
                    await driver.rewind()
                records, active = await self._wait_next_records(1.0)
                if not records or self.should_stop:
                    continue
                generation = self.app.consumer_generation_id
                batch = {
                    tp: recs for tp, recs in records.items() if recs and (active is None or tp in active)
                }
                if not batch:
                    continue
                driver.busy = True
                try:
                    await core.process(
                        batch, owned=whole_partitions(self.assignment(), core.processor.topics)
                    )
                finally:
                    driver.busy = False
                if generation != self.app.consumer_generation_id:
                    continue  # rebalanced meanwhile: the new owner recovers from the changelog
                for tp, recs in batch.items():
                    offset = recs[-1].offset + 1
                    self._read_offset[tp] = offset - 1
                    hw = self.highwater(tp)
                    if hw is not None and tp.partition in core.partitions:
                        CONSUMER_LAG.labels(core.processor.name, tp.topic, str(tp.partition)).set(
                            max(0, hw - offset)
                        )
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise


def _driver(app: object) -> FaustDriver:
    """The IOC driver a :class:`BatchApp` carries (Faust types a consumer's app as its abstract AppT)."""
    return cast(BatchApp, app).ioc_driver


class BatchTransport(faust_aiokafka.Transport):
    Consumer = BatchConsumer


class BatchApp(faust.App):
    """A Faust app whose consumer drains batches into an IOC :class:`ProcessorCore`."""

    ioc_driver: FaustDriver
    ioc_fetch_wait_ms: int = 100

    def _new_transport(self):
        return BatchTransport(self.conf.broker_consumer, self)


class FaustDriver:
    """Run a :class:`ProcessorCore` inside a Faust app (in this process's event loop)."""

    def __init__(self, core: ProcessorCore, kafka: KafkaSettings, *, max_records: int, fetch_wait_ms: int):
        self.core = core
        self.kafka = kafka
        self.busy = False
        self.assignor = CoPartitionedAssignor()
        processor = core.processor
        core.owner_check = self.owns
        # State lives in memory and the core's changelog, but Faust still makes a data directory (default:
        # ``<app>-data`` in the working directory); keep it out of the checkout and remove it on stop.
        self._datadir = tempfile.mkdtemp(prefix=f"ioc-faust-{processor.name}-")
        brokers = [f"kafka://{hp.strip()}" for hp in kafka.bootstrap_servers.split(",") if hp.strip()]
        self.app = BatchApp(
            processor.name,
            broker=brokers,
            broker_credentials=_credentials(kafka),
            # Tansu makes a group join wait about half the session timeout: 10 s gives ~5 s joins.
            broker_session_timeout=10,
            broker_heartbeat_interval=3,
            broker_rebalance_timeout=10,
            broker_request_timeout=30,
            broker_max_poll_records=max_records,
            # Faust's 1 MiB per partition caps a fetch at a few thousand small events; the aiokafka driver
            # and the raw baseline fetch 8 MiB.
            consumer_max_fetch_size=8 * 1024 * 1024,
            broker_commit_interval=0.5,
            consumer_auto_offset_reset="earliest",
            topic_disable_leader=True,
            topic_allow_declare=False,
            web_enabled=False,
            store="memory://",
            datadir=self._datadir,
            producer_linger=0.05,
            producer_acks=-1,
            stream_wait_empty=False,
            table_standby_replicas=0,
        )
        self.app.ioc_driver = self
        self.app.ioc_fetch_wait_ms = fetch_wait_ms
        for topic in processor.topics:
            # Subscribing through the conductor makes Faust's consumer fetch these topics.
            self.app.topics.add(self.app.topic(topic, key_serializer="raw", value_serializer="raw"))
        self.app.timer(processor.tick_seconds, name=f"{processor.name}.tick")(self._logged(core.tick, "tick"))
        self.app.timer(processor.emit_interval_seconds / 4, name=f"{processor.name}.emit")(
            self._logged(core.emit_pending, "emit")
        )
        # Faust's signal types want a `signal` keyword that its senders pass through **kwargs: the handlers take it
        self.app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        self.app.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]

    def owns(self, partition: int) -> bool:
        """Checked by the core right before it writes a partition: the consumer is still in the generation it
        was assigned in (a heartbeat that found it evicted resets the generation) and holds the partition
        whole."""
        try:
            consumer = self.app.consumer
            coordinator = consumer._thread._ensure_consumer()._coordinator  # type: ignore[attr-defined]  # Faust's aiokafka thread
            if coordinator is None or coordinator.generation != self.app.consumer_generation_id:
                return False
            return partition in whole_partitions(consumer.assignment(), self.core.processor.topics)
        except Exception:
            return False

    async def _on_assigned(self, app, assigned, **_: Any) -> None:
        self.core.fenced.clear()  # a new generation: partitions fenced in the last one may be ours again

    def _logged(self, action, what: str):
        """``action`` for a Faust timer: a failure is logged; the core flags a rewind, which the drain loop runs."""

        async def run() -> None:
            try:
                await action()
            except Exception:
                log.exception("%s: %s failed", self.core.processor.name, what)

        return run

    async def _on_revoked(self, app, revoked, **_: Any) -> None:
        # Make the last batch durable so Faust's commit-on-revoke commits it, then forget the partitions.
        async with self.core.lock:
            try:
                await self.core.flush()
                self.core.durable_offsets.update(self.core._sent_offsets)
            finally:
                self.core.drop({tp.partition for tp in revoked})

    async def rewind(self) -> None:
        """After a failed batch or tick: recover state, seek sources back to what is durable."""
        consumer = self.app.consumer
        assignment = consumer.assignment()
        try:
            await self.core.recover({tp.partition for tp in assignment})
            for tp in assignment:
                applied = self.core.applied_offset(tp.topic, tp.partition)
                if applied is not None:
                    await consumer.seek(tp, applied)
            self.core.needs_rewind = False
        except Exception:
            log.exception("rewind failed; will retry")
            await asyncio.sleep(1)

    async def start(self) -> None:
        await self.app.start()

    async def stop(self) -> None:
        try:
            await self.app.stop()
        finally:
            # mode's Service.stop leaves the consumer thread's loop to finish on its own
            await asyncio.sleep(0)
            shutil.rmtree(self._datadir, ignore_errors=True)

    def caught_up(self) -> bool:
        consumer = self.app.consumer
        try:
            assignment = consumer.assignment()
        except Exception:
            return False
        if not assignment or self.busy or self.core._pending is not None:
            return False
        for tp in assignment:
            hw = consumer.highwater(tp)
            applied = self.core.applied_offset(tp.topic, tp.partition)
            if hw is None or (hw > 0 and (applied is None or applied < hw)):
                return False
        return True


def _credentials(kafka: KafkaSettings):
    """SASL/SCRAM and/or TLS for Faust's clients, from the same settings the services use."""
    ssl_context = None
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        ssl_context = create_ssl_context(cafile=kafka.ssl_cafile)
    if kafka.sasl_mechanism:
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password,
            mechanism=kafka.sasl_mechanism,
            ssl_context=ssl_context,
        )
    if ssl_context is not None:
        return faust.SSLCredentials(ssl_context)
    return None
