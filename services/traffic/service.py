"""The traffic service's use cases: the intersection registry, hi-res event ingest, the measures store and export.

The registry lives in memory (``shared.registry_cache``) so ingest makes no per-event database round trip; the
ingest screens (out-of-order and duplicate checks per controller) live here too. A registry write and its registry
events commit in one transaction (the transactional outbox, ``shared.outbox``); ingest publishes directly and
answers only once the broker acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Required

import asyncpg
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from shared.areas import hanoi
from shared.auth import ApiError, Principal, refuse_unowned
from shared.contracts.base import AreaCode, DisplayText, EntityId, StrictFloat, StrictInt
from shared.contracts.cloudevents import ReceivedEvent, parse_time
from shared.contracts.traffic import IntersectionMeasuresComputed, PhaseMeasuresComputed
from shared.http import ServiceContext
from shared.ingest import ItemError, batch_result, named_entities, validate_items
from shared.outbox import Outbox
from shared.registry_cache import RegistryCache, whole_table

from . import repository
from .domain import IngestScreen, may_report, parse_detector_rows, to_ms
from .publishing import hires_chunks, intersection_configured
from .settings import TrafficSettings

log = logging.getLogger(__name__)
SERVICE = "traffic"
MEASURES_TYPE = PhaseMeasuresComputed.__ioc_event_type__.type  # type: ignore[attr-defined]
INTERSECTION_MEASURES_TYPE = IntersectionMeasuresComputed.__ioc_event_type__.type  # type: ignore[attr-defined]
#: Ingest meeting a controller it does not know reloads the registry at most this often (another replica may
#: have registered it).
UNKNOWN_CONTROLLER_RELOAD_SECONDS = 1.0

#: A registry row as the service uses it (repository.load_intersections): intersection_id, controller_id, name,
#: district, lat, lon, phases, detectors, gateway, revision.
Intersection = dict[str, Any]


class HiResEventIn(BaseModel):
    """One controller log entry as a gateway sends it."""

    model_config = ConfigDict(extra="forbid")

    timestamp: AwareDatetime = Field(description="event time with its UTC offset (0.1 s resolution)")
    controller_id: EntityId
    event_code: StrictInt = Field(
        ge=0,
        le=65535,
        description="Indiana hi-res event code (0-255) or a vendor code above; every code is accepted and "
        "carried, the measures use the codes docs/traffic-measures.md lists",
    )
    parameter: StrictInt = Field(ge=0, le=65535, description="phase, detector channel, overlap, pattern...")


def _items_validator() -> TypeAdapter:
    """HiResEventIn's rules over a list of plain dicts: an all-valid batch is checked in one call without building
    a model per event (the rare batch with errors goes through ``validate_items`` for per-item errors)."""
    fields = {name: Required[f.rebuild_annotation()] for name, f in HiResEventIn.model_fields.items()}
    item = TypedDict("HiResEventItem", fields)  # type: ignore[operator,misc]  # fields built from the model
    item.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return TypeAdapter(list[item])  # type: ignore[valid-type]


HIRES_ITEMS = _items_validator()


class DetectorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: StrictInt = Field(ge=1, le=256)
    phase: StrictInt = Field(ge=1, le=40)
    function: Literal["advance", "presence", "count", "yellow_red"]
    additional_functions: list[Literal["advance", "presence", "count", "yellow_red"]] = Field(
        default_factory=list, max_length=3
    )
    distance_m: StrictFloat | None = Field(None, ge=0, le=1000)
    speed_kmh: StrictFloat | None = Field(None, gt=0, le=130)


class IntersectionIn(BaseModel):
    """An intersection and its controller, phases and detectors."""

    model_config = ConfigDict(extra="forbid")

    intersection_id: EntityId
    name: DisplayText = Field(min_length=1, max_length=200)
    district: AreaCode
    lat: StrictFloat = Field(ge=-90, le=90)
    lon: StrictFloat = Field(ge=-180, le=180)
    controller_id: EntityId
    phases: list[Annotated[int, Field(ge=1, le=40)]] = Field(default_factory=list, max_length=40)
    detectors: list[DetectorIn] = Field(default_factory=list, max_length=256)
    gateway: EntityId | None = Field(
        None,
        description="principal id of the gateway / signal-control system that "
        "reports for this controller (none: only traffic:admin principals may); "
        "access control only, not published on the registry topic",
    )


def authorize(principal: Principal, raw_items: list[Any], registry: dict[str, Intersection]) -> None:
    """403 naming every item whose registered controller this principal may not report for (nothing is accepted
    then). Unregistered controllers pass: ingest rejects them item by item."""
    if principal.has_scope("traffic:admin"):
        return
    refuse_unowned(
        named_entities(raw_items, "controller_id"),
        lambda cid: may_report(principal.id, False, cid, registry),
        field="controller_id",
        noun="controller",
    )


def measure_rows(events: list[ReceivedEvent]) -> list[tuple]:
    """Rows for ``phase_measures`` from measure events (the payload is stored whole as JSON)."""
    rows = []
    for ev in events:
        if ev.type != MEASURES_TYPE:
            continue
        m = ev.data
        rows.append(
            (
                m["intersection_id"],
                m["phase"],
                parse_time(m["bin_start"]),
                m["bin_seconds"],
                m.get("district"),
                m,
                parse_time(m["computed_at"]),
            )
        )
    return rows


def intersection_measure_rows(events: list[ReceivedEvent]) -> list[tuple]:
    """Rows for ``intersection_measures`` from intersection measure events (the payload stored whole)."""
    return [
        (
            ev.data["intersection_id"],
            parse_time(ev.data["bin_start"]),
            ev.data["bin_seconds"],
            ev.data.get("district"),
            ev.data,
            parse_time(ev.data["computed_at"]),
        )
        for ev in events
        if ev.type == INTERSECTION_MEASURES_TYPE
    ]


class TrafficService:
    """What one traffic-service process holds and does."""

    def __init__(self, settings: TrafficSettings, ctx: ServiceContext):
        assert ctx.pool is not None, "the traffic service needs its database pool"
        self.settings = settings
        self.pool = ctx.pool
        # Read from the context on every publish: an operator (or a fault test) may replace the publisher.
        self._ctx = ctx
        self.source = ctx.source
        pool = ctx.pool
        self.registry: RegistryCache[Intersection] = RegistryCache(
            SERVICE,
            whole_table(lambda: repository.load_intersections(pool)),
            key=lambda row: row["controller_id"],
        )
        self.screen = IngestScreen(
            future_tolerance_s=settings.future_tolerance_seconds,
            out_of_order_tolerance_s=settings.out_of_order_tolerance_seconds,
            max_age_s=settings.max_event_age_seconds,
        )
        self.outbox = Outbox(ctx)
        # History has its own screen: its age is not judged against now and its order not against live events.
        self.backfill_screen = IngestScreen(
            future_tolerance_s=settings.future_tolerance_seconds,
            out_of_order_tolerance_s=settings.out_of_order_tolerance_seconds,
            max_age_s=None,
        )

    async def load(self) -> None:
        """Start-up: the outbox table, the registry cache."""
        await self.outbox.install()
        await self.registry.reload()

    async def _registry_changed(self, conn: asyncpg.Connection, rows: Sequence[Intersection]) -> None:
        """The registry records of changed intersections, into the outbox in the change's transaction."""
        await self.outbox.add(conn, [intersection_configured(self.source, r) for r in rows])

    async def _after_registry_commit(self) -> None:
        self.outbox.notify()
        await self.registry.reload()
        # 2xx only once the broker acknowledged the registry records, as when they were published inside the
        # transaction (BrokerUnavailable → 503); the change is committed either way now, and the relay publishes
        # it when the broker is back (it used to be rolled back).
        await self.outbox.drain(wait=True)

    # ----------------------------------------------------------------------------------------- registry
    async def register(self, raw_items: list[dict[str, Any]]) -> tuple[int, dict]:
        """Validate and upsert intersections, publish them on the registry topic."""
        valid, errors = validate_items(IntersectionIn, raw_items, id_field="intersection_id")
        districts = {a.code for a in hanoi().districts}
        seen_ids: set[str] = set()
        seen_cids: set[str] = set()
        ok: list[tuple[int, IntersectionIn]] = []
        for i, m in valid:
            if m.district not in districts:
                errors.append(
                    ItemError(i, m.intersection_id, "district", "unknown district code", "unknown_area")
                )
            elif m.intersection_id in seen_ids or m.controller_id in seen_cids:
                errors.append(
                    ItemError(
                        i,
                        m.intersection_id,
                        "intersection_id",
                        "intersection or controller appears twice in the batch",
                        "duplicate",
                    )
                )
            elif len({d.channel for d in m.detectors}) != len(m.detectors):
                errors.append(
                    ItemError(i, m.intersection_id, "detectors", "a detector channel is listed twice")
                )
            else:
                seen_ids.add(m.intersection_id)
                seen_cids.add(m.controller_id)
                ok.append((i, m))
        accepted = 0
        if ok:
            async with self.pool.acquire() as conn, conn.transaction():
                taken = await repository.controllers_owned_elsewhere(
                    conn, [(m.intersection_id, m.controller_id) for _, m in ok]
                )
                for i, m in ok:
                    if m.controller_id in taken:
                        errors.append(
                            ItemError(
                                i,
                                m.intersection_id,
                                "controller_id",
                                "controller already belongs to another intersection",
                                "conflict",
                            )
                        )
                items = [m.model_dump(mode="json") for _, m in ok if m.controller_id not in taken]
                if items:
                    rows = await repository.upsert_intersections(conn, items)
                    await self._registry_changed(conn, rows)
                    accepted = len(rows)
            await self._after_registry_commit()
        errors.sort(key=lambda e: e.index)
        return batch_result(SERVICE, "intersection", accepted, errors)

    async def import_intersections(self, rows: list[dict[str, str]]) -> tuple[int, dict]:
        """CSV rows (intersection_id, name, district, lat, lon, controller_id, phases, optional gateway) →
        :meth:`register`; a controller keeps its detectors, and its gateway when the file has no such column."""
        items: list[dict[str, Any]] = []
        for row in rows:
            item: dict[str, Any] = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            for key in ("lat", "lon"):
                try:
                    item[key] = float(item[key])
                except (KeyError, ValueError):
                    pass  # validation reports it for this row
            phases = item.get("phases", "")
            try:
                item["phases"] = [int(p) for p in phases.replace(";", " ").replace(",", " ").split()]
            except ValueError:
                pass
            existing = self.registry.get(item.get("controller_id", ""))
            item["detectors"] = existing["detectors"] if existing else []  # keep detectors already configured
            if "gateway" in item:
                item["gateway"] = item["gateway"] or None  # an empty cell: no gateway
            else:
                item["gateway"] = existing.get("gateway") if existing else None  # no column: keep the gateway
            items.append(item)
        return await self.register(items)

    async def import_detectors(self, rows: list[dict[str, str]]) -> tuple[int, dict]:
        """ATSPM-style detector rows replace the detectors of every controller present; all or nothing."""
        parsed, errors = parse_detector_rows(rows)
        by_controller: dict[str, list[dict]] = {}
        channels: dict[str, set[int]] = {}
        for i, cid, det in parsed:
            if cid not in self.registry:
                errors.append(
                    ItemError(
                        i,
                        cid,
                        "DeviceId",
                        f"line {i + 2}: unknown controller: register the intersection first",
                        "unknown_entity",
                    )
                )
                continue
            try:
                DetectorIn.model_validate(det)
            except ValueError:
                errors.append(
                    ItemError(
                        i,
                        cid,
                        "Parameter",
                        f"line {i + 2}: channel 1-256, phase 1-40, distance 0-1000 m and speed up to 130 km/h",
                    )
                )
                continue
            if det["channel"] in channels.setdefault(cid, set()):
                errors.append(
                    ItemError(
                        i, cid, "Parameter", f"line {i + 2}: detector channel listed twice", "duplicate"
                    )
                )
                continue
            channels[cid].add(det["channel"])
            by_controller.setdefault(cid, []).append(det)
        accepted = 0
        # All or nothing: a file replaces each controller's detectors, so applying part of it would leave a
        # controller without the refused channels; a script notices the 422.
        if by_controller and not errors:
            async with self.pool.acquire() as conn, conn.transaction():
                updated = await repository.set_detectors(conn, by_controller)
                await self._registry_changed(conn, updated)
            await self._after_registry_commit()
            accepted = sum(len(v) for v in by_controller.values())
        errors.sort(key=lambda e: e.index)
        return batch_result(SERVICE, "detector", accepted, errors)

    def intersections(self, district: str | None = None) -> list[Intersection]:
        """The registered intersections (of one district), by id."""
        rows = list(self.registry.values())
        if district:
            rows = [r for r in rows if r["district"] == district]
        return sorted(rows, key=lambda r: r["intersection_id"])

    async def intersection(self, intersection_id: str) -> Intersection:
        row = await repository.get_intersection(self.pool, intersection_id)
        if row is None:
            raise ApiError(404, "not_found", "no such intersection")
        return row

    # ------------------------------------------------------------------------------------------- ingest
    async def ingest(
        self,
        principal: Principal,
        raw_items: list[dict[str, Any]],
        *,
        backfill: bool = False,
        final: bool = False,
    ) -> tuple[int, dict]:
        """Screen a batch of hi-res events and publish the accepted ones per controller (acks awaited)."""
        settings = self.settings
        if len(raw_items) > settings.max_batch_events:
            raise ApiError(413, "batch_too_large", f"at most {settings.max_batch_events} events per request")
        errors: list[ItemError]
        try:
            items = [
                (i, d["controller_id"], to_ms(d["timestamp"]), d["event_code"], d["parameter"])
                for i, d in enumerate(HIRES_ITEMS.validate_python(raw_items))
            ]
            errors = []
        except ValidationError:
            valid, errors = validate_items(HiResEventIn, raw_items, id_field="controller_id")
            items = [(i, m.controller_id, to_ms(m.timestamp), m.event_code, m.parameter) for i, m in valid]
        registry = self.registry.entries  # the plain dict: a lookup per event
        if any(item[1] not in registry for item in items):
            # another replica may have registered it
            if await self.registry.refresh_if_older(UNKNOWN_CONTROLLER_RELOAD_SECONDS):
                registry = self.registry.entries
        authorize(principal, raw_items, registry)  # on the registry the batch is screened against
        if final and not backfill:
            raise ApiError(422, "invalid_parameter", "final=true ends a backfill: send it with backfill=true")
        screen = self.backfill_screen if backfill else self.screen
        screened = screen.screen(items, registry, datetime.now(UTC))
        encoded = []
        for cid, events in screened.accepted.items():
            encoded.extend(
                hires_chunks(
                    self.source, registry[cid], events, settings.chunk_events, backfill=backfill, final=final
                )
            )
        try:
            await self._ctx.publisher.publish(encoded)
        except BaseException:
            screen.rollback(screened)
            raise
        if final:
            screen.forget(screened.accepted)  # the next backfill of these controllers may be older
        errors = sorted([*errors, *screened.errors], key=lambda e: e.index)
        accepted = sum(len(v) for v in screened.accepted.values())
        return batch_result(SERVICE, "hires_event", accepted, errors, screened.duplicates)

    # ----------------------------------------------------------------------------------------- measures
    async def store_measures(self, events: list[ReceivedEvent]) -> None:
        """Store computed measures (the measures topic's consumer; a re-delivered bin replaces the stored one)."""
        rows = measure_rows(events)
        if rows:
            await repository.upsert_measures(self.pool, rows)
        rows = intersection_measure_rows(events)
        if rows:
            await repository.upsert_intersection_measures(self.pool, rows)

    async def measures(
        self, intersection_id: str, start: datetime, end: datetime
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Phase measures and intersection measures of bins with ``start <= bin_start < end`` (404: no such
        intersection)."""
        if not any(r["intersection_id"] == intersection_id for r in self.registry.values()):
            if await repository.get_intersection(self.pool, intersection_id) is None:
                raise ApiError(404, "not_found", "no such intersection")
        rows = await repository.fetch_measures(self.pool, intersection_id, start, end, limit=93 * 96 * 16)
        ix_rows = await repository.fetch_intersection_measures(
            self.pool, intersection_id, start, end, limit=93 * 96
        )
        return rows, ix_rows
