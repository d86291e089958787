"""HTTP routes of the incident workflow (thin: parse, call :mod:`services.city.service_incidents`, format).

Reading needs ``city:read``; commenting and ticking procedure steps ``city:operate`` and an operating role
(operator, supervisor, administrator); assigning ``city:operate`` and a supervising role (supervisor,
administrator); assigning and clearing over the procedure ``city:supervise`` (supervisors, administrators).
Listing, acknowledging and clearing incidents stay in :mod:`services.city.api` (the list takes the workflow's
filters, clearing passes the procedure gate). docs/console.md, "Incident workflow".
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from services.city.incidents import MAX_COMMENT, MAX_REASON, OPERATE_ROLES, SUPERVISE_SCOPE
from services.city.service_incidents import IncidentService
from shared.auth import Principal, require_scope

router = APIRouter(prefix="/v1", tags=["incidents"])

READ = Depends(require_scope("city:read"))
WORK = Depends(require_scope("city:operate", OPERATE_ROLES))
SUPERVISE = Depends(require_scope(SUPERVISE_SCOPE))
INCIDENT_ID = Path(max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")


def incident_service(request: Request) -> IncidentService:
    """The running incident workflow (set by the app's lifespan)."""
    return request.app.state.incident_service


Incidents = Annotated[IncidentService, Depends(incident_service)]


class AssignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    assignee: str = Field(min_length=1, max_length=100, description="the principal id of an operator")


class CommentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(
        min_length=1,
        max_length=MAX_COMMENT,
        description="an operational note; never a citizen's personal data (id or phone numbers, e-mail)",
    )


@router.get(
    "/incidents/{incident_id}", summary="One incident: alarms, assignee, escalation, SOP checklist, comments"
)
async def incident_detail(
    incidents: Incidents, incident_id: str = INCIDENT_ID, principal: Principal = READ
) -> dict:
    return await incidents.detail(incident_id)


@router.get(
    "/incidents/{incident_id}/history", summary="Who did what to the incident and its alarms, and when"
)
async def incident_history(
    incidents: Incidents, incident_id: str = INCIDENT_ID, principal: Principal = READ
) -> dict:
    return {"incident_id": incident_id, "items": await incidents.history(incident_id)}


@router.post(
    "/incidents/{incident_id}/assign", summary="Assign or reassign an open incident (supervisors; audited)"
)
async def assign_incident(
    incidents: Incidents,
    body: AssignRequest,
    incident_id: str = INCIDENT_ID,
    principal: Principal = SUPERVISE,
) -> dict:
    return await incidents.assign(incident_id, principal, body.assignee)


@router.post(
    "/incidents/{incident_id}/comments",
    summary="Comment on an incident (operators; audited; no citizen personal data: 422)",
)
async def comment_incident(
    incidents: Incidents, body: CommentRequest, incident_id: str = INCIDENT_ID, principal: Principal = WORK
) -> dict:
    return await incidents.comment(incident_id, principal, body.text)


@router.post(
    "/incidents/{incident_id}/steps/{step_id}",
    summary="Tick off a step of the incident's standard operating procedure (operators; audited; in order)",
)
async def tick_incident_step(
    incidents: Incidents,
    incident_id: str = INCIDENT_ID,
    step_id: str = Path(max_length=64, pattern=r"^[a-z0-9][a-z0-9_\-]*$"),
    principal: Principal = WORK,
) -> dict:
    return await incidents.tick(incident_id, principal, step_id)


class OverrideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(
        min_length=1,
        max_length=MAX_REASON,
        description="why the procedure's missing steps are skipped (audited)",
    )


@router.post(
    "/incidents/{incident_id}/clear-override",
    summary="A supervisor clears an incident before its procedure's mandatory steps, with a reason (audited)",
)
async def clear_incident_over_procedure(
    incidents: Incidents,
    body: OverrideRequest,
    incident_id: str = INCIDENT_ID,
    principal: Principal = SUPERVISE,
) -> dict:
    return await incidents.clear(incident_id, principal, body.reason)


@router.get(
    "/incident-procedures", summary="The standard operating procedures and the escalation ladder (data)"
)
async def incident_procedures(incidents: Incidents, principal: Principal = READ) -> dict[str, Any]:
    return incidents.procedures()


@router.get(
    "/incident-assignees",
    summary="Who incidents can be assigned to (active principals with an operating role)",
)
async def incident_assignees(incidents: Incidents, principal: Principal = READ) -> dict:
    return {"items": await incidents.assignees()}
