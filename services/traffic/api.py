"""HTTP API of the traffic service: intersection registry, hi-res event ingest, measures export."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Required

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from shared.areas import hanoi
from shared.auth import ApiError, Principal, refuse_unowned, require_scope
from shared.contracts.base import AreaCode, DisplayText, EntityId, StrictFloat, StrictInt
from shared.http import ORJSONResponse, RequestModel, ServiceContext, idempotent
from shared.ingest import (
    BatchResult,
    ItemError,
    SaneAwareDatetime,
    batch_result,
    named_entities,
    validate_items,
)

from . import repository
from .domain import IngestScreen, may_report, parse_detector_rows, to_ms
from .publishing import hires_chunks, intersection_configured
from .settings import TrafficSettings

router = APIRouter(prefix="/v1", tags=["traffic"])
MAX_BATCH = 50_000
MAX_REGISTRY_BATCH = 5000


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


class HiResBatch(RequestModel):
    items: list[dict[str, Any]] = Field(max_length=MAX_BATCH, description="HiResEventIn items")


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


class IntersectionBatch(RequestModel):
    items: list[dict[str, Any]] = Field(max_length=MAX_REGISTRY_BATCH, description="IntersectionIn items")


def _ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


# --- registry cache -------------------------------------------------------------------------------------------
async def refresh_registry(ctx: ServiceContext) -> None:
    """Reload the in-memory registry (controller id → intersection) from PostgreSQL."""
    assert ctx.pool is not None
    rows = await repository.load_intersections(ctx.pool)
    ctx.extras["registry"] = {r["controller_id"]: r for r in rows}
    ctx.extras["registry_loaded"] = time.monotonic()


async def _publish_registry_rows(ctx: ServiceContext, rows: list[dict[str, Any]]) -> None:
    await ctx.publisher.publish([intersection_configured(ctx.source, r) for r in rows])


async def _register(ctx: ServiceContext, raw_items: list[dict[str, Any]]) -> tuple[int, dict]:
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
            errors.append(ItemError(i, m.intersection_id, "detectors", "a detector channel is listed twice"))
        else:
            seen_ids.add(m.intersection_id)
            seen_cids.add(m.controller_id)
            ok.append((i, m))
    assert ctx.pool is not None
    accepted = 0
    if ok:
        async with ctx.pool.acquire() as conn, conn.transaction():
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
                # Published before the commit: a broker failure rolls the registry change back (503).
                await _publish_registry_rows(ctx, rows)
                accepted = len(rows)
        await refresh_registry(ctx)
    errors.sort(key=lambda e: e.index)
    return batch_result("traffic", "intersection", accepted, errors)


def _parse_csv(body: bytes) -> list[dict[str, str]]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_csv", "the CSV body is not UTF-8") from None
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ApiError(400, "invalid_csv", "the CSV body has a header but no rows (or is empty)")
    return rows


# --- registry endpoints ---------------------------------------------------------------------------------------
@router.post("/intersections", response_model=BatchResult, summary="Register or update intersections")
async def register_intersections(
    body: IntersectionBatch, request: Request, principal: Principal = Depends(require_scope("traffic:admin"))
):
    ctx = _ctx(request)
    return await idempotent(request, principal, "traffic:admin", lambda: _register(ctx, body.items))


@router.post(
    "/intersections/import",
    response_model=BatchResult,
    summary="Bulk import intersections from CSV",
    description="Columns: intersection_id, name, district, lat, lon, controller_id, phases "
    "(phase numbers separated by ';' or spaces), optional gateway (principal id of the "
    "gateway that reports for the controller; an empty cell: none). Detectors come from "
    "/v1/detectors/import; without a gateway column, a controller keeps its gateway.",
)
async def import_intersections(
    request: Request, principal: Principal = Depends(require_scope("traffic:admin"))
):
    ctx = _ctx(request)
    rows = _parse_csv(await request.body())
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
        existing = ctx.extras["registry"].get(item.get("controller_id"))
        item["detectors"] = existing["detectors"] if existing else []  # keep detectors already configured
        if "gateway" in item:
            item["gateway"] = item["gateway"] or None  # an empty cell: no gateway
        else:
            item["gateway"] = existing.get("gateway") if existing else None  # no column: keep the gateway
        items.append(item)
    return await idempotent(request, principal, "traffic:admin", lambda: _register(ctx, items))


@router.post(
    "/detectors/import",
    response_model=BatchResult,
    summary="Import detector configuration (CSV)",
    description="ATSPM layouts: DeviceId (or SignalID), Phase, Parameter (or DetChannel: the detector "
    "channel), Function (or DetectionTypes: atspm's Advance, Presence, Yellow_Red; UDOT's Advanced Count, "
    "Advanced Speed, Lane-by-lane Count, Lane-by-lane with Speed Restriction, Stop Bar Presence, Advanced "
    "Presence ...; several types separated by commas), optional Distance (m) or DistanceFromStopBar (ft), "
    "Speed (km/h) or MPH. Replaces the detectors of every controller present in the file. All or nothing: "
    "when any row is refused, nothing is applied and the answer is 422 with every refused row (index, CSV "
    "line, field, reason).",
)
async def import_detectors(request: Request, principal: Principal = Depends(require_scope("traffic:admin"))):
    ctx = _ctx(request)
    rows = _parse_csv(await request.body())

    async def compute() -> tuple[int, dict]:
        parsed, errors = parse_detector_rows(rows)
        registry = ctx.extras["registry"]
        by_controller: dict[str, list[dict]] = {}
        channels: dict[str, set[int]] = {}
        for i, cid, det in parsed:
            if cid not in registry:
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
                        f"line {i + 2}: channel 1-256, phase 1-40, distance 0-1000 m and speed up to "
                        "130 km/h",
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
            assert ctx.pool is not None
            async with ctx.pool.acquire() as conn, conn.transaction():
                updated = await repository.set_detectors(conn, by_controller)
                await _publish_registry_rows(ctx, updated)
            await refresh_registry(ctx)
            accepted = sum(len(v) for v in by_controller.values())
        errors.sort(key=lambda e: e.index)
        return batch_result("traffic", "detector", accepted, errors)

    return await idempotent(request, principal, "traffic:admin", compute)


@router.get("/intersections", summary="List intersections")
async def list_intersections(
    request: Request, district: str | None = None, _: Principal = Depends(require_scope("traffic:read"))
):
    rows = list(_ctx(request).extras["registry"].values())
    if district:
        rows = [r for r in rows if r["district"] == district]
    return {"items": sorted(rows, key=lambda r: r["intersection_id"])}


@router.get("/intersections/{intersection_id}", summary="One intersection")
async def get_intersection(
    intersection_id: str, request: Request, _: Principal = Depends(require_scope("traffic:read"))
):
    ctx = _ctx(request)
    assert ctx.pool is not None
    row = await repository.get_intersection(ctx.pool, intersection_id)
    if row is None:
        raise ApiError(404, "not_found", "no such intersection")
    return row


# --- ingest ---------------------------------------------------------------------------------------------------
def authorize(principal: Principal, raw_items: list[Any], registry: dict[str, dict]) -> None:
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


async def _ingest(
    ctx: ServiceContext,
    principal: Principal,
    raw_items: list[dict[str, Any]],
    backfill: bool = False,
    final: bool = False,
) -> tuple[int, dict]:
    settings: TrafficSettings = ctx.settings  # type: ignore[assignment]
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
    registry: dict[str, dict] = ctx.extras["registry"]
    if time.monotonic() - ctx.extras.get("registry_loaded", 0) > 1.0 and any(
        item[1] not in registry for item in items
    ):
        await refresh_registry(ctx)  # another replica may have registered it
        registry = ctx.extras["registry"]
    authorize(principal, raw_items, registry)  # on the registry the batch is screened against
    if final and not backfill:
        raise ApiError(422, "invalid_parameter", "final=true ends a backfill: send it with backfill=true")
    # History has its own screen: its age is not judged against now and its order not against live events.
    screen: IngestScreen = ctx.extras["backfill_screen" if backfill else "screen"]
    screened = screen.screen(items, registry, datetime.now(UTC))
    encoded = []
    for cid, events in screened.accepted.items():
        encoded.extend(
            hires_chunks(
                ctx.source, registry[cid], events, settings.chunk_events, backfill=backfill, final=final
            )
        )
    try:
        await ctx.publisher.publish(encoded)
    except BaseException:
        screen.rollback(screened)
        raise
    if final:
        screen.forget(screened.accepted)  # the next backfill of these controllers may be older
    errors = sorted([*errors, *screened.errors], key=lambda e: e.index)
    accepted = sum(len(v) for v in screened.accepted.values())
    return batch_result("traffic", "hires_event", accepted, errors, screened.duplicates)


@router.post(
    "/events",
    response_model=BatchResult,
    summary="Ingest hi-res controller events",
    description="A batch of (timestamp, controller_id, event_code, parameter). Answers 200 with the "
    "accepted count and every rejected item (index, field, reason), 422 when nothing was "
    "accepted; accepted events are on the broker before the answer. Without traffic:admin, "
    "a principal reports only for the registered controllers whose gateway it is: any other "
    "registered controller in the batch is a 403 naming the items, and nothing is accepted. "
    "backfill=true sends history (a replayed log): any age since 2000 is accepted, in order per "
    "controller within the backfill, and measured apart from the live stream; final=true on the "
    "last request of a backfill completes its measures at once.",
)
async def ingest_events(
    body: HiResBatch,
    request: Request,
    backfill: bool = False,
    final: bool = False,
    principal: Principal = Depends(require_scope("traffic:ingest")),
):
    ctx = _ctx(request)
    return await idempotent(
        request,
        principal,
        "traffic:ingest",
        lambda: _ingest(ctx, principal, body.items, backfill=backfill, final=final),
    )


# --- measures export ------------------------------------------------------------------------------------------
MEASURE_COLUMNS = (
    "intersection_id",
    "phase",
    "bin_start",
    "bin_seconds",
    "volume",
    "gap_outs",
    "max_outs",
    "force_offs",
    "cycles",
    "green_seconds",
    "cycle_seconds",
    "arrivals",
    "arrivals_on_green",
    "arrivals_on_yellow",
    "arrivals_on_red",
    "total_delay_seconds",
    "pct_arrivals_on_green",
    "pct_green",
    "platoon_ratio",
    "approach_delay_seconds",
    "split_failure_cycles",
    "split_failures",
    "ped_samples",
    "ped_delay_seconds_total",
    "ped_delay_seconds_avg",
    "detector_faults",
    "events",
    "data_completeness",
    "actuations",
    "actuations_on_green",
    "pct_actuations_on_green",
    "green_occupancy_avg",
    "red_occupancy_avg",
    "split_failure_green_seconds_avg",
    "yellow_actuations",
    "red_actuations",
    "splits",
    "split_seconds_avg",
    "split_seconds_max",
    "ped_actuations",
    "unique_ped_actuations",
    "ped_services",
    "phase_wait_samples",
    "phase_wait_seconds_avg",
    "phase_wait_seconds_max",
    "detector_volumes",
)
DETECTOR_COLUMNS = (
    "intersection_id",
    "bin_start",
    "bin_seconds",
    "channel",
    "phase",
    "functions",
    "actuations",
    "repeated_events",
    "longest_on_seconds",
    "usual_actuations",
    "status",
)
INTERSECTION_COLUMNS = (
    "intersection_id",
    "bin_start",
    "bin_seconds",
    "events",
    "unused_events",
    "data_completeness",
    "detectors_unhealthy",
    "pattern_changes",
    "pattern",
    "cycle_length_seconds",
    "preempts",
    "transit_priority",
)

TIMELINE_COLUMNS = (
    "intersection_id",
    "bin_start",
    "bin_seconds",
    "kind",
    "phase",
    "preempt",
    "start",
    "end",
    "cycle_start",
)


def _cell(col: str, v: Any) -> Any:
    if v is None:
        return ""
    if col == "detector_volumes":
        return ";".join(f"{k}:{n}" for k, n in sorted(v.items(), key=lambda kv: int(kv[0])))
    if col == "functions":
        return ";".join(v)
    if col == "preempts":
        return ";".join(f"{p['number']}:{p['calls']}/{p['entries']}/{p['seconds']:g}" for p in v)
    if col == "transit_priority":
        return ";".join(
            f"{p['number']}:{p['check_ins']}/{p['early_greens']}/{p['extended_greens']}/{p['check_outs']}"
            for p in v
        )
    return v


def measures_csv(rows: list[dict[str, Any]], columns: tuple[str, ...] = MEASURE_COLUMNS) -> str:
    """CSV of measures; detector volumes as ``channel:count`` pairs separated by ``;``, preemption as
    ``number:calls/entries/seconds`` and transit priority as ``number:check-ins/early/extended/check-outs``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for m in rows:
        w.writerow([_cell(col, m.get(col)) for col in columns])
    return buf.getvalue()


def detector_rows(intersection_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per intersection bin and detector channel."""
    return [
        {
            "intersection_id": m["intersection_id"],
            "bin_start": m["bin_start"],
            "bin_seconds": m["bin_seconds"],
            **d,
        }
        for m in intersection_rows
        for d in m["detectors"]
    ]


def timeline_rows(intersection_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per timeline interval (bins stored before the timeline existed have none)."""
    return [
        {
            "intersection_id": m["intersection_id"],
            "bin_start": m["bin_start"],
            "bin_seconds": m["bin_seconds"],
            **iv,
        }
        for m in intersection_rows
        for iv in m.get("timeline") or ()
    ]


@router.get(
    "/intersections/{intersection_id}/measures",
    summary="15-minute signal performance measures",
    description="Measures per bin with from <= bin_start < to (default: the last 24 hours), as JSON (phase "
    "measures, and the intersection's detectors, preemption, transit priority and coordination) or CSV "
    "(kind=phases: one row per phase and bin; kind=detectors: per detector channel and bin; "
    "kind=intersection: per bin; kind=timeline: per signal, pedestrian and preemption interval, in the bin "
    "where it ended). Formulas and conventions: docs/traffic-measures.md.",
)
async def export_measures(
    intersection_id: str,
    request: Request,
    from_: Annotated[SaneAwareDatetime | None, Query(alias="from")] = None,
    to: SaneAwareDatetime | None = None,
    format: Literal["json", "csv"] = "json",
    kind: Literal["phases", "detectors", "intersection", "timeline"] = "phases",
    _: Principal = Depends(require_scope("traffic:read")),
):
    ctx = _ctx(request)
    assert ctx.pool is not None
    end = to or datetime.now(UTC)
    start = from_ or end - timedelta(days=1)
    if start >= end:
        raise ApiError(422, "invalid_period", "'from' must be before 'to'")
    if end - start > timedelta(days=93):
        raise ApiError(422, "invalid_period", "at most 93 days per export")
    if kind == "timeline" and end - start > timedelta(days=1):
        # a busy intersection's timeline holds thousands of intervals per bin
        raise ApiError(422, "invalid_period", "at most 1 day per timeline export")
    if not any(r["intersection_id"] == intersection_id for r in ctx.extras["registry"].values()):
        if await repository.get_intersection(ctx.pool, intersection_id) is None:
            raise ApiError(404, "not_found", "no such intersection")
    rows = await repository.fetch_measures(ctx.pool, intersection_id, start, end, limit=93 * 96 * 16)
    ix_rows = await repository.fetch_intersection_measures(
        ctx.pool, intersection_id, start, end, limit=93 * 96
    )
    if format == "csv":
        if kind == "detectors":
            text = measures_csv(detector_rows(ix_rows), DETECTOR_COLUMNS)
        elif kind == "intersection":
            text = measures_csv(ix_rows, INTERSECTION_COLUMNS)
        elif kind == "timeline":
            text = measures_csv(timeline_rows(ix_rows), TIMELINE_COLUMNS)
        else:
            text = measures_csv(rows)
        return Response(
            text,
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="traffic-{kind}.csv"'},
        )
    if kind == "timeline":
        return ORJSONResponse(
            {
                "intersection_id": intersection_id,
                "from": start.isoformat(),
                "to": end.isoformat(),
                "timeline": timeline_rows(ix_rows),
            }
        )
    # the timeline is exported on its own (kind=timeline), a day at most
    ix_rows = [{k: v for k, v in m.items() if k != "timeline"} for m in ix_rows]
    return ORJSONResponse(
        {
            "intersection_id": intersection_id,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "measures": rows,
            "intersection_measures": ix_rows,
        }
    )
