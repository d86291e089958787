"""HTTP API of the city layer: current KPIs, history, districts, alarms and incidents, live streams.

Reads need the scope ``city:read``; acknowledging and clearing need ``city:operate`` and an operating role
(``attributes.role``: operator, supervisor or administrator; a leader only watches). The console signs in
(api_auth.py) and its EventSource sends the session cookie; a machine client's EventSource, which cannot set
headers, may use a single-use ``?ticket=`` from ``POST /v1/stream-tickets`` (never a key in a URL). The live
tail serves a topic only to principals whose scopes cover it (:func:`services.city.service.tail_scope`), and
each principal may hold a few streams at once.

A thin adapter: parse the request, call :class:`services.city.service.CityService` (or the incident workflow's
:class:`services.city.service_incidents.IncidentService`), format the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from services.city.alarming import MAX_SHELVE
from services.city.api_incidents import Incidents
from services.city.domain import ACK_ROLES, CITY_SCOPE, CLEAR_ROLES
from services.city.service import CityService, Still
from services.city.service_reliability import MAX_PERIOD_DAYS
from shared.auth import SESSION_COOKIE, ApiError, Principal, SessionWatch, require_scope
from shared.ingest import SaneDate, SaneDatetime

router = APIRouter(prefix="/v1", tags=["city"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
STREAM_KINDS = ("kpi", "alarm", "incident")


def city_service(request: Request) -> CityService:
    """The running service (set by the app's lifespan)."""
    return request.app.state.city_service


City = Annotated[CityService, Depends(city_service)]

READ = Depends(require_scope("city:read"))
READ_SSE = Depends(require_scope("city:read", allow_ticket=True))
ACK = Depends(require_scope("city:operate", ACK_ROLES))
CLEAR = Depends(require_scope("city:operate", CLEAR_ROLES))


# KPIs ------------------------------------------------------------------------------------------------------
@router.get("/kpis/definitions", summary="Every KPI definition (names, unit, windows, thresholds, formula)")
async def kpi_definitions(city: City, principal: Principal = READ) -> dict:
    return {"items": city.kpi_definitions()}


@router.get("/kpis", summary="Current KPI values, filtered by domain, district or scope")
async def current_kpis(
    city: City,
    domain: str | None = Query(None, max_length=24),
    district: str | None = Query(None, max_length=32, description="a district code: its KPIs only"),
    scope_level: Literal["city", "district"] | None = None,
    kpi: str | None = Query(None, max_length=80),
    trend: int = Query(0, ge=0, le=200, description="also return the last N window values (sparklines)"),
    principal: Principal = READ,
) -> dict:
    scope_code = district
    if district is not None:
        scope_level = "district"
    items = await city.current_kpis(
        domain=domain, scope_level=scope_level, scope_code=scope_code, kpi=kpi, trend_points=trend
    )
    return {"items": items}


@router.get("/kpis/{kpi}/history", summary="A KPI's values over a time range (raw windows or roll-ups)")
async def kpi_history(
    city: City,
    kpi: str = Path(max_length=80, pattern=r"^[a-z0-9_.]+$"),
    scope_level: Literal["city", "district"] = "city",
    scope_code: str = Query(CITY_SCOPE, max_length=32),
    start: SaneDatetime | None = Query(None, alias="from", description="default: 24 hours before `to`"),
    end: SaneDatetime | None = Query(None, alias="to", description="default: now"),
    step: Literal["auto", "raw", "minute", "hour", "day"] = "auto",
    window_seconds: int | None = Query(
        None, gt=0, le=400 * 86400, description="default: the KPI's primary window"
    ),
    principal: Principal = READ,
) -> dict:
    end = _aware(end) if end is not None else datetime.now(UTC)
    start = _aware(start) if start is not None else end - timedelta(hours=24)
    if start >= end:
        raise ApiError(
            422,
            "invalid_request",
            "`from` must be before `to`",
            [{"field": "from", "reason": "not before `to`"}],
        )
    return await city.kpi_history(
        kpi=kpi,
        scope_level=scope_level,
        scope_code=scope_code,
        start=start,
        end=end,
        step=step,
        window_seconds=window_seconds,
    )


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@router.get(
    "/reliability",
    summary="IEEE 1366 SAIFI/SAIDI/CAIDI/MAIFI over Hanoi days, with and without Major Event Days (2.5 beta)",
)
async def reliability(
    city: City,
    scope_level: Literal["city", "district"] = "city",
    scope_code: str = Query(CITY_SCOPE, max_length=32),
    # Optional in the schema so that a bad date is reported by name even when the other one is missing.
    first_day: SaneDate | None = Query(
        None, alias="from", description="first Hanoi day of the period (required)"
    ),
    last_day: SaneDate | None = Query(
        None, alias="to", description="last Hanoi day (included); default: `from`"
    ),
    principal: Principal = READ,
) -> dict:
    if first_day is None:
        raise ApiError(422, "invalid_request", "`from` is required", [{"field": "from", "reason": "missing"}])
    last_day = last_day or first_day
    if last_day < first_day or (last_day - first_day).days >= MAX_PERIOD_DAYS:
        raise ApiError(
            422,
            "invalid_request",
            f"`to` must be on or after `from`, at most {MAX_PERIOD_DAYS} days (one T_MED per reporting year)",
            [{"field": "to", "reason": "before `from` or period too long"}],
        )
    return await city.reliability(
        scope_level=scope_level, scope_code=scope_code, first_day=first_day, last_day=last_day
    )


# Districts -------------------------------------------------------------------------------------------------
@router.get(
    "/districts",
    summary="The top areas (30 districts in 2019, 126 communes and wards in 2025) with their status",
)
async def districts(city: City, principal: Principal = READ) -> dict:
    return {"items": await city.districts()}


@router.get("/districts/{code}", summary="One district: its KPIs, the assets in alarm, open incidents")
async def district_detail(city: City, code: str = Path(max_length=32), principal: Principal = READ) -> dict:
    return await city.district(code)


# Alarms and incidents --------------------------------------------------------------------------------------
AlarmFilter = Literal["open", "active", "acknowledged", "cleared", "shelved", "all"]


@router.get("/alarms", summary="Alarms of every domain (one model), most severe first")
async def alarms(
    city: City,
    state: AlarmFilter = "open",
    district: str | None = Query(None, max_length=32),
    domain: str | None = Query(None, max_length=24),
    incident_id: str | None = Query(None, max_length=100),
    limit: int = Query(200, ge=1, le=1000),
    principal: Principal = READ,
) -> dict:
    items = await city.alarms(
        state=state, district=district, domain=domain, incident_id=incident_id, limit=limit
    )
    return {"items": items}


@router.get("/alarms/stats", summary="Alarm rates (EEMUA 191 budget), chattering and most frequent alarms")
async def alarm_stats(
    city: City,
    minutes: int = Query(60, ge=10, le=7 * 24 * 60, description="the period measured, ending now"),
    principal: Principal = READ,
) -> dict:
    return await city.alarm_stats(minutes)


class ShelveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    minutes: int = Field(60, ge=1, le=int(MAX_SHELVE.total_seconds() // 60))
    reason: str = Field("", max_length=200)


@router.post(
    "/alarms/{alarm_id:path}/shelve", summary="Shelve an open alarm for a while (audited; it expires)"
)
async def shelve_alarm(city: City, alarm_id: str, body: ShelveRequest, principal: Principal = ACK) -> dict:
    done = await city.operate(
        [alarm_id], "shelve", principal.id, shelf=timedelta(minutes=body.minutes), reason=body.reason
    )
    return done[0]


@router.post("/alarms/{alarm_id:path}/unshelve", summary="Put a shelved alarm back in the list (audited)")
async def unshelve_alarm(city: City, alarm_id: str, principal: Principal = ACK) -> dict:
    done = await city.operate([alarm_id], "unshelve", principal.id)
    return done[0]


@router.post("/alarms/{alarm_id:path}/acknowledge", summary="Acknowledge an active alarm (audited)")
async def acknowledge_alarm(city: City, alarm_id: str, principal: Principal = ACK) -> dict:
    done = await city.operate([alarm_id], "acknowledge", principal.id)
    return done[0]


@router.post("/alarms/{alarm_id:path}/clear", summary="Clear an active or acknowledged alarm (audited)")
async def clear_alarm(incidents: Incidents, alarm_id: str, principal: Principal = CLEAR) -> dict:
    # Clearing the last open alarm of an incident clears the incident: its procedure gate applies.
    return await incidents.clear_alarm(alarm_id, principal)


@router.get(
    "/incidents",
    summary="Correlated incidents (alarms of one district close in time, across domains) with their workflow",
)
async def incidents(
    incidents: Incidents,
    state: Literal["open", "unacknowledged", "acknowledged", "closed", "all"] = "open",
    district: str | None = Query(None, max_length=32, description="same as `area`"),
    area: str | None = Query(None, max_length=32, description="a district, or a commune/ward of its alarms"),
    domain: str | None = Query(None, max_length=24),
    severity: Literal["critical", "major", "minor", "warning"] | None = None,
    assignee: str | None = Query(
        None, max_length=100, description="a principal id; `none`: unassigned; `me`"
    ),
    limit: int = Query(100, ge=1, le=500),
    principal: Principal = READ,
) -> dict:
    who = {"none": "", "me": principal.id}.get(assignee, assignee) if assignee is not None else None
    items = await incidents.cases(
        state=state, area=area or district, domain=domain, severity=severity, assignee=who, limit=limit
    )
    return {"items": items}


@router.post("/incidents/{incident_id}/acknowledge", summary="Acknowledge every active alarm of an incident")
async def acknowledge_incident(
    city: City, incident_id: str = Path(max_length=100), principal: Principal = ACK
) -> dict:
    return await city.operate_incident(incident_id, "acknowledge", principal)


@router.post(
    "/incidents/{incident_id}/clear",
    summary="Clear every open alarm of an incident (once its procedure's mandatory steps are done)",
)
async def clear_incident(
    incidents: Incidents, incident_id: str = Path(max_length=100), principal: Principal = CLEAR
) -> dict:
    return await incidents.clear(incident_id, principal, None)


# Live stream (SSE) -----------------------------------------------------------------------------------------
@router.post(
    "/stream-tickets",
    summary="A single-use ticket (valid 30 s) for one Server-Sent Events request (EventSource sends no headers)",
)
async def stream_ticket(city: City, principal: Principal = READ) -> dict:
    return await city.stream_ticket(principal)


def _still(request: Request, city: CityService) -> Still:
    """Whether the live stream's client is still connected and (when it signed in) its session still holds."""
    signed_in = SessionWatch(request, city.settings.sse_session_check_seconds)

    async def still() -> bool:
        return not await request.is_disconnected() and await signed_in.holds()

    return still


def _held_stream(items: AsyncIterator[bytes], release: Callable[[], None]) -> AsyncIterator[bytes]:
    async def run() -> AsyncIterator[bytes]:
        try:
            async for chunk in items:
                yield chunk
        finally:
            release()

    return run()


@router.get(
    "/stream",
    summary="Server-Sent Events of KPI updates, alarms and incidents (resumable)",
    response_class=StreamingResponse,
)
async def stream(
    request: Request,
    city: City,
    kinds: str = Query(",".join(STREAM_KINDS), description="comma-separated: kpi, alarm, incident"),
    last_event_id: int | None = Query(None, ge=0, description="resume after this id (else Last-Event-ID)"),
    last_event_header: str | None = Header(None, alias="Last-Event-ID"),
    principal: Principal = READ_SSE,
) -> StreamingResponse:
    wanted = [k for k in kinds.split(",") if k in STREAM_KINDS]
    if not wanted:
        raise ApiError(422, "invalid_request", "kinds must name kpi, alarm or incident", [{"field": "kinds"}])
    after = last_event_id
    if after is None and last_event_header and last_event_header.strip().isdigit():
        after = int(last_event_header.strip())
    release = city.slots.acquire(principal.id)
    return StreamingResponse(
        _held_stream(city.stream_items(after, wanted, _still(request, city)), release),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
        background=BackgroundTask(release),  # also when the stream never started
    )


@router.get("/topics", summary="Topics of the event catalogue this principal may tail (for the live tail)")
async def topics(city: City, principal: Principal = READ) -> dict:
    return {"items": city.tail_topics(principal)}


@router.get(
    "/tail",
    summary="Server-Sent Events: a topic's new records, decoded, with a text filter",
    response_class=StreamingResponse,
)
async def tail(
    request: Request,
    city: City,
    topic: str = Query(max_length=120),
    filter: str | None = Query(
        None, max_length=200, description="case-insensitive text the record must contain"
    ),
    principal: Principal = READ_SSE,
) -> StreamingResponse:
    city.check_tail(principal, topic)
    release = city.slots.acquire(principal.id)
    needle = (filter or "").lower()
    return StreamingResponse(
        _held_stream(city.tail_records(topic, needle, _still(request, city)), release),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
        background=BackgroundTask(release),  # also when the stream never started
    )


# Archive extracts for the console's export buttons -------------------------------------------------------
# The console is served from this origin and its CSP allows only same-origin connections, so the city forwards
# extract requests to the archive service. The caller's own Authorization header is forwarded (never a key in
# a URL, never a service key of the city's): the archive checks ``archive:read`` for that principal and audits
# the extract under its id. Query parameters are validated here as strictly as the archive does.
async def _archive_forward(
    request: Request, city: CityService, path: str, params: dict[str, str]
) -> Response:
    answer = await city.archive_extract(
        path,
        params,
        authorization=request.headers.get("authorization"),
        session_id=request.cookies.get(SESSION_COOKIE),
    )
    return Response(
        answer.content, status_code=answer.status_code, media_type=answer.media_type, headers=answer.headers
    )


ARCHIVE_DOWN: dict[int | str, dict[str, Any]] = {
    502: {"description": "The archive service did not answer (code archive_unavailable)"}
}


@router.get(
    "/exports/archive/topics",
    summary="Archived topics (forwarded to the archive service; needs archive:read too)",
    responses=ARCHIVE_DOWN,
)
async def export_archive_topics(request: Request, city: City, principal: Principal = READ) -> Response:
    return await _archive_forward(request, city, "/v1/archive/topics", {})


@router.get(
    "/exports/archive",
    summary="An archive extract as CSV or Parquet (forwarded to the archive service; needs archive:read too)",
    responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}, **ARCHIVE_DOWN},
)
async def export_archive(
    request: Request,
    city: City,
    topic: str = Query(..., max_length=120, pattern=r"^[a-z0-9][a-z0-9._\-]*$"),
    # required, but declared optional so that a bad date is named even when the other one is missing
    start: SaneDatetime | None = Query(None, alias="from", description="required; RFC 3339 with offset"),
    end: SaneDatetime | None = Query(None, alias="to", description="required; exclusive"),
    area: str | None = Query(None, max_length=32, pattern=r"^[A-Za-z0-9._\-]+$"),
    entity: str | None = Query(None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"),
    format: str = Query("csv", pattern="^(csv|parquet)$"),
    principal: Principal = READ,
) -> Response:
    missing = [{"field": f, "message": "required"} for f, v in (("from", start), ("to", end)) if v is None]
    if start is None or end is None:
        raise ApiError(422, "invalid_request", "from and to are required", missing)
    params = {"topic": topic, "from": start.isoformat(), "to": end.isoformat(), "format": format}
    if area:
        params["area"] = area
    if entity:
        params["entity"] = entity
    return await _archive_forward(request, city, "/v1/archive/extract", params)
