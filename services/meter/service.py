"""The meter service's in-memory state and its ingest use cases (validate → publish → persist → answer).

The registry, the last register per meter and OBIS code, and the open outages live in memory so the hot path
makes no per-reading database round trip. Validation updates the in-memory registers at once (so concurrent
batches see each other); if publishing then fails, the changes are undone and the caller answers 503.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import Counter

from services.meter import publishing, repository
from services.meter.batch import BatchParser, check_batch_size
from services.meter.domain import (
    EventOutcome,
    Limits,
    MeterEventIn,
    MeterIn,
    MeterInfo,
    MeterTable,
    ReadingItem,
    ReadingsBody,
    RegisterState,
    RegisterTable,
    check_meter_areas,
    expire_power_timelines,
    may_report,
    undo_registers,
    validate_events,
    validate_readings,
)
from services.meter.settings import MeterSettings
from shared.areas import hanoi
from shared.auth import ApiError, refuse_unowned
from shared.ingest import batch_result, validate_items
from shared.kafka.producer import BrokerUnavailable, EventPublisher
from shared.outbox import Outbox
from shared.registry_cache import RegistryCache

log = logging.getLogger(__name__)
POWER_UPS_UNPAIRED = Counter(
    "ioc_meter_power_ups_unpaired_total",
    "Power-ups whose power-down never arrived within the pairing horizon and no interruption could be "
    "inferred from missing reads",
)
INTERRUPTIONS_INFERRED = Counter(
    "ioc_meter_interruptions_inferred_total",
    "Interruptions inferred from missing reads (a power-up without its power-down)",
)
SERVICE = "meter"
#: The readings request schema's ceiling (``ReadingsBody``); ``IOC_METER_MAX_BATCH_READINGS`` may lower it.
READINGS = BatchParser(ReadingsBody, ReadingItem, id_field="meter_id", max_items=10_000)
#: Registry rows read per query (start-up load, refresh).
REGISTRY_PAGE = 10_000
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class RegisterWriter:
    """Writes register states to PostgreSQL once their readings were acknowledged by Kafka, coalesced: every
    ``flush`` writes the latest state of each register changed since the previous one, in one statement, so
    concurrent requests share one write (group commit).

    States are kept with the sequence number of the batch that validated them and applied in that order, so a
    batch acknowledged late never overwrites the state of a later batch. A failed write is retried next flush.
    """

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool
        self._pending: list[tuple[int, dict[tuple[str, str], RegisterState]]] = []
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        return sum(len(states) for _, states in self._pending)

    def mark(self, seq: int, states: dict[tuple[str, str], RegisterState]) -> None:
        """Remember ``states`` (validated by batch ``seq``, now durable on Kafka) for the next flush."""
        if states:
            self._pending.append((seq, states))

    async def flush(self) -> int:
        """Write what is pending; returns how many registers were written."""
        async with self._lock:
            pending, self._pending = self._pending, []
            if not pending:
                return 0
            pending.sort(key=lambda p: p[0])
            latest: dict[tuple[str, str], RegisterState] = {}
            for _, states in pending:
                latest.update(states)
            try:
                await repository.save_registers(self.pool, latest.items())
            except BaseException:
                self._pending[:0] = pending
                raise
            return len(latest)

    async def forget(self, meter_ids: Sequence[str]) -> None:
        """Drop the registers of replaced meters, pending or written."""
        if not meter_ids:
            return
        async with self._lock:
            ids = set(meter_ids)
            for _, states in self._pending:
                for key in [k for k in states if k[0] in ids]:
                    del states[key]
            await repository.reset_registers(self.pool, list(ids))

    async def run_forever(self, interval: float) -> None:
        """Flush every ``interval`` seconds (the service's background task)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush()
            except DB_ERRORS as exc:
                log.warning("could not persist register state (will retry): %s", type(exc).__name__)


class MeterRegistry(RegistryCache[MeterInfo]):
    """The meter registry in memory, and the number of meters per feeder (the feeder-outage rule's N).

    A city registers millions of meters: the loader asks only for what changed since its last pass, and the
    entries are held in columns (:class:`MeterTable`: lookups build a :class:`MeterInfo`, reading validation
    reads the columns).
    """

    entries: MeterTable  # type: ignore[assignment]  # a Mapping[str, MeterInfo] in columns, not a dict

    def __init__(self, pool: asyncpg.Pool, page: int = REGISTRY_PAGE):
        super().__init__(SERVICE, self._load_page, key=_meter_id)
        self.pool = pool
        self.page = page
        self.entries = MeterTable()
        self.feeder_sizes: dict[str, int] = {}

    async def _load_page(self, after: Any) -> tuple[list[MeterInfo], Any]:
        return await repository.load_meter_page(self.pool, after, self.page)

    def clear(self) -> None:
        self.entries = MeterTable()
        self.feeder_sizes = {}

    def put(self, entry: MeterInfo) -> None:
        _put(self.entries, self.feeder_sizes, entry)

    # The registry is read in pages (change order), so a city's millions of rows never sit in memory at once as
    # rows and entries, and requests are served between pages.
    async def reload(self) -> None:
        table, sizes = MeterTable(), dict[str, int]()
        position = None
        while True:
            entries, position = await self._load_page(position)
            for entry in entries:
                _put(table, sizes, entry)
            if len(entries) < self.page:
                break
        # Swapped in whole: a request never sees a half-loaded registry.
        self.entries, self.feeder_sizes = table, sizes
        self._version = position
        self.loaded_at = time.monotonic()

    async def refresh(self) -> None:
        if self._version is None:
            await self.reload()
            return
        while True:
            entries, self._version = await self._load_page(self._version)
            self.apply(entries)
            if len(entries) < self.page:
                break
        self.loaded_at = time.monotonic()


def _put(table: MeterTable, feeder_sizes: dict[str, int], entry: MeterInfo) -> None:
    change = table.put(entry)
    if change is None:  # a refresh re-reading what this replica wrote
        return
    before, now = change
    if before is not None:
        feeder_sizes[before.feeder] -= 1
    feeder_sizes[now.feeder] = feeder_sizes.get(now.feeder, 0) + 1


def _meter_id(m: MeterInfo) -> str:
    return m.meter_id


class MeterService:
    """What one meter-service process holds and does."""

    register_page = REGISTRY_PAGE  # register states read per query at start-up

    def __init__(self, settings: MeterSettings, pool: asyncpg.Pool, publisher: EventPublisher, source: str):
        self.name = SERVICE
        self.settings = settings
        self.pool = pool
        self.publisher = publisher
        self.source = source
        self.limits = Limits(
            settings.max_demand_kw,
            settings.register_modulus_kwh,
            settings.future_tolerance_seconds,
            settings.momentary_limit_seconds,
            settings.pairing_horizon_seconds,
            settings.frozen_intervals,
        )
        self.registry = MeterRegistry(pool)
        # In columns indexed by the registry's rows (rebound when a reload swaps the registry's table).
        self.registers = RegisterTable(self.registry.entries)
        # meter → its power events not paired yet and its recent interruptions (domain.PowerTimeline)
        self.timelines: dict[str, dict] = {}
        self.unpaired_power_ups = 0
        self._expired_at: datetime | None = None
        self.seen_events: OrderedDict[tuple[str, int, str], None] = OrderedDict()
        self._events_lock = asyncio.Lock()
        self._batch_seq = 0
        self._registrations = 0
        self.register_writer = RegisterWriter(pool)
        # Registry changes are committed with their events (the transactional outbox; this service is its host:
        # name, pool, publisher). Readings do not go through it: docs/guarantees.md, "Meter readings".
        self.outbox = Outbox(self, batch_size=settings.max_batch_meters)  # a registry write: one publish
        self._outbox_purged_at: float | None = None

    def work_done(self) -> int:
        """Moves whenever a request changed what the service holds (the heap release's cue)."""
        return self._batch_seq + self._registrations

    # ------------------------------------------------------------------------------------------ loading
    @property
    def feeder_sizes(self) -> dict[str, int]:
        return self.registry.feeder_sizes

    async def load(self) -> None:
        """Fill the caches from PostgreSQL (start-up); publish registry changes a previous run left unpublished."""
        await self.outbox.install()
        await self.relay_outbox()
        await self.registry.reload()
        # In pages, straight into the table: a city's millions of states never sit in memory as rows at once.
        registers, after = RegisterTable(self.registry.entries), None
        while True:
            page = await repository.load_register_page(self.pool, after, self.register_page)
            for key, state in page:
                registers[key] = state
            if len(page) < self.register_page:
                break
            after = page[-1][0]
        self.registers = registers
        self.timelines = await repository.load_power_timelines(self.pool)
        log.info(
            "meter caches loaded", extra={"meters": len(self.registry), "registers": len(self.registers)}
        )

    async def refresh_forever(self) -> None:
        """Pick up registry changes written by other replicas; publish registry changes whose publish failed."""
        while True:
            await asyncio.sleep(self.settings.registry_refresh_seconds)
            try:
                await self.registry.refresh()
            except DB_ERRORS as exc:
                log.warning("registry refresh failed: %s", type(exc).__name__)
            await self.relay_outbox()

    async def relay_outbox(self) -> int:
        """Publish the registry events committed but not yet acknowledged (a write answered 503, a previous run);
        how many. Never raises: what fails stays for the next call."""
        try:
            n = await self.outbox.drain()
            await self.outbox.backlog()
            now = asyncio.get_running_loop().time()
            if self._outbox_purged_at is None or now - self._outbox_purged_at > 3600:
                await self.outbox.purge_sent()
                self._outbox_purged_at = now
            return n
        except (BrokerUnavailable, *DB_ERRORS) as exc:
            log.warning("registry events not published yet (will retry): %s", type(exc).__name__)
            return 0

    # ----------------------------------------------------------------------------------------- registry
    async def register_meters(self, items: list[Any]) -> tuple[int, dict]:
        """Validate and upsert registry entries, publish them on the registry topic. Replacement (a later
        installation date) resets the meter's registers."""
        check_batch_size(len(items), self.settings.max_batch_meters, "meters")
        valid, errors = validate_items(MeterIn, items, id_field="meter_id")
        area_errors = check_meter_areas(valid, hanoi())
        errors.extend(area_errors)
        bad = {e.index for e in area_errors}
        latest: dict[str, MeterIn] = {}
        for i, m in valid:
            if i not in bad:
                latest[m.meter_id] = m  # a later row for the same meter wins
        meters = list(latest.values())
        if meters:
            self._registrations += 1
            # Who may report for a meter is access control, not registry data for subscribers.
            events = publishing.registry_events(
                (m.model_dump(mode="json", exclude={"gateway"}) for m in meters), self.source
            )
            # The change and its events commit together: an event that cannot be published now (503) is
            # published later (relay_outbox), even if the client never retries.
            async with self.pool.acquire() as conn, conn.transaction():
                before = await repository.upsert_meters(conn, meters)
                await self.outbox.add(conn, events)
            replaced = [
                m.meter_id
                for m in meters
                if (old := before[m.meter_id]) is not None and m.installed_on > old.installed_on
            ]
            await self.register_writer.forget(replaced)
            for mid in replaced:
                self.registers.drop_meter(mid)
            self.registry.apply(
                [
                    MeterInfo(
                        m.meter_id,
                        m.customers,
                        m.district,
                        m.commune,
                        m.feeder,
                        m.transformer,
                        m.installed_on,
                        m.interval_seconds,
                        m.gateway,
                        m.decommissioned_on,
                    )
                    for m in meters
                ]
            )
            # 2xx only once the broker acknowledged them, as before (BrokerUnavailable → 503).
            await self.outbox.drain(wait=True)
        accepted = sum(1 for i, _ in valid if i not in bad)
        return batch_result(SERVICE, "meter", accepted, sorted(errors, key=lambda e: e.index))

    async def decommission(self, meter_id: str, on: Any) -> tuple[int, dict]:
        """Remove a registered meter from service from the day ``on``: it leaves customers served (N_T) from
        that day, readings after it are refused; published as a registry change like any other."""
        m = self.registry.get(meter_id)
        if m is None:
            m = await repository.get_meter(self.pool, meter_id)
        if m is None:
            raise ApiError(404, "not_found", "no such meter")
        item = {
            "meter_id": m.meter_id,
            "customers": m.customers,
            "district": m.district,
            "commune": m.commune,
            "feeder": m.feeder,
            "transformer": m.transformer,
            "installed_on": m.installed_on.isoformat(),
            "interval_seconds": m.interval_seconds,
            "gateway": m.gateway,
            "decommissioned_on": on,
        }
        return await self.register_meters([item])

    async def import_csv(self, text: str) -> tuple[int, dict]:
        """Bulk import: a CSV with a header row of the registry fields (empty cells = default)."""
        reader = csv.DictReader(io.StringIO(text))
        items: list[Any] = []
        for row in reader:
            item: dict[str, Any] = {
                k.strip(): v.strip() for k, v in row.items() if k and v is not None and v.strip()
            }
            for int_field in ("customers", "interval_seconds"):  # dates stay text: parsed by MeterIn
                if int_field in item and item[int_field].lstrip("-").isdigit():
                    item[int_field] = int(item[int_field])
            items.append(item)
        if len(items) > self.settings.max_batch_meters:
            raise ApiError(
                413, "batch_too_large", f"at most {self.settings.max_batch_meters} rows per import"
            )
        return await self.register_meters(items)

    # ----------------------------------------------------------------------------------------- readings
    def authorize(self, meter_ids: Iterable[tuple[int, str]], reporter: str | None) -> None:
        """403 naming every registered meter of the batch that ``reporter`` may not report for (nothing of the
        batch is accepted then); ``reporter`` None: a privileged (``meter:admin``) principal."""
        if reporter is None:
            return
        registry = self.registry.entries
        refuse_unowned(
            meter_ids, lambda mid: may_report(reporter, mid, registry), field="meter_id", noun="meter"
        )

    async def ingest_readings(self, raw: bytes, reporter: str | None = None) -> tuple[int, dict]:
        """Validate a batch of readings (the raw JSON body), publish the accepted ones (acks awaited).
        ``reporter``: the reporting principal's id, checked against each meter's gateway (None: privileged).

        The Kafka acknowledgement is the durability point of a reading. The register states it moved are then
        persisted before the answer too (group commit: one statement serves every request waiting at that
        moment), because energy deltas are computed from them: a register cache older than what was published
        would make the first delta after a restart span readings already counted.
        """
        valid, errors = READINGS.parse(raw, limit=self.settings.max_batch_readings, noun="readings")
        self.authorize(((i, r["meter_id"]) for i, r in valid), reporter)
        self._batch_seq += 1
        seq = self._batch_seq
        registers, entries = self.registers, self.registry.entries
        if registers.meters is not entries:
            registers.rebind(entries)
        outcome = validate_readings(valid, entries, registers, datetime.now(UTC), self.limits)
        applied = outcome.applied
        try:
            encoded = publishing.reading_events([p for _, p in outcome.accepted], self.source)
            if outcome.estimates:
                encoded += publishing.estimate_events(outcome.estimates, self.source)
            await self.publisher.publish(encoded)
        except BaseException:
            undo_registers(registers, outcome.previous, applied)
            raise
        self.register_writer.mark(seq, applied)
        await self.register_writer.flush()  # 503 if PostgreSQL is down: a retry is then seen as duplicates
        if outcome.errors:
            errors.extend(outcome.errors)
            errors.sort(key=lambda e: e.index)
        return batch_result(SERVICE, "reading", len(outcome.accepted), errors, outcome.duplicates)

    # ------------------------------------------------------------------------------------------- events
    async def ingest_events(self, items: list[Any], reporter: str | None = None) -> tuple[int, dict]:
        """Validate meter events, publish them with the interruptions and supply changes they complete.
        ``reporter`` as for :meth:`ingest_readings`."""
        check_batch_size(len(items), self.settings.max_batch_events, "events")
        valid, errors = validate_items(MeterEventIn, items, id_field="meter_id")
        self.authorize(((i, e.meter_id) for i, e in valid), reporter)
        # Outage pairing reads and writes shared state across awaits: one event batch at a time.
        async with self._events_lock:
            now = datetime.now(UTC)
            outcome = validate_events(
                valid,
                self.registry.entries,
                self.timelines,
                self.seen_events,
                self.feeder_sizes,
                now,
                self.limits,
            )
            timelines = {**self.timelines, **{m: t for m, t in outcome.timelines.items() if t is not None}}
            for mid in [m for m, t in outcome.timelines.items() if t is None]:
                timelines.pop(mid, None)
            # What the pairing horizon ends (power-ups that waited for their power-down in vain, old
            # interruptions) goes out with a batch, looked for at most once a minute (it walks every timeline).
            if self._expired_at is None or (now - self._expired_at).total_seconds() >= 60:
                self._expired_at = now
                expired = expire_power_timelines(
                    timelines, self.registry.entries, self.registers, now, self.limits
                )
            else:
                expired = EventOutcome()
            changes = {**outcome.timelines, **expired.timelines}
            encoded = publishing.meter_events((p for _, p in outcome.accepted), self.source)
            encoded += publishing.interruption_events(
                outcome.interruptions + expired.interruptions, self.source
            )
            encoded += publishing.supply_events(outcome.supply_changes, self.source)
            await self.publisher.publish(encoded)
            # Timelines are persisted before the answer: a lost power-down would lose its interruption.
            if changes:
                await repository.save_power_timelines(self.pool, changes)
            for mid, tl in changes.items():
                if tl is None:
                    self.timelines.pop(mid, None)
                else:
                    self.timelines[mid] = tl
            self.unpaired_power_ups += expired.unpaired_power_ups
            POWER_UPS_UNPAIRED.inc(expired.unpaired_power_ups)
            INTERRUPTIONS_INFERRED.inc(len(expired.interruptions))
            for key in outcome.seen:
                self.seen_events[key] = None
            while len(self.seen_events) > self.settings.event_dedup_memory:
                self.seen_events.popitem(last=False)
        errors.extend(outcome.errors)
        errors.sort(key=lambda e: e.index)
        return batch_result(SERVICE, "meter_event", len(outcome.accepted), errors, outcome.duplicates)
