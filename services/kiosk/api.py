"""Kiosk HTTP API: the fleet registry (``kiosk:admin``) and telemetry/session ingest (``kiosk:ingest``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from services.kiosk import domain, publishing
from services.kiosk.service import STATUS_DAYS, KioskIn, KioskService
from shared.auth import ApiError, Principal, require_scope
from shared.contracts.kiosk import HeartbeatReceived, PeripheralStatusChanged, SessionEnded
from shared.http import RequestModel, idempotent
from shared.ingest import BatchResult, SaneAwareDatetime

MAX_ITEMS = 5000  # largest ingest batch (the request schema says so; not a setting: OpenAPI shows it)


class ErrorDetail(BaseModel):
    """The platform's error body (shared.http.error_body)."""

    code: str = Field(
        description="machine-readable: unauthenticated, forbidden, not_found, rate_limited, ..."
    )
    message: str
    details: list[dict[str, Any]] = Field(default_factory=list, description="which item, which field, why")


class ErrorBody(BaseModel):
    error: ErrorDetail


def _error_doc(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


# Every error the platform or these routes may answer, documented once for the whole router.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error_doc("malformed JSON or a bad Idempotency-Key"),
    401: _error_doc("no API key, or an unknown or revoked one"),
    403: _error_doc("the principal lacks the scope, or may not report for a kiosk of the batch"),
    404: _error_doc("no such kiosk"),
    409: _error_doc("a request with this Idempotency-Key is still running"),
    413: _error_doc("the body is over the size limit"),
    422: _error_doc("the request does not match the schema, or the registry entry breaks a rule"),
    429: _error_doc("over the per-principal rate limit (see Retry-After)"),
    503: _error_doc(
        "broker, database or capacity unavailable; nothing was accepted, retry (see Retry-After)"
    ),
}
router = APIRouter(prefix="/v1", responses=ERRORS)


def kiosk_service(request: Request) -> KioskService:
    """The running service (set by the app's lifespan)."""
    return request.app.state.kiosk_service


Kiosks = Annotated[KioskService, Depends(kiosk_service)]


# Registry -----------------------------------------------------------------------------------------------------
class KioskImport(RequestModel):
    items: list[dict[str, Any]] = Field(
        min_length=1, max_length=MAX_ITEMS, description="KioskImportItem objects"
    )


@router.put("/kiosks/{kiosk_id}", tags=["registry"], summary="Register or update a kiosk")
async def put_kiosk(
    body: KioskIn,
    service: Kiosks,
    kiosk_id: str = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"),
    principal: Principal = Depends(require_scope("kiosk:admin")),
) -> dict:
    """Upsert one registry entry: stored in PostgreSQL, then published on ``ioc.kiosk.registry``."""
    return await service.put_kiosk(kiosk_id, body, principal)


@router.post(
    "/kiosks/import",
    tags=["registry"],
    summary="Bulk import of registry entries",
    responses={200: {"model": BatchResult}, 422: {"model": BatchResult | ErrorBody}},
)
async def import_kiosks(
    request: Request,
    body: KioskImport,
    service: Kiosks,
    principal: Principal = Depends(require_scope("kiosk:admin")),
):
    """Upsert many kiosks at once; invalid items are reported one by one and the valid ones stored."""
    return await idempotent(
        request, principal, "kiosk:admin:import", lambda: service.import_kiosks(body.items, principal)
    )


@router.get("/kiosks", tags=["registry"], summary="List registered kiosks")
async def list_kiosks(
    service: Kiosks,
    district: str | None = Query(None, max_length=32),
    limit: int = Query(1000, ge=1, le=5000),
    offset: int = Query(0, ge=0),
    principal: Principal = Depends(require_scope("kiosk:admin")),
) -> dict:
    return {"items": await service.kiosks(district=district, limit=limit, offset=offset)}


@router.get("/kiosks/{kiosk_id}", tags=["registry"], summary="One kiosk's registry entry")
async def get_kiosk(
    kiosk_id: str, service: Kiosks, principal: Principal = Depends(require_scope("kiosk:admin"))
) -> dict:
    return await service.kiosk(kiosk_id)


# Ingest -------------------------------------------------------------------------------------------------------
class IngestBatch(RequestModel):
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS)


class HeartbeatBatch(IngestBatch):
    """``items``: HeartbeatReceived objects (kiosk_id, at, app_version, uptime_seconds, network)."""


class PeripheralBatch(IngestBatch):
    """``items``: PeripheralStatusChanged objects (kiosk_id, peripheral, state, paper, at, code)."""


class SessionBatch(IngestBatch):
    """``items``: SessionEnded objects (session_id, kiosk_id, journey, started_at, ended_at, outcome, ...)."""


# 422: every item rejected (BatchResult), or a request that does not match the schema at all (ErrorBody).
_BATCH_DOC: dict[int | str, dict[str, Any]] = {
    200: {"model": BatchResult},
    422: {"model": BatchResult | ErrorBody},
}


@router.post("/heartbeats", tags=["ingest"], summary="Kiosk heartbeats", responses=_BATCH_DOC)
async def post_heartbeats(
    request: Request,
    body: HeartbeatBatch,
    service: Kiosks,
    principal: Principal = Depends(require_scope("kiosk:ingest")),
):
    """Heartbeats (every 30-60 s per kiosk). Published on ``ioc.kiosk.heartbeats`` and ``ioc.kiosk.lastseen``."""
    return await idempotent(
        request,
        principal,
        "kiosk:ingest:heartbeat",
        lambda: service.ingest(
            principal,
            body.items,
            "heartbeat",
            HeartbeatReceived,
            domain.check_heartbeats,
            publishing.heartbeat_events,
        ),
    )


@router.post("/peripherals", tags=["ingest"], summary="Peripheral status changes", responses=_BATCH_DOC)
async def post_peripherals(
    request: Request,
    body: PeripheralBatch,
    service: Kiosks,
    principal: Principal = Depends(require_scope("kiosk:ingest")),
):
    """Device state changes of fitted peripherals (and printer paper). Published on ``ioc.kiosk.peripherals``."""
    return await idempotent(
        request,
        principal,
        "kiosk:ingest:peripheral",
        lambda: service.ingest(
            principal,
            body.items,
            "peripheral",
            PeripheralStatusChanged,
            domain.check_peripherals,
            publishing.peripheral_events,
        ),
    )


@router.post("/sessions", tags=["ingest"], summary="Finished kiosk sessions", responses=_BATCH_DOC)
async def post_sessions(
    request: Request,
    body: SessionBatch,
    service: Kiosks,
    principal: Principal = Depends(require_scope("kiosk:ingest")),
):
    """Sessions (journey, start, end, outcome, optional dossier code and rating; never personal data)."""
    return await idempotent(
        request,
        principal,
        "kiosk:ingest:session",
        lambda: service.ingest(
            principal, body.items, "session", SessionEnded, domain.check_sessions, publishing.session_events
        ),
    )


# Status -------------------------------------------------------------------------------------------------------
MAX_STATUS_PERIOD = timedelta(days=STATUS_DAYS)


@router.get(
    "/kiosks/{kiosk_id}/status",
    tags=["status"],
    summary="One kiosk's status: registry facts, peripherals, sessions, availability over a period",
)
async def kiosk_status(
    kiosk_id: str,
    service: Kiosks,
    start: SaneAwareDatetime | None = Query(
        None, alias="from", description="default: the start of today (Hanoi day)"
    ),
    end: SaneAwareDatetime | None = Query(None, alias="to", description="default: now"),
    principal: Principal = Depends(require_scope(("kiosk:read", "kiosk:admin"))),
) -> dict:
    """Availability as the kiosk KPIs define it (scheduled time only; docs/kiosk-status.md), over
    ``[from, min(to, now))``, at most 8 days back (what the service keeps)."""
    now = datetime.now(UTC)
    end = end or now
    start = start or domain.from_epoch(domain.window_start(now.timestamp(), domain.DAY))
    if start >= end:
        raise ApiError(422, "invalid_period", "'from' must be before 'to'", [{"field": "from"}])
    if now - start > MAX_STATUS_PERIOD:
        raise ApiError(
            422,
            "invalid_period",
            f"the service keeps {STATUS_DAYS} days of status data",
            [{"field": "from", "reason": f"more than {STATUS_DAYS} days ago"}],
        )
    return await service.kiosk_status(kiosk_id, start, end, now)
