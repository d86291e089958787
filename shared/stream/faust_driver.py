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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import faust

from shared.config import KafkaSettings
from shared.kafka.records import bare_records
from shared.metrics import CONSUMER_LAG
from shared.stream.assignor import CoPartitionedAssignor
from shared.stream.core import ProcessorCore, read_to_end, whole_partitions
from shared.stream.faust_adapter import (
    BatchApp,
    BatchSource,
    connect_rebalance_handlers,
    group_generation,
    readable_end,
)

log = logging.getLogger(__name__)


class FaustDriver:
    """Run a :class:`ProcessorCore` inside a Faust app (in this process's event loop)."""

    def __init__(self, core: ProcessorCore, kafka: KafkaSettings, *, max_records: int, fetch_wait_ms: int):
        self.core = core
        self.kafka = kafka
        self.busy = False
        # what the adapter configures the consumer Faust builds with (shared.stream.faust_adapter.BatchHost)
        self.assignor = CoPartitionedAssignor()
        self.fetch_wait_ms = fetch_wait_ms
        self.key_deserializer: Callable[[bytes | None], Any] = bare_records
        #: records fetched but not handed to the core (a rebalance paused their partitions meanwhile): sought back
        self.sought_back = 0
        #: topic partition → (group generation, fetch position) noted after a fetch (see ``_note_positions``)
        self._read_to: dict[Any, tuple[int, int]] = {}
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
        self.app.ioc_host = self
        for topic in processor.topics:
            # Subscribing through the conductor makes Faust's consumer fetch these topics.
            self.app.topics.add(self.app.topic(topic, key_serializer="raw", value_serializer="raw"))
        self.app.timer(processor.tick_seconds, name=f"{processor.name}.tick")(self._logged(core.tick, "tick"))
        self.app.timer(processor.emit_interval_seconds / 4, name=f"{processor.name}.emit")(
            self._logged(core.emit_pending, "emit")
        )
        connect_rebalance_handlers(self.app, self._on_revoked, self._on_assigned)

    @property
    def read_committed(self) -> bool:
        return self.core.transactional

    @property
    def durable_offsets(self) -> Mapping[tuple[str, int], int]:
        return self.core.durable_offsets

    def may_commit(self) -> bool:
        """Faust's commit loop commits only in a settled generation. A commit sent while this member rejoins
        carries a generation the group no longer has; aiokafka answers IllegalGeneration by resetting the
        member id and rejoining as a new member, which starts another rebalance in which the next member's
        commit fails the same way: on Apache Kafka scale-outs turned into rebalance storms lasting minutes.
        Skipping a commit costs nothing here (recovery resumes from the changelog markers, not the commit)."""
        try:
            return not self.app.rebalancing and group_generation(self.app) == self.app.consumer_generation_id
        except Exception:
            return False

    async def drain(self, source: BatchSource) -> None:
        """The consumer loop (Faust's fetcher task runs it): each fetched batch goes to the core whole."""
        core = self.core
        while not source.should_stop():
            if core.needs_rewind:
                await self.rewind()
            generation = source.generation()
            records, asked = await source.fetch(1.0)
            if source.should_stop():
                continue
            if generation == source.generation():
                await self._note_positions(source, generation, asked.difference(records))
            if not records:
                continue
            # Hand the core only what is still ours to process: fetched in this generation, partitions still
            # active (not paused by a rebalance that started meanwhile), flow not stopped. Anything else is
            # sought back (the consumer's position already moved past it; skipping it would lose it for this
            # member: after a rebalance it held its partitions at the high watermark and never folded them).
            current = generation == source.generation() and source.flow_active()
            active = source.active_partitions() if current else frozenset()
            batch, skipped = {}, {}
            for tp, recs in records.items():
                if not recs:
                    continue
                if tp in active and tp in asked:
                    batch[tp] = recs
                else:
                    skipped[tp] = recs[0].offset
            if skipped:
                sought = await source.seek_back(skipped)
                self.sought_back += sum(len(records[tp]) for tp in sought)
                log.info(
                    "records fetched across a rebalance sought back",
                    extra={"processor": core.processor.name, "partitions": sorted(str(tp) for tp in sought)},
                )
            if not batch:
                continue
            self.busy = True
            try:
                await core.process(batch, owned=whole_partitions(source.assignment(), core.processor.topics))
            finally:
                self.busy = False
            if generation != source.generation():
                continue  # rebalanced meanwhile: the new owner recovers from the changelog
            for tp, recs in batch.items():
                offset = recs[-1].offset + 1
                source.mark_read(tp, offset - 1)
                end = source.readable_end(tp, self.read_committed)
                if end is not None and tp.partition in core.partitions:
                    CONSUMER_LAG.labels(core.processor.name, tp.topic, str(tp.partition)).set(
                        max(0, end - offset)
                    )

    async def _note_positions(self, source: BatchSource, generation: int, quiet: Iterable[Any]) -> None:
        """Remember the fetch position of each partition the last fetch asked for but got no records of, while
        the core's applied offset is below the partition's readable end.

        The applied offset follows data records only; transaction markers (one after every transaction of a
        transactional producer: every processor's outputs) and an aborted transaction's records take offsets a
        ``read_committed`` consumer never gets as records, so on such a source the applied offset stays below the
        end for good. The position moves past them, and every record below it was handed to the core (it is
        read after the batch that fetched them was processed; records not processed were sought back, which
        moves the position back). :meth:`caught_up` counts a partition whose position reached its end."""
        core = self.core
        for tp in quiet:
            applied = core.applied_offset(tp.topic, tp.partition)
            end = source.readable_end(tp, self.read_committed)
            if applied is None or end is None or applied >= end:
                continue
            try:
                position = await source.position(tp)
            except Exception:  # unassigned meanwhile
                continue
            if position is not None:
                self._read_to[tp] = (generation, position)
                if tp.partition in core.partitions:  # (a trailing transaction marker is no lag)
                    CONSUMER_LAG.labels(core.processor.name, tp.topic, str(tp.partition)).set(
                        max(0, end - position)
                    )

    def owns(self, partition: int) -> bool:
        """Checked by the core right before it writes a partition: the consumer is still in the generation it
        was assigned in (a heartbeat that found it evicted resets the generation) and holds the partition
        whole."""
        try:
            if group_generation(self.app) != self.app.consumer_generation_id:
                return False
            return partition in whole_partitions(self.app.consumer.assignment(), self.core.processor.topics)
        except Exception:
            return False

    async def _on_assigned(self, app, assigned, **_: Any) -> None:
        """Load the state of every partition assigned whole, now (as the aiokafka driver does), not when its
        first record arrives: an idle partition's windows must still close and its silences be detected by the
        ticks, and a partition that gets no more records would otherwise never be recovered (a worker that
        joined after the stream's last record sat with its partitions unloaded). Recovery also initialises the
        partitions' transactional ids, which fences their previous owner at once."""
        self.core.fenced.clear()  # a new generation: partitions fenced in the last one may be ours again
        self._read_to.clear()
        try:
            await self.core.recover(whole_partitions(assigned, self.core.processor.topics))
        except Exception:
            # Faust would crash the app on an exception here; the drain loop's rewind retries instead
            log.exception("%s: recovery on assignment failed; will retry", self.core.processor.name)
            self.core.needs_rewind = True

    def _logged(self, action, what: str):
        """``action`` for a Faust timer: a failure is logged; the core flags a rewind, which the drain loop runs."""

        async def run() -> None:
            try:
                await action()
            except Exception:
                log.exception("%s: %s failed", self.core.processor.name, what)

        return run

    async def _on_revoked(self, app, revoked, **_: Any) -> None:
        # Make the last batch durable (its changelog marker is where the next owner resumes), then forget the
        # partitions. No commit here: it would race the rejoin (see may_commit); the next owner skips records
        # below the marker's offsets.
        async with self.core.lock:
            try:
                await self.core.settle()
            finally:
                self.core.drop({tp.partition for tp in revoked})

    async def rewind(self) -> None:
        """After a failed batch or tick: recover state, seek sources back to what is durable."""
        consumer = self.app.consumer
        assignment = consumer.assignment()
        self._read_to.clear()  # the positions move back to the applied offsets
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
        """Every assigned partition applied up to the end of what this consumer can read of it: the last stable
        offset when reading committed data (a transaction left open by a writer holds it below the high
        watermark until that transaction ends), else the high watermark. A partition whose applied offset is
        below that end counts when the consumer's position reached it in this generation: what lies between
        is transaction markers and aborted records (see ``_note_positions``)."""
        consumer = self.app.consumer
        try:
            assignment = consumer.assignment()
            generation = self.app.consumer_generation_id
        except Exception:
            return False
        if not assignment or self.busy or self.core.writes_in_flight:
            return False
        for tp in assignment:
            try:
                end = readable_end(self.app, tp, self.read_committed)
            except Exception:
                return False
            applied = self.core.applied_offset(tp.topic, tp.partition)
            if not read_to_end(applied, end, self._read_to.get(tp), generation):
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
