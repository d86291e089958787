"""HTTP API of the dossier service: reference data (admin) and the dossier lifecycle (agencies).

Agencies authenticate with a key whose principal has kind ``agency`` and attribute ``agency``; they see and
change only their own dossiers (another agency's dossier answers 404, as if it did not exist). Dossier codes
are scoped per agency: two agencies may use the same code, and a dossier is (agency, code). Scopes:
``dossier:read`` for reads, ``dossier:write`` for changes, ``dossier:admin`` for reference data; ``*`` sees all.
"""

from __future__ import annotations

import asyncio
import csv
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as TimeOfDay
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from shared.areas import Hierarchy, hanoi, load_district_csv, load_hierarchy
from shared.auth import ApiError, Principal, record_audit, require_scope
from shared.contracts.base import AreaCode, DisplayText, EntityId, StrictBool, StrictInt
from shared.contracts.cloudevents import EncodedEvent
from shared.contracts.dossier import CHANNEL_CODES
from shared.http import RequestModel, ServiceContext, idempotent
from shared.ingest import SaneDate, SaneDatetime
from shared.metrics import EVENTS_ACCEPTED
from shared.outbox import Outbox

from . import publishing, repository
from .domain import (
    ACTIONS,
    DEFAULT_OFFICE_CLOSE,
    DEFAULT_OFFICE_OPEN,
    Agency,
    Dossier,
    DossierRuleError,
    Procedure,
    WorkingCalendar,
    allowed_actions,
    apologize,
    for_index766,
    hand_over,
    is_overdue,
    local_date,
    new_dossier,
    record_feedback,
    record_portal_sync,
    timeliness,
    transition,
)
from .index766 import INPUT_INDICATORS, period_bounds, scorecards

SERVICE = "dossier"
MAX_CLOCK_SKEW = timedelta(minutes=5)

router = APIRouter(prefix="/v1", tags=["dossiers"])


# Runtime objects -------------------------------------------------------------------------------------------


def load_hierarchy_file(path: str) -> Hierarchy:
    """The administrative hierarchy: the Hanoi seed, a seed-format district CSV, or a generic
    ``code,name,level,parent_code`` CSV (two-tier or three-tier, as data)."""
    if not path:
        return hanoi()
    with open(path, encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return load_hierarchy(Path(path)) if "parent_code" in header else load_district_csv(Path(path))


@dataclass
class DossierRuntime:
    """What the dossier endpoints share: the calendar, the hierarchy and the cached reference data."""

    calendar: WorkingCalendar
    hierarchy: Hierarchy
    relay: Outbox
    procedures: dict[str, Procedure] = field(default_factory=dict)
    agencies: dict[str, Agency] = field(default_factory=dict)
    loaded_at: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def refresh(self, ctx: ServiceContext) -> None:
        assert ctx.pool is not None
        async with self.lock:
            self.procedures = await repository.load_procedures(ctx.pool)
            self.agencies = await repository.load_agencies(ctx.pool)
            self.loaded_at = time.monotonic()

    async def refresh_if_stale(self, ctx: ServiceContext, max_age_s: float = 60.0) -> None:
        """Reload the reference data when older than ``max_age_s`` (another replica may have changed office
        hours)."""
        if time.monotonic() - self.loaded_at > max_age_s:
            await self.refresh(ctx)

    async def procedure(self, ctx: ServiceContext, code: str) -> Procedure | None:
        # Another replica may have added it: one reload on a miss, rate-limited.
        p = self.procedures.get(code)
        if p is None and time.monotonic() - self.loaded_at > 1.0:
            await self.refresh(ctx)
            p = self.procedures.get(code)
        return p

    async def agency(self, ctx: ServiceContext, code: str) -> Agency | None:
        a = self.agencies.get(code)
        if a is None and time.monotonic() - self.loaded_at > 1.0:
            await self.refresh(ctx)
            a = self.agencies.get(code)
        return a

    def district_of(self, admin_unit: str) -> str | None:
        return self.hierarchy.district_of(admin_unit)


def _ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


def _rt(request: Request) -> DossierRuntime:
    return _ctx(request).extras["dossier"]


def _own_agency(principal: Principal) -> str | None:
    """The agency an agency principal is confined to; ``None`` for principals that see every agency.

    A principal carrying an ``agency`` attribute is confined to it whatever its kind: a kind changed by
    mistake must never widen what it sees (only an admin holding ``*`` sees every agency)."""
    agency = principal.attributes.get("agency")
    if principal.kind != "agency" and agency is None:
        return None
    if "*" in principal.scopes and principal.kind == "admin":
        return None
    if not isinstance(agency, str) or not agency:
        raise ApiError(403, "forbidden", "this agency principal has no agency attribute")
    return agency


AgencyQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="the dossier's agency: codes are scoped per agency. An agency principal may omit it (its own "
        "agency); a principal that sees every agency must give it when several agencies use the code",
    ),
]


async def _dossier_agency(conn, principal: Principal, code: str, agency: str | None) -> str:
    """The agency whose dossier ``code`` names. An agency principal only ever resolves within its own agency
    (one lookup by (agency, code), whether or not another agency uses the code: nothing tells it they do);
    naming another agency answers the same 404 as a code that never existed."""
    own = _own_agency(principal)
    if own is not None:
        if agency not in (None, own):
            raise _not_found(code)
        return own
    if agency is not None:
        return agency
    agencies = await repository.agencies_using(conn, code)
    if not agencies:
        raise _not_found(code)
    if len(agencies) > 1:  # only principals that see every agency get here
        raise ApiError(
            409,
            "ambiguous_code",
            f"dossier code {code!r} is used by several agencies: name one with ?agency=",
            [{"field": "agency", "reason": "required: one of " + ", ".join(agencies)}],
        )
    return agencies[0]


def _event_time(at: datetime | None, field_name: str = "at") -> datetime:
    now = datetime.now(UTC)
    if at is None:
        return now
    if at.tzinfo is None:
        raise ApiError(
            422,
            "invalid_request",
            f"{field_name} must carry a UTC offset",
            [{"field": field_name, "reason": "naive datetime"}],
        )
    if at > now + MAX_CLOCK_SKEW:
        raise ApiError(
            422,
            "invalid_request",
            f"{field_name} is in the future",
            [{"field": field_name, "reason": "in the future"}],
        )
    return at


def _rule_error(exc: DossierRuleError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, [exc.details] if exc.details else [])


def _not_found(code: str) -> ApiError:
    return ApiError(404, "not_found", f"no dossier {code!r} visible to this principal")


def dossier_view(d: Dossier, today: date) -> dict[str, Any]:
    """The public view of a dossier (no applicant data)."""
    view: dict[str, Any] = {
        "code": d.code,
        "procedure_code": d.procedure_code,
        "agency_code": d.agency_code,
        "admin_unit": d.admin_unit,
        "district": d.district,
        "channel": d.channel,
        "channel_code": CHANNEL_CODES[d.channel],
        "status": d.status,
        "status_name": d.status_name,
        "step": d.step,
        "submitted_at": d.submitted_at,
        "received_at": d.received_at,
        "due_date": d.due_date,
        "promised_date": d.promised_date,
        "clock_paused": d.paused_at is not None,
        "resolved_at": d.resolved_at,
        "closed_at": d.closed_at,
        "fees_paid_online": d.fees_paid_online,
        "digitised": d.digitised,
        "result_esigned": d.result_esigned,
        "rating": d.rating,
        "complained": d.complained,
        "allowed_actions": allowed_actions(d.status),
        "overdue": is_overdue(d, today),
        "timeliness": timeliness(d.resolved_at, d.due_date) if d.resolved_at and d.due_date else None,
    }
    return view


# Reference data --------------------------------------------------------------------------------------------


class ProcedureIn(RequestModel):
    code: EntityId
    name: DisplayText = Field(min_length=1, max_length=300)
    online_level: Literal["fully_online", "partly_online", "offline"] = Field(
        description="Decree 42/2022: fully online, partly online; offline for counter-only procedures"
    )
    service_level: StrictInt | None = Field(
        None, ge=1, le=4, description="pre-2022 level (3: online forms, 4: + payment)"
    )
    processing_days: StrictInt = Field(ge=0, le=365, description="legal processing time in working days")
    has_fees: StrictBool
    pauses_clock: StrictBool = Field(
        description="the legal clock pauses while additional documents are requested"
    )


class ProceduresIn(RequestModel):
    items: list[ProcedureIn] = Field(min_length=1, max_length=5000)


class AgencyIn(RequestModel):
    code: EntityId
    name: DisplayText = Field(min_length=1, max_length=300)
    level: Literal["city", "district", "commune"]
    admin_unit: AreaCode = Field(description="code of its administrative unit in the hierarchy")
    office_open: TimeOfDay = Field(DEFAULT_OFFICE_OPEN, description="opening time (Vietnam local time)")
    office_close: TimeOfDay = Field(
        DEFAULT_OFFICE_CLOSE,
        description="closing time (Vietnam local time): a dossier received at or after it counts as received "
        "on the next working day",
    )


class AgenciesIn(RequestModel):
    items: list[AgencyIn] = Field(min_length=1, max_length=5000)


@router.put("/procedures", summary="Create or update procedures of the catalogue")
async def put_procedures(
    body: ProceduresIn, request: Request, principal: Principal = Depends(require_scope("dossier:admin"))
) -> dict:
    ctx = _ctx(request)
    assert ctx.pool is not None
    procs = [
        Procedure(
            p.code, p.name, p.online_level, p.processing_days, p.has_fees, p.pauses_clock, p.service_level
        )
        for p in body.items
    ]
    async with ctx.pool.acquire() as conn, conn.transaction():
        await repository.upsert_procedures(conn, procs)
        await record_audit(
            conn,
            principal=principal.id,
            service=SERVICE,
            action="procedures.upsert",
            target="procedures",
            detail={"count": len(procs)},
        )
    await _rt(request).refresh(ctx)
    return {"status": "accepted", "accepted": len(procs)}


@router.get("/procedures", summary="The procedure catalogue")
async def get_procedures(request: Request, _: Principal = Depends(require_scope("dossier:read"))) -> dict:
    rt = _rt(request)
    await rt.refresh(_ctx(request))
    return {"items": [vars(p) for p in sorted(rt.procedures.values(), key=lambda p: p.code)]}


@router.put("/agencies", summary="Create or update agencies (each attached to an administrative unit)")
async def put_agencies(
    body: AgenciesIn, request: Request, principal: Principal = Depends(require_scope("dossier:admin"))
) -> dict:
    ctx = _ctx(request)
    rt = _rt(request)
    assert ctx.pool is not None
    errors = [
        {"item": i, "id": a.code, "field": "admin_unit", "reason": "unknown administrative unit"}
        for i, a in enumerate(body.items)
        if a.admin_unit not in rt.hierarchy.areas
    ]
    if errors:
        raise ApiError(
            422, "unknown_entity", "some agencies name an administrative unit not in the hierarchy", errors
        )
    errors = [
        {"item": i, "id": a.code, "field": "office_close", "reason": "must be after office_open"}
        for i, a in enumerate(body.items)
        if a.office_close <= a.office_open
    ]
    if errors:
        raise ApiError(422, "invalid_request", "office hours must close after they open", errors)
    agencies = [
        Agency(a.code, a.name, a.level, a.admin_unit, a.office_open, a.office_close) for a in body.items
    ]
    async with ctx.pool.acquire() as conn, conn.transaction():
        await repository.upsert_agencies(conn, agencies)
        await record_audit(
            conn,
            principal=principal.id,
            service=SERVICE,
            action="agencies.upsert",
            target="agencies",
            detail={"count": len(agencies)},
        )
    await rt.refresh(ctx)
    return {"status": "accepted", "accepted": len(agencies)}


@router.get("/agencies", summary="Agencies with their administrative unit and district")
async def get_agencies(request: Request, _: Principal = Depends(require_scope("dossier:read"))) -> dict:
    rt = _rt(request)
    await rt.refresh(_ctx(request))
    return {
        "items": [
            {
                **vars(a),
                "office_open": a.office_open.isoformat(timespec="minutes"),
                "office_close": a.office_close.isoformat(timespec="minutes"),
                "district": rt.district_of(a.admin_unit),
            }
            for a in sorted(rt.agencies.values(), key=lambda a: a.code)
        ]
    }


# Dossiers --------------------------------------------------------------------------------------------------


class ApplicantIn(RequestModel):
    """The applicant. Stored for the agency; never published, logged or echoed in errors."""

    name: DisplayText = Field(min_length=1, max_length=200)
    id_number: str = Field(pattern=r"^[0-9]{9,12}$", description="CCCD/CMND number")
    address: DisplayText = Field(min_length=1, max_length=500)
    phone: str = Field(pattern=r"^\+?[0-9 ]{8,16}$")


class DossierIn(RequestModel):
    code: EntityId = Field(description="the dossier code the agency's system assigned")
    procedure_code: EntityId
    agency_code: EntityId
    channel: Literal["in_person", "online", "postal"]
    applicant: ApplicantIn
    received: StrictBool = Field(
        True, description="accepted on the spot (status 2); false: submitted (status 1)"
    )
    digitised: StrictBool = Field(False, description="received with its documents digitised (766)")
    at: SaneDatetime | None = Field(None, description="when it was submitted/received (default: now)")


class TransitionIn(RequestModel):
    action: Literal[ACTIONS]  # type: ignore[valid-type]
    at: SaneDatetime | None = Field(None, description="when it happened (default: now)")
    paid_online: StrictBool | None = Field(
        None, description="pay_fees only: paid through the online payment platform"
    )
    digitised: StrictBool | None = Field(
        None, description="receive only: documents digitised at receipt (766)"
    )
    result_esigned: StrictBool | None = Field(
        None, description="resolve / return_result only: a legally valid electronic (e-signed) result (766)"
    )


class FeedbackIn(RequestModel):
    """The applicant's rating and/or complaint. No text and nothing about the person is taken."""

    rating: Literal["very_satisfied", "satisfied", "unsatisfied"] | None = None
    complained: StrictBool = False
    at: SaneDatetime | None = None


class PortalSyncIn(RequestModel):
    synced_status: StrictInt = Field(ge=1, le=10, description="the national status synchronised")
    status_at: SaneDatetime = Field(description="when the dossier reached that status")
    synced_at: SaneDatetime | None = Field(None, description="when the portal acknowledged it (default: now)")


class IndexInputIn(RequestModel):
    scope_level: Literal["agency", "commune", "district", "city"]
    scope_code: EntityId
    period: str = Field(
        pattern=r"^20[0-9]{2}(-Q[1-4]|-(0[1-9]|1[0-2]))?$", description="YYYY, YYYY-Qn or YYYY-MM"
    )
    indicator: str = Field(max_length=64, description="an indicator whose data comes from another system")
    numerator: float = Field(ge=0)
    denominator: float = Field(gt=0)
    source: DisplayText = Field(
        min_length=1, max_length=300, description="the system or report it comes from"
    )


class IndexInputsIn(RequestModel):
    items: list[IndexInputIn] = Field(min_length=1, max_length=5000)


class HandoverIn(RequestModel):
    step_name: DisplayText = Field(min_length=1, max_length=100, description="the step the dossier moves to")
    at: SaneDatetime | None = None


class ApologyIn(RequestModel):
    new_due_date: SaneDate = Field(
        description="the date promised to the applicant in the apology letter (form 04)"
    )
    at: SaneDatetime | None = None


async def _commit(
    request: Request,
    principal: Principal,
    conn,
    before: Dossier | None,
    after: Dossier,
    action: str,
    events: list[EncodedEvent],
    detail: dict | None = None,
    at: datetime | None = None,
) -> None:
    """Write the new state, its history line, its events (outbox) and the audit record (same transaction).
    ``at``: when it happened, if not the dossier's last lifecycle change (feedback, portal synchronisation)."""
    if before is not None:  # a new dossier was inserted by the caller
        await repository.update_dossier(conn, after)
    await repository.insert_history(
        conn,
        after.agency_code,
        after.code,
        at=at or after.last_change_at,
        action=action,
        from_status=before.status if before else None,
        to_status=after.status,
        principal=principal.id,
        detail=detail,
    )
    await Outbox.add(conn, events)
    await record_audit(
        conn,
        principal=principal.id,
        service=SERVICE,
        action=f"dossier.{action}",
        target=after.code,
        # codes are scoped per agency: the agency makes the target unambiguous
        detail={
            "agency": after.agency_code,
            "from": before.status if before else None,
            "to": after.status,
            **(detail or {}),
        },
    )


@router.post("/dossiers", status_code=201, summary="Submit or receive a new dossier")
async def create_dossier(
    body: DossierIn, request: Request, principal: Principal = Depends(require_scope("dossier:write"))
):
    ctx = _ctx(request)
    rt = _rt(request)
    own = _own_agency(principal)
    if own is not None and body.agency_code != own:
        raise ApiError(
            403,
            "forbidden",
            "an agency can only record dossiers for itself",
            [{"field": "agency_code", "reason": "not this principal's agency"}],
        )
    at = _event_time(body.at)

    async def compute() -> tuple[int, dict]:
        procedure = await rt.procedure(ctx, body.procedure_code)
        agency = await rt.agency(ctx, body.agency_code)
        missing = [f for f, v in (("procedure_code", procedure), ("agency_code", agency)) if v is None]
        if missing:
            raise ApiError(
                422,
                "unknown_entity",
                "unknown " + " and ".join(missing),
                [{"field": f, "reason": "not in the reference data"} for f in missing],
            )
        assert procedure is not None and agency is not None
        d = new_dossier(
            code=body.code,
            procedure=procedure,
            agency=agency,
            district=rt.district_of(agency.admin_unit),
            channel=body.channel,
            at=at,
            calendar=rt.calendar,
            received=body.received,
        )
        if body.digitised:
            if not body.received:
                raise ApiError(
                    422,
                    "invalid_request",
                    "digitised is recorded when the dossier is received",
                    [{"field": "digitised", "reason": "only with received=true"}],
                )
            d = replace(d, digitised=True)
        action = "receive" if body.received else "submit"
        event = publishing.status_changed(d, procedure, action=action, previous=None, at=at)
        assert ctx.pool is not None
        async with ctx.pool.acquire() as conn, conn.transaction():
            if not await repository.insert_dossier(conn, d, body.applicant.model_dump()):
                raise ApiError(
                    409,
                    "duplicate",
                    f"dossier {body.code!r} exists already",
                    [{"field": "code", "reason": "duplicate"}],
                )
            await _commit(request, principal, conn, None, d, action, [event], {"channel": d.channel})
        rt.relay.notify()
        EVENTS_ACCEPTED.labels(SERVICE, "dossier").inc()
        return 201, dossier_view(d, local_date(datetime.now(UTC)))

    return await idempotent(request, principal, "dossier:write", compute)


async def _change(
    request: Request,
    principal: Principal,
    code: str,
    agency: str | None,
    action: str,
    mutate,
    at: datetime | None = None,
) -> dict:
    """Lock the dossier, check who may touch it, apply ``mutate(dossier, procedure)`` and commit it all."""
    ctx = _ctx(request)
    rt = _rt(request)
    assert ctx.pool is not None
    async with ctx.pool.acquire() as conn, conn.transaction():
        owner = await _dossier_agency(conn, principal, code, agency)
        d = await repository.lock_dossier(conn, owner, code)
        if d is None:
            raise _not_found(code)
        procedure = await rt.procedure(ctx, d.procedure_code)
        assert procedure is not None  # a foreign key guarantees it
        try:
            new, events, detail = mutate(d, procedure)
        except DossierRuleError as exc:
            raise _rule_error(exc) from None
        await _commit(request, principal, conn, d, new, action, events, detail, at)
    rt.relay.notify()
    return dossier_view(new, local_date(datetime.now(UTC)))


@router.post("/dossiers/{code}/transitions", summary="Apply a lifecycle transition (national status 1-10)")
async def post_transition(
    code: str,
    body: TransitionIn,
    request: Request,
    agency: AgencyQuery = None,
    principal: Principal = Depends(require_scope("dossier:write")),
):
    at = _event_time(body.at)
    rt = _rt(request)

    def mutate(d: Dossier, procedure: Procedure):
        agency = rt.agencies.get(d.agency_code)
        close = agency.office_close if agency is not None else DEFAULT_OFFICE_CLOSE
        new = transition(
            d,
            body.action,
            at,
            procedure,
            rt.calendar,
            paid_online=body.paid_online,
            office_close=close,
            digitised=body.digitised,
            result_esigned=body.result_esigned,
        )
        ev = publishing.status_changed(
            new,
            procedure,
            action=body.action,
            previous=d.status,
            at=at,
            paid_online=body.paid_online if body.action == "pay_fees" else None,
        )
        return new, [ev], {}

    async def compute() -> tuple[int, dict]:
        await _rt(request).refresh_if_stale(_ctx(request))
        return 200, await _change(request, principal, code, agency, body.action, mutate)

    return await idempotent(request, principal, "dossier:write", compute)


@router.post("/dossiers/{code}/handovers", summary="Hand the dossier over to the next step (control slip)")
async def post_handover(
    code: str,
    body: HandoverIn,
    request: Request,
    agency: AgencyQuery = None,
    principal: Principal = Depends(require_scope("dossier:write")),
):
    at = _event_time(body.at)

    def mutate(d: Dossier, procedure: Procedure):
        new = hand_over(d, at)
        return new, [publishing.handed_over(new, procedure, at, body.step_name)], {"step": new.step}

    async def compute() -> tuple[int, dict]:
        return 200, await _change(request, principal, code, agency, "hand_over", mutate)

    return await idempotent(request, principal, "dossier:write", compute)


@router.post("/dossiers/{code}/apologies", summary="Apologise for a late dossier with a new date (form 04)")
async def post_apology(
    code: str,
    body: ApologyIn,
    request: Request,
    agency: AgencyQuery = None,
    principal: Principal = Depends(require_scope("dossier:write")),
):
    at = _event_time(body.at)

    def mutate(d: Dossier, procedure: Procedure):
        new = apologize(d, body.new_due_date, at)
        return (
            new,
            [publishing.apologized(new, procedure, at)],
            {"promised_date": body.new_due_date.isoformat()},
        )

    async def compute() -> tuple[int, dict]:
        return 200, await _change(request, principal, code, agency, "apologize", mutate)

    return await idempotent(request, principal, "dossier:write", compute)


@router.get("/dossiers/{code}", summary="A dossier with its applicant and history (owning agency only)")
async def get_dossier(
    code: str,
    request: Request,
    agency: AgencyQuery = None,
    principal: Principal = Depends(require_scope("dossier:read")),
) -> dict:
    ctx = _ctx(request)
    assert ctx.pool is not None
    owner = await _dossier_agency(ctx.pool, principal, code, agency)
    found = await repository.get_dossier(ctx.pool, owner, code)
    if found is None:
        raise _not_found(code)
    d, applicant = found
    view = dossier_view(d, local_date(datetime.now(UTC)))
    view["applicant"] = applicant
    view["history"] = await repository.history(ctx.pool, owner, code)
    return view


@router.get("/dossiers", summary="Dossiers visible to this principal (paged by code, then agency)")
async def list_dossiers(
    request: Request,
    principal: Principal = Depends(require_scope("dossier:read")),
    status: Annotated[int | None, Query(ge=1, le=10)] = None,
    agency: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[str | None, Query(max_length=64, description="last code of the previous page")] = None,
    after_agency: Annotated[
        str | None,
        Query(
            max_length=64, description="agency of the last dossier of the previous page (next_after_agency)"
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict:
    ctx = _ctx(request)
    own = _own_agency(principal)
    if own is not None and agency not in (None, own):
        raise ApiError(
            403,
            "forbidden",
            "an agency can only list its own dossiers",
            [{"field": "agency", "reason": "not this principal's agency"}],
        )
    assert ctx.pool is not None
    rows = await repository.list_dossiers(
        ctx.pool, agency=own or agency, status=status, limit=limit, after=after, after_agency=after_agency
    )
    today = local_date(datetime.now(UTC))
    items = [dossier_view(d, today) for d in rows]
    more = len(items) == limit
    return {
        "items": items,
        "next_after": items[-1]["code"] if more else None,
        "next_after_agency": items[-1]["agency_code"] if more else None,
    }


@router.post("/dossiers/{code}/feedback", summary="Record the applicant's rating and/or complaint (766)")
async def post_feedback(
    code: str,
    body: FeedbackIn,
    request: Request,
    agency: AgencyQuery = None,
    principal: Principal = Depends(require_scope("dossier:write")),
):
    at = _event_time(body.at)

    def mutate(d: Dossier, procedure: Procedure):
        new = record_feedback(d, body.rating, body.complained)
        event = publishing.feedback_recorded(new, procedure, at, body.rating, body.complained)
        return new, [event], {"rating": body.rating, "complained": body.complained}

    async def compute() -> tuple[int, dict]:
        return 200, await _change(request, principal, code, agency, "feedback", mutate, at)

    return await idempotent(request, principal, "dossier:write", compute)


@router.post(
    "/dossiers/{code}/portal-syncs", summary="Record a status synchronised to the national portal (766)"
)
async def post_portal_sync(
    code: str,
    body: PortalSyncIn,
    request: Request,
    agency: AgencyQuery = None,
    principal: Principal = Depends(require_scope("dossier:write")),
):
    synced_at = _event_time(body.synced_at, "synced_at")
    status_at = _event_time(body.status_at, "status_at")
    max_delay = request.app.state.ctx.extras.get("dossier_portal_sync_max_delay_s", 86400.0)

    def mutate(d: Dossier, procedure: Procedure):
        new, on_time = record_portal_sync(d, status_at, synced_at, max_delay)
        event = publishing.portal_synced(
            new, procedure, synced_status=body.synced_status, status_at=status_at, synced_at=synced_at,
            on_time=on_time,
        )  # fmt: skip
        return new, [event], {"synced_status": body.synced_status, "on_time": on_time}

    async def compute() -> tuple[int, dict]:
        return 200, await _change(request, principal, code, agency, "portal_sync", mutate, synced_at)

    return await idempotent(request, principal, "dossier:write", compute)


@router.put("/index766/inputs", summary="Decision 766 indicators whose data comes from other systems")
async def put_index_inputs(
    body: IndexInputsIn, request: Request, principal: Principal = Depends(require_scope("dossier:admin"))
) -> dict:
    ctx = _ctx(request)
    assert ctx.pool is not None
    errors = []
    for i, item in enumerate(body.items):
        if item.indicator not in INPUT_INDICATORS:
            errors.append(
                {
                    "item": i,
                    "field": "indicator",
                    "reason": f"not an outside-data indicator; one of {', '.join(INPUT_INDICATORS)}",
                }
            )
        elif item.numerator > item.denominator:
            errors.append({"item": i, "field": "numerator", "reason": "must not exceed the denominator"})
    if errors:
        raise ApiError(422, "invalid_request", "some inputs are not valid", errors)
    rows = [
        (
            x.scope_level,
            x.scope_code,
            x.period,
            x.indicator,
            x.numerator,
            x.denominator,
            x.source,
            principal.id,
        )
        for x in body.items
    ]
    async with ctx.pool.acquire() as conn, conn.transaction():
        await repository.upsert_index_inputs(conn, rows)
        await record_audit(
            conn,
            principal=principal.id,
            service=SERVICE,
            action="index766.inputs",
            target="index766",
            detail={"count": len(rows)},
        )
    return {"status": "accepted", "accepted": len(rows)}


@router.get("/index766", summary="Decision 766 scorecards per scope for a month, quarter or year")
async def get_index766(
    request: Request,
    period: Annotated[str, Query(pattern=r"^20[0-9]{2}(-Q[1-4]|-(0[1-9]|1[0-2]))?$")],
    principal: Principal = Depends(require_scope("dossier:read")),
    scope_level: Annotated[str | None, Query(max_length=16)] = None,
    scope_code: Annotated[str | None, Query(max_length=64)] = None,
) -> dict:
    ctx = _ctx(request)
    rt = _rt(request)
    own = _own_agency(principal)
    assert ctx.pool is not None
    start, end = period_bounds(period)
    await rt.refresh_if_stale(ctx)
    rows = await repository.dossiers_for_period(ctx.pool, start, end)
    facts = [
        for_index766(d, rt.procedures[d.procedure_code]) for d in rows if d.procedure_code in rt.procedures
    ]
    if own is not None:  # an agency sees its own scorecard only
        facts = [f for f in facts if f.agency_code == own]
        scope_level, scope_code = "agency", own
    inputs = await repository.index_inputs(ctx.pool, period)
    cards = scorecards(facts, period, local_date(datetime.now(UTC)), inputs)
    items = [
        {
            "scope_level": level,
            "scope_code": code,
            "period": period,
            "total": c.total,
            "covered_points": c.covered_points,
            "groups": c.groups,
            "indicators": c.indicators,
            "missing": list(c.missing),
        }
        for (level, code), c in cards.items()
        if (scope_level is None or level == scope_level) and (scope_code is None or code == scope_code)
    ]
    return {"period": period, "items": items}
