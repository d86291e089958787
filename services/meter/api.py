"""HTTP adapter of the meter service: registry (``meter:admin``), readings and events (``meter:ingest``)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field, TypeAdapter

from services.meter.batch import inline_schema
from services.meter.domain import DailyReliability, ReadingsBody, reliability_with_and_without_meds
from services.meter.service import MeterService
from shared.auth import ApiError, Principal, require_scope
from shared.http import RequestModel, idempotent
from shared.ingest import BatchResult

router = APIRouter(prefix="/v1", tags=["meter"])
READINGS_SCHEMA = inline_schema(TypeAdapter(ReadingsBody).json_schema())

# The request schemas' ceilings; IOC_METER_MAX_BATCH_* may lower them (413 batch_too_large above the setting).
MAX_EVENTS = 10_000
MAX_METERS = 50_000


class MetersBatch(RequestModel):
    """Registry entries to create or update (fields: meter_id, customers, district, commune, feeder,
    transformer, installed_on, interval_seconds, gateway)."""

    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_METERS)


class EventsBatch(RequestModel):
    """Meter events: meter_id, at, code (DLMS standard code, optional), raw_code (vendor code)."""

    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_EVENTS)


class DecommissionIn(RequestModel):
    """When the meter was removed from service (a Hanoi date): it serves no customer from that day on."""

    on: date


class DayFigures(RequestModel):
    """One day of an area's additive reliability figures (the city view's numerators and denominators)."""

    day: date
    customers_interrupted: float = Field(ge=0, le=1e12, description="Σ N_i, sustained interruptions")
    customer_minutes: float = Field(ge=0, le=1e12, description="Σ r_i N_i, minutes")
    momentary: float = Field(0.0, ge=0, le=1e12, description="Σ IM_i N_mi")
    customers_served: int = Field(ge=0, le=1_000_000_000, description="N_T")


class ReliabilityReportIn(RequestModel):
    """The days to report, and the daily SAIDI history (minutes, the five years before) T_MED comes from."""

    days: list[DayFigures] = Field(min_length=1, max_length=3660)
    history_saidi: list[Annotated[float, Field(ge=0, le=1e6)]] = Field(
        max_length=5 * 366 + 1, description="daily SAIDI, minutes"
    )


class MeterOut(RequestModel):
    meter_id: str
    customers: int
    district: str
    commune: str
    feeder: str
    transformer: str | None
    installed_on: str
    interval_seconds: int
    gateway: str | None = None
    decommissioned_on: str | None = None


def _require_json(request: Request) -> None:
    ctype = request.headers.get("content-type")
    if ctype is not None and "json" not in ctype:
        raise ApiError(415, "unsupported_media_type", "send the batch as application/json")


def meter_service(request: Request) -> MeterService:
    """The running service (set by the app's lifespan)."""
    return request.app.state.meter_service


Meters = Annotated[MeterService, Depends(meter_service)]


def _reporter(principal: Principal) -> str | None:
    """Whose meters a reporting principal may report for: its own (the registry's ``gateway``), or any meter
    with ``meter:admin`` (None)."""
    return None if principal.has_scope("meter:admin") else principal.id


@router.post("/meters", response_model=BatchResult, summary="Create or update registry entries")
async def register_meters(
    body: MetersBatch,
    request: Request,
    service: Meters,
    principal: Principal = Depends(require_scope("meter:admin")),
):
    return await idempotent(request, principal, "meter:admin", lambda: service.register_meters(body.items))


@router.post(
    "/meters/import",
    response_model=BatchResult,
    summary="Bulk registry import (text/csv)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {
                        "type": "string",
                        "description": "header: meter_id,customers,district,commune,feeder,transformer,installed_on,"
                        "interval_seconds,gateway (gateway optional)",
                    }
                }
            },
        }
    },
)
async def import_meters(
    request: Request, service: Meters, principal: Principal = Depends(require_scope("meter:admin"))
):
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("text/csv"):
        raise ApiError(415, "unsupported_media_type", "send the registry as text/csv")
    raw = await request.body()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_encoding", "the CSV must be UTF-8") from None
    return await idempotent(request, principal, "meter:admin", lambda: service.import_csv(text))


@router.get("/meters/{meter_id}", response_model=MeterOut, summary="One registry entry")
async def get_meter(meter_id: str, service: Meters, _: Principal = Depends(require_scope("meter:read"))):
    m = service.registry.get(meter_id)
    if m is None:
        raise ApiError(404, "not_found", "no such meter")
    return {
        "meter_id": m.meter_id,
        "customers": m.customers,
        "district": m.district,
        "commune": m.commune,
        "feeder": m.feeder,
        "transformer": m.transformer,
        "installed_on": m.installed_on.isoformat(),
        "interval_seconds": m.interval_seconds,
        "gateway": m.gateway,
        "decommissioned_on": m.decommissioned_on.isoformat() if m.decommissioned_on else None,
    }


@router.post(
    "/meters/{meter_id}/decommission",
    response_model=BatchResult,
    summary="Remove a meter from service from a date (it leaves customers served from that day)",
)
async def decommission_meter(
    meter_id: str,
    body: DecommissionIn,
    request: Request,
    service: Meters,
    principal: Principal = Depends(require_scope("meter:admin")),
):
    return await idempotent(
        request,
        principal,
        "meter:admin",
        lambda: service.decommission(meter_id, body.on.isoformat()),
    )


@router.post(
    "/reliability/report",
    summary="IEEE 1366 indices over days, with and without major event days (2.5 beta method)",
)
async def reliability_report(body: ReliabilityReportIn, _: Principal = Depends(require_scope("meter:read"))):
    return reliability_with_and_without_meds(
        [
            DailyReliability(
                d.day, d.customers_interrupted, d.customer_minutes, d.momentary, d.customers_served
            )
            for d in body.days
        ],
        body.history_saidi,
    )


@router.post(
    "/readings",
    response_model=BatchResult,
    summary="Ingest a batch of interval readings (up to 10,000)",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": READINGS_SCHEMA}}}
    },
    responses={
        400: {"description": "the body is not JSON"},
        403: {
            "description": "a meter of the batch reports through another gateway; nothing "
            "accepted (details name the items)"
        },
        422: {"description": "not a batch, or every reading was rejected (details per reading)"},
        503: {"description": "not durable; nothing accepted, retry"},
    },
)
async def ingest_readings(
    request: Request, service: Meters, principal: Principal = Depends(require_scope("meter:ingest"))
):
    # The body is validated by the service from the raw bytes in one pass (ReadingsBody), not by FastAPI.
    _require_json(request)
    raw = await request.body()
    return await idempotent(
        request,
        principal,
        "meter:ingest",
        lambda: service.ingest_readings(raw, _reporter(principal)),
    )


@router.post(
    "/events",
    response_model=BatchResult,
    summary="Ingest a batch of meter events",
    responses={
        403: {
            "description": "a meter of the batch reports through another gateway; nothing "
            "accepted (details name the items)"
        },
        422: {"description": "every event was rejected (details per event)"},
        503: {"description": "not durable; nothing accepted, retry"},
    },
)
async def ingest_events(
    body: EventsBatch,
    request: Request,
    service: Meters,
    principal: Principal = Depends(require_scope("meter:ingest")),
):
    return await idempotent(
        request,
        principal,
        "meter:ingest",
        lambda: service.ingest_events(body.items, _reporter(principal)),
    )
