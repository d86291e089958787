"""HTTP API of the dossier service: reference data (admin) and the dossier lifecycle (agencies).

A thin adapter: parse the request, call :class:`~services.dossier.service.DossierService`, answer. Agencies
authenticate with a key whose principal has kind ``agency`` and attribute ``agency``; they see and change only
their own dossiers (another agency's dossier answers 404, as if it did not exist). Dossier codes are scoped per
agency: two agencies may use the same code, and a dossier is (agency, code). Scopes: ``dossier:read`` for reads,
``dossier:write`` for changes, ``dossier:admin`` for reference data; ``*`` sees all.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from datetime import time as TimeOfDay
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from shared.auth import ApiError, Principal, require_scope
from shared.contracts.base import AreaCode, DisplayText, EntityId, StrictBool, StrictInt
from shared.http import RequestModel, idempotent
from shared.ingest import SaneDate, SaneDatetime

from .domain import ACTIONS, DEFAULT_OFFICE_CLOSE, DEFAULT_OFFICE_OPEN, Agency, Procedure
from .service import DossierService, IndexInput, NewDossier

MAX_CLOCK_SKEW = timedelta(minutes=5)

router = APIRouter(prefix="/v1", tags=["dossiers"])
#: aggregate reads holding no applicant's personal data (the agency list, Decision 766 scorecards): the full
#: read scope, or ``dossier:stats``, which console roles get without ``dossier:read`` (docs/console.md)
AGGREGATE_READ = ("dossier:read", "dossier:stats")


def dossier_service(request: Request) -> DossierService:
    """The running service (set by the app's lifespan)."""
    service: DossierService = request.app.state.dossier_service
    return service


Dossiers = Annotated[DossierService, Depends(dossier_service)]

AgencyQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="the dossier's agency: codes are scoped per agency. An agency principal may omit it (its own "
        "agency); a principal that sees every agency must give it when several agencies use the code",
    ),
]


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


# Request bodies ---------------------------------------------------------------------------------------------


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


# Reference data --------------------------------------------------------------------------------------------


@router.put("/procedures", summary="Create or update procedures of the catalogue")
async def put_procedures(
    body: ProceduresIn, svc: Dossiers, principal: Principal = Depends(require_scope("dossier:admin"))
) -> dict:
    procs = [
        Procedure(
            p.code, p.name, p.online_level, p.processing_days, p.has_fees, p.pauses_clock, p.service_level
        )
        for p in body.items
    ]
    return {"status": "accepted", "accepted": await svc.put_procedures(principal, procs)}


@router.get("/procedures", summary="The procedure catalogue")
async def get_procedures(svc: Dossiers, _: Principal = Depends(require_scope("dossier:read"))) -> dict:
    return {"items": [vars(p) for p in await svc.list_procedures()]}


@router.put("/agencies", summary="Create or update agencies (each attached to an administrative unit)")
async def put_agencies(
    body: AgenciesIn, svc: Dossiers, principal: Principal = Depends(require_scope("dossier:admin"))
) -> dict:
    agencies = [
        Agency(a.code, a.name, a.level, a.admin_unit, a.office_open, a.office_close) for a in body.items
    ]
    return {"status": "accepted", "accepted": await svc.put_agencies(principal, agencies)}


@router.get("/agencies", summary="Agencies with their administrative unit and district")
async def get_agencies(svc: Dossiers, _: Principal = Depends(require_scope(AGGREGATE_READ))) -> dict:
    return {"items": await svc.list_agencies()}


# Dossiers --------------------------------------------------------------------------------------------------


@router.post("/dossiers", status_code=201, summary="Submit or receive a new dossier")
async def create_dossier(
    body: DossierIn,
    request: Request,
    svc: Dossiers,
    principal: Principal = Depends(require_scope("dossier:write")),
):
    new = NewDossier(
        code=body.code,
        procedure_code=body.procedure_code,
        agency_code=body.agency_code,
        channel=body.channel,
        applicant=body.applicant.model_dump(),
        received=body.received,
        digitised=body.digitised,
        at=_event_time(body.at),
    )

    async def compute() -> tuple[int, dict]:
        return 201, await svc.create_dossier(principal, new)

    return await idempotent(request, principal, "dossier:write", compute)


@router.post("/dossiers/{code}/transitions", summary="Apply a lifecycle transition (national status 1-10)")
async def post_transition(
    code: str,
    body: TransitionIn,
    request: Request,
    svc: Dossiers,
    agency: AgencyQuery = None,
    principal: Principal = Depends(require_scope("dossier:write")),
):
    at = _event_time(body.at)

    async def compute() -> tuple[int, dict]:
        view = await svc.transition(
            principal,
            code,
            agency,
            body.action,
            at,
            paid_online=body.paid_online,
            digitised=body.digitised,
            result_esigned=body.result_esigned,
        )
        return 200, view

    return await idempotent(request, principal, "dossier:write", compute)


@router.post("/dossiers/{code}/handovers", summary="Hand the dossier over to the next step (control slip)")
async def post_handover(
    code: str,
    body: HandoverIn,
    request: Request,
    svc: Dossiers,
    agency: AgencyQuery = None,
    principal: Principal = Depends(require_scope("dossier:write")),
):
    at = _event_time(body.at)

    async def compute() -> tuple[int, dict]:
        return 200, await svc.hand_over(principal, code, agency, body.step_name, at)

    return await idempotent(request, principal, "dossier:write", compute)


@router.post("/dossiers/{code}/apologies", summary="Apologise for a late dossier with a new date (form 04)")
async def post_apology(
    code: str,
    body: ApologyIn,
    request: Request,
    svc: Dossiers,
    agency: AgencyQuery = None,
    principal: Principal = Depends(require_scope("dossier:write")),
):
    at = _event_time(body.at)

    async def compute() -> tuple[int, dict]:
        return 200, await svc.apologize(principal, code, agency, body.new_due_date, at)

    return await idempotent(request, principal, "dossier:write", compute)


@router.get("/dossiers/{code}", summary="A dossier with its applicant and history (owning agency only)")
async def get_dossier(
    code: str,
    svc: Dossiers,
    agency: AgencyQuery = None,
    principal: Principal = Depends(require_scope("dossier:read")),
) -> dict:
    return await svc.get_dossier(principal, code, agency)


@router.get("/dossiers", summary="Dossiers visible to this principal (paged by code, then agency)")
async def list_dossiers(
    svc: Dossiers,
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
    return await svc.list_dossiers(
        principal, status=status, agency=agency, after=after, after_agency=after_agency, limit=limit
    )


@router.post("/dossiers/{code}/feedback", summary="Record the applicant's rating and/or complaint (766)")
async def post_feedback(
    code: str,
    body: FeedbackIn,
    request: Request,
    svc: Dossiers,
    agency: AgencyQuery = None,
    principal: Principal = Depends(require_scope("dossier:write")),
):
    at = _event_time(body.at)

    async def compute() -> tuple[int, dict]:
        return 200, await svc.record_feedback(principal, code, agency, body.rating, body.complained, at)

    return await idempotent(request, principal, "dossier:write", compute)


@router.post(
    "/dossiers/{code}/portal-syncs", summary="Record a status synchronised to the national portal (766)"
)
async def post_portal_sync(
    code: str,
    body: PortalSyncIn,
    request: Request,
    svc: Dossiers,
    agency: AgencyQuery = None,
    principal: Principal = Depends(require_scope("dossier:write")),
):
    synced_at = _event_time(body.synced_at, "synced_at")
    status_at = _event_time(body.status_at, "status_at")

    async def compute() -> tuple[int, dict]:
        view = await svc.record_portal_sync(principal, code, agency, body.synced_status, status_at, synced_at)
        return 200, view

    return await idempotent(request, principal, "dossier:write", compute)


@router.put("/index766/inputs", summary="Decision 766 indicators whose data comes from other systems")
async def put_index_inputs(
    body: IndexInputsIn, svc: Dossiers, principal: Principal = Depends(require_scope("dossier:admin"))
) -> dict:
    items = [
        IndexInput(x.scope_level, x.scope_code, x.period, x.indicator, x.numerator, x.denominator, x.source)
        for x in body.items
    ]
    return {"status": "accepted", "accepted": await svc.put_index_inputs(principal, items)}


@router.get("/index766", summary="Decision 766 scorecards per scope for a month, quarter or year")
async def get_index766(
    svc: Dossiers,
    period: Annotated[str, Query(pattern=r"^20[0-9]{2}(-Q[1-4]|-(0[1-9]|1[0-2]))?$")],
    principal: Principal = Depends(require_scope(AGGREGATE_READ)),
    scope_level: Annotated[str | None, Query(max_length=16)] = None,
    scope_code: Annotated[str | None, Query(max_length=64)] = None,
) -> dict:
    return await svc.index766(principal, period, scope_level, scope_code)
