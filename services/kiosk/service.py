"""The kiosk service's use cases: the fleet registry and telemetry/session ingest.

The registry lives in memory (``shared.registry_cache``) so ingest makes no per-item database round trip. A
registry write and its registry events commit in one transaction (the transactional outbox, ``shared.outbox``);
ingest publishes directly and answers only once the broker acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import asyncpg
from pydantic import AfterValidator, BaseModel, Field

from services.kiosk import domain, publishing, repository
from services.kiosk.domain import KioskInfo
from services.kiosk.settings import KioskSettings
from shared.areas import hanoi
from shared.auth import ApiError, Principal, refuse_unowned
from shared.contracts.base import AreaCode, EntityId, StrictBool
from shared.contracts.cloudevents import EncodedEvent
from shared.contracts.kiosk import KioskRegistered, OpeningPeriod, Peripheral
from shared.http import RequestModel, ServiceContext
from shared.ingest import ItemError, SaneAwareDatetime, batch_result, named_entities, validate_items
from shared.outbox import Outbox, publish_now
from shared.registry_cache import RegistryCache, whole_table

log = logging.getLogger(__name__)
SERVICE = "kiosk"
#: days of heartbeats, peripheral changes and sessions kept for the per-kiosk status
STATUS_DAYS = repository.STATUS_DAYS


def _safe_text(value: str) -> str:
    reason = domain.unsafe_text_reason(value)
    if reason:
        raise ValueError(reason)
    return value


# Free text shown to operators: any script or emoji, but no control or bidi-override characters.
DisplayText = Annotated[str, AfterValidator(_safe_text)]


class KioskIn(RequestModel):
    """A kiosk's registry entry."""

    building: DisplayText = Field(
        min_length=1, max_length=200, description="building or one-stop centre name"
    )
    address: DisplayText = Field(min_length=1, max_length=300)
    district: AreaCode
    commune: AreaCode | None = None
    opening_hours: list[OpeningPeriod] = Field(max_length=14, description="scheduled service time, local")
    peripherals: list[Peripheral] = Field(max_length=7, description="peripherals fitted")
    software_version: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+\-]*$")
    in_service_since: SaneAwareDatetime | None = Field(None, description="default: now (first registration)")
    active: StrictBool = True
    gateway: EntityId | None = Field(None, description="principal id of the gateway that reports for it")


class KioskImportItem(KioskIn):
    kiosk_id: EntityId


def registration_problems(kiosk_id: str, entry: KioskIn, max_skew_s: float = 300.0) -> list[tuple[str, str]]:
    """``(field, reason)`` of every registry rule ``entry`` breaks (empty: valid)."""
    now = datetime.now(UTC)
    preview = KioskRegistered(
        kiosk_id=kiosk_id,
        building=entry.building,
        address=entry.address,
        district=entry.district,
        commune=entry.commune,
        opening_hours=entry.opening_hours,
        peripherals=entry.peripherals,
        software_version=entry.software_version,
        in_service_since=entry.in_service_since or now,
        active=entry.active,
        version=1,
    )
    problems = domain.check_registration(preview, hanoi())
    late = domain.check_service_start(entry.in_service_since, now, max_skew_s)
    return [*problems, ("in_service_since", late)] if late else problems


def _row_of(kiosk_id: str, entry: KioskIn) -> dict:
    d = entry.model_dump(mode="python")
    d["kiosk_id"] = kiosk_id
    d["opening_hours"] = [p.model_dump() for p in entry.opening_hours]
    return d


def authorize(principal: Principal, items: Sequence[Any], registry: dict[str, KioskInfo]) -> None:
    """403 naming every kiosk of the batch this principal may not report for (nothing is accepted then)."""
    if principal.has_scope("kiosk:admin"):
        return
    refuse_unowned(
        named_entities(items, "kiosk_id"),
        lambda kiosk: domain.may_report(principal.id, principal.attributes, False, kiosk, registry),
        field="kiosk_id",
        noun="kiosk",
    )


async def _load_registry(pool: asyncpg.Pool) -> list[KioskInfo]:
    return [
        KioskInfo(
            r["kiosk_id"], r["district"], frozenset(r["peripherals"]), r["active"], r["gateway_principal"]
        )
        for r in await repository.registry_index(pool)
    ]


#: ``check(valid items, registry, now, max_skew_s=, max_age_s=)`` → (accepted, errors, duplicates): domain.check_*
Check = Callable[..., tuple[list[Any], list[ItemError], int]]
#: ``to_events(accepted, source)`` → encoded events: publishing.*_events
ToEvents = Callable[[list[Any], str], list[EncodedEvent]]


class KioskService:
    """What one kiosk-service process holds and does."""

    def __init__(self, settings: KioskSettings, ctx: ServiceContext):
        assert ctx.pool is not None, "the kiosk service needs its database pool"
        self.settings = settings
        self.pool = ctx.pool
        # Read from the context on every publish: an operator (or a fault test) may replace the publisher.
        self._ctx = ctx
        self.source = ctx.source
        pool = ctx.pool
        self.registry: RegistryCache[KioskInfo] = RegistryCache(
            SERVICE, whole_table(lambda: _load_registry(pool)), key=lambda k: k.kiosk_id
        )
        # The relay looks for registry events of other replicas' writes (and first retries) this often.
        self.outbox = Outbox(ctx, poll_seconds=settings.registry_republish_seconds)
        self._closed_days: frozenset[int] | None = None
        self._pruned_at = 0.0

    async def load(self) -> None:
        """Start-up: the outbox table, registry changes not yet on the topic handed to it, the registry cache."""
        await self.outbox.install()
        await self._hand_over_unpublished()
        await self.registry.reload()

    async def _hand_over_unpublished(self) -> None:
        # Registry changes stored before the outbox existed whose publish had failed (a republisher loop retried
        # them then): their events go to the outbox, so nothing stored is lost in the upgrade.
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                rows = await repository.unpublished(conn)
                if not rows:
                    return
                await self.outbox.add(conn, publishing.registration_events(rows, self.source))
                await repository.mark_published(conn, [(r["kiosk_id"], r["version"]) for r in rows])
            self.outbox.notify()

    # ----------------------------------------------------------------------------------------- registry
    async def _store(
        self, entries: list[dict], principal: Principal, action: str
    ) -> tuple[list[asyncpg.Record], bool]:
        """Upsert registry entries and their registry events in one transaction (the events go out through the
        outbox); the stored rows, and whether the events were on the topic before the answer (False: the broker
        is away, the relay publishes them when it is back)."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await repository.upsert_kiosks(conn, entries, principal=principal.id, action=action)
            await self.outbox.add(conn, publishing.registration_events(rows, self.source))
        self.outbox.notify()
        published = await publish_now(self.outbox, self.settings.kafka.publish_timeout_s + 5)
        await self.registry.reload()
        return rows, published

    async def put_kiosk(self, kiosk_id: str, entry: KioskIn, principal: Principal) -> dict:
        """Upsert one registry entry: stored in PostgreSQL, then published on ``ioc.kiosk.registry``."""
        problems = registration_problems(kiosk_id, entry, self.settings.max_clock_skew_seconds)
        if problems:
            raise ApiError(
                422,
                "invalid_kiosk",
                "the registry entry is not valid",
                [{"item": None, "id": kiosk_id, "field": f, "reason": r} for f, r in problems],
            )
        rows, published = await self._store([_row_of(kiosk_id, entry)], principal, "kiosk.registered")
        return {"kiosk": repository.as_dict(rows[0]), "published": published}

    async def import_kiosks(self, items: list[dict[str, Any]], principal: Principal) -> tuple[int, dict]:
        """Upsert many kiosks at once; invalid items are reported one by one and the valid ones stored."""
        valid, errors = validate_items(KioskImportItem, items, id_field="kiosk_id")
        accepted: list[dict] = []
        seen: set[str] = set()
        for i, item in valid:
            problems = registration_problems(item.kiosk_id, item, self.settings.max_clock_skew_seconds)
            if problems:
                errors.extend(ItemError(i, item.kiosk_id, f, r) for f, r in problems)
            elif item.kiosk_id in seen:
                errors.append(
                    ItemError(i, item.kiosk_id, "kiosk_id", "listed twice in the batch", "duplicate")
                )
            else:
                seen.add(item.kiosk_id)
                accepted.append(_row_of(item.kiosk_id, item))
        if accepted:
            await self._store(accepted, principal, "kiosk.imported")
        return batch_result(SERVICE, "registration", len(accepted), sorted(errors, key=lambda e: e.index), 0)

    async def kiosks(self, *, district: str | None, limit: int, offset: int) -> list[dict]:
        rows = await repository.list_kiosks(self.pool, district=district, limit=limit, offset=offset)
        return [repository.as_dict(r) for r in rows]

    async def kiosk(self, kiosk_id: str) -> dict:
        row = await repository.get_kiosk(self.pool, kiosk_id)
        if row is None:
            raise ApiError(404, "not_found", "no kiosk with this id")
        return repository.as_dict(row)

    # ------------------------------------------------------------------------------------------- ingest
    async def ingest(
        self,
        principal: Principal,
        items: list[Any],
        kind: str,
        model: type[BaseModel],
        check: Check,
        to_events: ToEvents,
    ) -> tuple[int, dict]:
        """Validate a batch of ``model`` items, check them against the registry, publish the accepted ones (acks
        awaited: 2xx means durable)."""
        registry = self.registry.entries
        authorize(principal, items, registry)
        valid, errors = validate_items(model, items, id_field="kiosk_id")
        accepted, more, dups = check(
            valid,
            registry,
            datetime.now(UTC),
            max_skew_s=self.settings.max_clock_skew_seconds,
            max_age_s=self.settings.max_event_age_seconds,
        )
        if accepted:
            await self._ctx.publisher.publish(to_events(accepted, self.source))
            # then the status view (idempotent: a retried batch stores nothing twice); a failure here answers 503
            # and the gateway retries, the copies on the broker are de-duplicated by the processor's state
            await self._record_status(kind, accepted)
        return batch_result(SERVICE, kind, len(accepted), sorted(errors + more, key=lambda e: e.index), dups)

    # ------------------------------------------------------------------------------------------- status
    async def _record_status(self, kind: str, accepted: list[Any]) -> None:
        if kind == "heartbeat":
            await repository.record_heartbeats(self.pool, [(h.kiosk_id, h.at) for h in accepted])
        elif kind == "peripheral":
            await repository.record_peripheral_changes(
                self.pool, [(p.kiosk_id, p.peripheral, p.at, p.state, p.paper) for p in accepted]
            )
        elif kind == "session":
            await repository.record_sessions(
                self.pool,
                [
                    (x.kiosk_id, x.session_id, x.journey, x.started_at, x.ended_at, x.outcome)
                    for x in accepted
                ],
            )
        if time.monotonic() - self._pruned_at > 3600:
            self._pruned_at = time.monotonic()
            await repository.prune_status(self.pool)

    def closed_days(self) -> frozenset[int]:
        """The city calendar's days off, as the KPI processor reads them (settings.calendar_csv)."""
        if self._closed_days is None:
            from pathlib import Path

            from shared.calendar import city_calendar

            path = self.settings.calendar_csv
            calendar = city_calendar(Path(path)) if path else city_calendar()
            self._closed_days = domain.closed_days_of(calendar.days_off)
        return self._closed_days

    async def kiosk_status(self, kiosk_id: str, start: datetime, end: datetime, now: datetime) -> dict:
        """A kiosk as the console shows it: its registry facts (no gateway), its peripherals' current states,
        its sessions of today (Hanoi day) and of ``[start, end)``, and its technical and per-journey functional
        availability over ``[start, min(end, now))`` by the kiosk KPIs' definition (:func:`domain.kiosk_availability`
        on the heartbeats and peripheral changes ingest accepted; docs/kiosk-status.md)."""
        row = await repository.get_kiosk(self.pool, kiosk_id)
        if row is None:
            raise ApiError(404, "not_found", "no kiosk with this id", [{"kiosk_id": kiosk_id}])
        reg = repository.as_dict(row)
        reg.pop("gateway_principal", None)  # who may report for it: access control, not for the console
        reg.pop("published_version", None)
        end = min(end, now)
        timeout = self.settings.heartbeat_timeout_seconds
        t_start, t_end, t_now = start.timestamp(), end.timestamp(), now.timestamp()
        # a heartbeat more than a timeout before ``start`` cannot make the kiosk online within the period
        beats = await repository.heartbeats_between(
            self.pool, kiosk_id, start - timedelta(seconds=timeout), end
        )
        segments: list[list[float]] = []
        last: float | None = None
        for at in beats:
            segments, last = domain.fold_heartbeat(segments, last, at.timestamp(), timeout)
        online = domain.online_intervals(segments, last, t_end, timeout)
        changes = await repository.peripheral_changes_until(self.pool, kiosk_id, end)
        histories = {
            p: domain.fold_peripheral(
                p, [(c["at"].timestamp(), c["state"], c["paper"]) for c in changes if c["peripheral"] == p]
            )
            for p in {c["peripheral"] for c in changes}
        }
        down = {p: h.down_intervals(t_end) for p, h in histories.items()}
        info = {
            "hours": reg["opening_hours"],
            "since": row["in_service_since"].timestamp(),
            "peripherals": reg["peripherals"],
        }
        av = domain.kiosk_availability(info, online, down, t_start, t_end, self.closed_days())
        last_beat = await repository.last_heartbeat(self.pool, kiosk_id)
        today = domain.window_start(t_now, domain.DAY)
        sessions_today = await repository.session_counts(
            self.pool, kiosk_id, domain.from_epoch(today), domain.from_epoch(today + domain.DAY)
        )
        sessions_period = await repository.session_counts(self.pool, kiosk_id, start, end)
        peripherals = []
        for p in reg["peripherals"]:
            h = histories.get(p)
            peripherals.append(
                {
                    "peripheral": p,
                    "state": h.state if h else None,
                    "paper": h.paper if h else None,
                    "usable": (h.fault is None) if h else None,
                    "fault": h.fault if h else None,
                    "since": domain.from_epoch(h.since).isoformat() if h and h.since is not None else None,
                    "reported_at": domain.from_epoch(h.at).isoformat() if h and h.at is not None else None,
                }
            )
        return {
            "kiosk": reg,
            "online": domain.is_online(last_beat.timestamp() if last_beat else None, t_now, timeout),
            "last_heartbeat": last_beat.isoformat() if last_beat else None,
            "peripherals": peripherals,
            "sessions_today": {"total": sum(sessions_today.values()), **sessions_today},
            "sessions": {"total": sum(sessions_period.values()), **sessions_period},
            "availability": {
                "from": start.isoformat(),
                "to": end.isoformat(),
                "scheduled_seconds": av.scheduled_s,
                "online_seconds": av.online_s,
                "technical_pct": domain.ratio(av.online_s, av.scheduled_s, 100.0),
                "journeys": [
                    {
                        "journey": j,
                        "available_seconds": up,
                        "scheduled_seconds": sched,
                        "functional_pct": domain.ratio(up, sched, 100.0),
                    }
                    for j, (up, sched) in sorted(av.journeys.items())
                ],
            },
        }
