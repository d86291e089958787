"""The kiosk service's use cases: the fleet registry and telemetry/session ingest.

The registry lives in memory (``shared.registry_cache``) so ingest makes no per-item database round trip. A
registry write and its registry events commit in one transaction (the transactional outbox, ``shared.outbox``);
ingest publishes directly and answers only once the broker acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
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
        return batch_result(SERVICE, kind, len(accepted), sorted(errors + more, key=lambda e: e.index), dups)
