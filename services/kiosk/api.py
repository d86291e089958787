"""Kiosk HTTP API: the fleet registry (``kiosk:admin``) and telemetry/session ingest (``kiosk:ingest``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import AfterValidator, BaseModel, Field

from services.kiosk import domain, publishing, repository
from services.kiosk.domain import KioskInfo
from services.kiosk.settings import KioskSettings
from shared.areas import hanoi
from shared.auth import ApiError, Principal, refuse_unowned, require_scope
from shared.contracts.base import AreaCode, EntityId, StrictBool
from shared.contracts.kiosk import (
    HeartbeatReceived,
    KioskRegistered,
    OpeningPeriod,
    Peripheral,
    PeripheralStatusChanged,
    SessionEnded,
)
from shared.http import RequestModel, ServiceContext, idempotent
from shared.ingest import (
    BatchResult,
    ItemError,
    SaneAwareDatetime,
    batch_result,
    named_entities,
    validate_items,
)
from shared.kafka.producer import BrokerUnavailable

log = logging.getLogger(__name__)
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


# Registry cache -----------------------------------------------------------------------------------------------
class RegistryCache:
    """The registry as ingest needs it, in memory (no per-item DB round trip); reloaded periodically and on write."""

    def __init__(self) -> None:
        self.kiosks: dict[str, KioskInfo] = {}

    async def reload(self, pool) -> None:
        rows = await repository.registry_index(pool)
        self.kiosks = {
            r["kiosk_id"]: KioskInfo(
                r["kiosk_id"], r["district"], frozenset(r["peripherals"]), r["active"], r["gateway_principal"]
            )
            for r in rows
        }


def _ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


async def publish_registrations(ctx: ServiceContext, rows: Sequence) -> bool:
    """Put registry rows on the compacted registry topic; on failure the republisher retries later."""
    try:
        await ctx.publisher.publish(publishing.registration_events(rows, ctx.source))
    except BrokerUnavailable:
        log.warning("registry change stored but not yet published; will retry")
        return False
    assert ctx.pool is not None
    await repository.mark_published(ctx.pool, [(r["kiosk_id"], r["version"]) for r in rows])
    return True


# Registry -----------------------------------------------------------------------------------------------------
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


class KioskImport(RequestModel):
    items: list[dict[str, Any]] = Field(
        min_length=1, max_length=MAX_ITEMS, description="KioskImportItem objects"
    )


def _registration_problems(kiosk_id: str, entry: KioskIn, max_skew_s: float = 300.0) -> list[tuple[str, str]]:
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


def _skew(ctx: ServiceContext) -> float:
    return ctx.settings.max_clock_skew_seconds  # type: ignore[attr-defined]


def _row_of(kiosk_id: str, entry: KioskIn) -> dict:
    d = entry.model_dump(mode="python")
    d["kiosk_id"] = kiosk_id
    d["opening_hours"] = [p.model_dump() for p in entry.opening_hours]
    return d


@router.put("/kiosks/{kiosk_id}", tags=["registry"], summary="Register or update a kiosk")
async def put_kiosk(
    request: Request,
    body: KioskIn,
    kiosk_id: str = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"),
    principal: Principal = Depends(require_scope("kiosk:admin")),
) -> dict:
    """Upsert one registry entry: stored in PostgreSQL, then published on ``ioc.kiosk.registry``."""
    ctx = _ctx(request)
    problems = _registration_problems(kiosk_id, body, _skew(ctx))
    if problems:
        raise ApiError(
            422,
            "invalid_kiosk",
            "the registry entry is not valid",
            [{"item": None, "id": kiosk_id, "field": f, "reason": r} for f, r in problems],
        )
    assert ctx.pool is not None
    rows = await repository.upsert_kiosks(ctx.pool, [_row_of(kiosk_id, body)], principal=principal.id)
    published = await publish_registrations(ctx, rows)
    await ctx.extras["registry"].reload(ctx.pool)
    return {"kiosk": repository.as_dict(rows[0]), "published": published}


@router.post(
    "/kiosks/import",
    tags=["registry"],
    summary="Bulk import of registry entries",
    responses={200: {"model": BatchResult}, 422: {"model": BatchResult | ErrorBody}},
)
async def import_kiosks(
    request: Request, body: KioskImport, principal: Principal = Depends(require_scope("kiosk:admin"))
):
    """Upsert many kiosks at once; invalid items are reported one by one and the valid ones stored."""

    async def compute() -> tuple[int, dict]:
        valid, errors = validate_items(KioskImportItem, body.items, id_field="kiosk_id")
        accepted: list[dict] = []
        seen: set[str] = set()
        dups = 0
        for i, item in valid:
            problems = _registration_problems(item.kiosk_id, item, _skew(_ctx(request)))
            if problems:
                errors.extend(ItemError(i, item.kiosk_id, f, r) for f, r in problems)
            elif item.kiosk_id in seen:
                errors.append(
                    ItemError(i, item.kiosk_id, "kiosk_id", "listed twice in the batch", "duplicate")
                )
            else:
                seen.add(item.kiosk_id)
                accepted.append(_row_of(item.kiosk_id, item))
        ctx = _ctx(request)
        assert ctx.pool is not None
        if accepted:
            rows = await repository.upsert_kiosks(
                ctx.pool, accepted, principal=principal.id, action="kiosk.imported"
            )
            await publish_registrations(ctx, rows)
            await ctx.extras["registry"].reload(ctx.pool)
        return batch_result(
            "kiosk", "registration", len(accepted), sorted(errors, key=lambda e: e.index), dups
        )

    return await idempotent(request, principal, "kiosk:admin:import", compute)


@router.get("/kiosks", tags=["registry"], summary="List registered kiosks")
async def list_kiosks(
    request: Request,
    district: str | None = Query(None, max_length=32),
    limit: int = Query(1000, ge=1, le=5000),
    offset: int = Query(0, ge=0),
    principal: Principal = Depends(require_scope("kiosk:admin")),
) -> dict:
    ctx = _ctx(request)
    assert ctx.pool is not None
    rows = await repository.list_kiosks(ctx.pool, district=district, limit=limit, offset=offset)
    return {"items": [repository.as_dict(r) for r in rows]}


@router.get("/kiosks/{kiosk_id}", tags=["registry"], summary="One kiosk's registry entry")
async def get_kiosk(
    request: Request, kiosk_id: str, principal: Principal = Depends(require_scope("kiosk:admin"))
) -> dict:
    ctx = _ctx(request)
    assert ctx.pool is not None
    row = await repository.get_kiosk(ctx.pool, kiosk_id)
    if row is None:
        raise ApiError(404, "not_found", "no kiosk with this id")
    return repository.as_dict(row)


# Ingest -------------------------------------------------------------------------------------------------------
class IngestBatch(RequestModel):
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS)


class HeartbeatBatch(IngestBatch):
    """``items``: HeartbeatReceived objects (kiosk_id, at, app_version, uptime_seconds, network)."""


class PeripheralBatch(IngestBatch):
    """``items``: PeripheralStatusChanged objects (kiosk_id, peripheral, state, paper, at, code)."""


class SessionBatch(IngestBatch):
    """``items``: SessionEnded objects (session_id, kiosk_id, journey, started_at, ended_at, outcome, ...)."""


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


async def _ingest(
    request: Request,
    principal: Principal,
    items: list,
    kind: str,
    model: type[BaseModel],
    check: Callable,
    to_events: Callable,
) -> Any:
    ctx = _ctx(request)
    settings: KioskSettings = ctx.settings  # type: ignore[assignment]
    registry: RegistryCache = ctx.extras["registry"]

    async def compute() -> tuple[int, dict]:
        authorize(principal, items, registry.kiosks)
        valid, errors = validate_items(model, items, id_field="kiosk_id")
        accepted, more, dups = check(
            valid,
            registry.kiosks,
            datetime.now(UTC),
            max_skew_s=settings.max_clock_skew_seconds,
            max_age_s=settings.max_event_age_seconds,
        )
        if accepted:
            await ctx.publisher.publish(to_events(accepted, ctx.source))  # acks awaited: 2xx means durable
        return batch_result("kiosk", kind, len(accepted), sorted(errors + more, key=lambda e: e.index), dups)

    return await idempotent(request, principal, f"kiosk:ingest:{kind}", compute)


# 422: every item rejected (BatchResult), or a request that does not match the schema at all (ErrorBody).
_BATCH_DOC: dict[int | str, dict[str, Any]] = {
    200: {"model": BatchResult},
    422: {"model": BatchResult | ErrorBody},
}


@router.post("/heartbeats", tags=["ingest"], summary="Kiosk heartbeats", responses=_BATCH_DOC)
async def post_heartbeats(
    request: Request, body: HeartbeatBatch, principal: Principal = Depends(require_scope("kiosk:ingest"))
):
    """Heartbeats (every 30-60 s per kiosk). Published on ``ioc.kiosk.heartbeats`` and ``ioc.kiosk.lastseen``."""
    return await _ingest(
        request,
        principal,
        body.items,
        "heartbeat",
        HeartbeatReceived,
        domain.check_heartbeats,
        publishing.heartbeat_events,
    )


@router.post("/peripherals", tags=["ingest"], summary="Peripheral status changes", responses=_BATCH_DOC)
async def post_peripherals(
    request: Request, body: PeripheralBatch, principal: Principal = Depends(require_scope("kiosk:ingest"))
):
    """Device state changes of fitted peripherals (and printer paper). Published on ``ioc.kiosk.peripherals``."""
    return await _ingest(
        request,
        principal,
        body.items,
        "peripheral",
        PeripheralStatusChanged,
        domain.check_peripherals,
        publishing.peripheral_events,
    )


@router.post("/sessions", tags=["ingest"], summary="Finished kiosk sessions", responses=_BATCH_DOC)
async def post_sessions(
    request: Request, body: SessionBatch, principal: Principal = Depends(require_scope("kiosk:ingest"))
):
    """Sessions (journey, start, end, outcome, optional dossier code and rating; never personal data)."""
    return await _ingest(
        request,
        principal,
        body.items,
        "session",
        SessionEnded,
        domain.check_sessions,
        publishing.session_events,
    )
