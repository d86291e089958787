"""HTTP API of the traffic service: intersection registry, hi-res event ingest, measures export.

A thin adapter: parse the request, call :class:`services.traffic.service.TrafficService`, format the answer.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import Field

from shared.auth import ApiError, Principal, require_scope
from shared.http import ORJSONResponse, RequestModel, idempotent
from shared.ingest import BatchResult, SaneAwareDatetime

from .measures import pcd_export
from .service import TrafficService

router = APIRouter(prefix="/v1", tags=["traffic"])
MAX_BATCH = 50_000
MAX_REGISTRY_BATCH = 5000


def traffic_service(request: Request) -> TrafficService:
    """The running service (set by the app's lifespan)."""
    return request.app.state.traffic_service


Traffic = Annotated[TrafficService, Depends(traffic_service)]


class HiResBatch(RequestModel):
    items: list[dict[str, Any]] = Field(max_length=MAX_BATCH, description="HiResEventIn items")


class IntersectionBatch(RequestModel):
    items: list[dict[str, Any]] = Field(max_length=MAX_REGISTRY_BATCH, description="IntersectionIn items")


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
    body: IntersectionBatch,
    request: Request,
    service: Traffic,
    principal: Principal = Depends(require_scope("traffic:admin")),
):
    return await idempotent(request, principal, "traffic:admin", lambda: service.register(body.items))


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
    request: Request, service: Traffic, principal: Principal = Depends(require_scope("traffic:admin"))
):
    rows = _parse_csv(await request.body())
    return await idempotent(request, principal, "traffic:admin", lambda: service.import_intersections(rows))


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
async def import_detectors(
    request: Request, service: Traffic, principal: Principal = Depends(require_scope("traffic:admin"))
):
    rows = _parse_csv(await request.body())
    return await idempotent(request, principal, "traffic:admin", lambda: service.import_detectors(rows))


@router.get("/intersections", summary="List intersections")
async def list_intersections(
    service: Traffic, district: str | None = None, _: Principal = Depends(require_scope("traffic:read"))
):
    return {"items": service.intersections(district)}


@router.get("/intersections/{intersection_id}", summary="One intersection")
async def get_intersection(
    intersection_id: str, service: Traffic, _: Principal = Depends(require_scope("traffic:read"))
):
    return await service.intersection(intersection_id)


# --- ingest ---------------------------------------------------------------------------------------------------
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
    service: Traffic,
    backfill: bool = False,
    final: bool = False,
    principal: Principal = Depends(require_scope("traffic:ingest")),
):
    return await idempotent(
        request,
        principal,
        "traffic:ingest",
        lambda: service.ingest(principal, body.items, backfill=backfill, final=final),
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
    "where it ended; kind=pcd, JSON only: the Purdue coordination diagram per cycle, each arrival's offset "
    "from the cycle's start, and every phase termination with the cycle it ended). Formulas and conventions: docs/traffic-measures.md.",
)
async def export_measures(
    intersection_id: str,
    service: Traffic,
    from_: Annotated[SaneAwareDatetime | None, Query(alias="from")] = None,
    to: SaneAwareDatetime | None = None,
    format: Literal["json", "csv"] = "json",
    kind: Literal["phases", "detectors", "intersection", "timeline", "pcd"] = "phases",
    _: Principal = Depends(require_scope("traffic:read")),
):
    end = to or datetime.now(UTC)
    start = from_ or end - timedelta(days=1)
    if start >= end:
        raise ApiError(422, "invalid_period", "'from' must be before 'to'")
    if end - start > timedelta(days=93):
        raise ApiError(422, "invalid_period", "at most 93 days per export")
    if kind in ("timeline", "pcd") and end - start > timedelta(days=1):
        # a busy intersection's timeline holds thousands of intervals per bin
        raise ApiError(422, "invalid_period", f"at most 1 day per {kind} export")
    rows, ix_rows = await service.measures(intersection_id, start, end)
    if kind == "pcd":
        if format == "csv":
            raise ApiError(422, "invalid_request", "kind=pcd is JSON only", [{"field": "format"}])
        return ORJSONResponse(
            {
                "intersection_id": intersection_id,
                "from": start.isoformat(),
                "to": end.isoformat(),
                **pcd_export(ix_rows),
            }
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
    # the timeline and the coordination diagram are exported on their own (kind=timeline, kind=pcd), a day at most
    ix_rows = [{k: v for k, v in m.items() if k not in ("timeline", "pcd", "terminations")} for m in ix_rows]
    return ORJSONResponse(
        {
            "intersection_id": intersection_id,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "measures": rows,
            "intersection_measures": ix_rows,
        }
    )
