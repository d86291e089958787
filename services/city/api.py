"""HTTP API of the city layer: current KPIs, history, districts, alarms and incidents, live streams.

Reads need the scope ``city:read``; acknowledging and clearing need ``city:operate`` and an operating role
(``attributes.role``: operator, supervisor or administrator; a leader only watches). The console signs in
(api_auth.py) and its EventSource sends the session cookie; a machine client's EventSource, which cannot set
headers, may use a single-use ``?ticket=`` from ``POST /v1/stream-tickets`` (never a key in a URL). The live
tail serves a topic only to principals whose scopes cover it (:func:`tail_scope`), and each principal may
hold a few streams at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from services.city import repository as repo
from services.city.alarming import BUDGET_PER_10_MINUTES, MAX_SHELVE, level_kpis, rate_per_10_minutes
from services.city.api_incidents import incident_service
from services.city.domain import (
    ACK_ROLES,
    CITY_SCOPE,
    CLEAR_ROLES,
    choose_step,
    worst_status,
)
from services.city.reliability import MAX_PERIOD_DAYS, reliability_report
from services.city.settings import CitySettings
from services.city.store import CityStore
from shared.areas import CITY_CODE, hanoi
from shared.auth import SESSION_COOKIE, ApiError, Principal, SessionWatch, issue_stream_ticket, require_scope
from shared.contracts import TOPICS, TopicSpec
from shared.contracts.cloudevents import EventDecodeError, decode
from shared.http import ServiceContext
from shared.ingest import SaneDate, SaneDatetime
from shared.kpis import KpiDefinition

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["city"])

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
STREAM_KINDS = ("kpi", "alarm", "incident")


def _ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


READ = Depends(require_scope("city:read"))
READ_SSE = Depends(require_scope("city:read", allow_ticket=True))
ACK = Depends(require_scope("city:operate", ACK_ROLES))
CLEAR = Depends(require_scope("city:operate", CLEAR_ROLES))

LEVEL_KPIS = level_kpis()


def _definitions(request: Request) -> dict[str, KpiDefinition]:
    return _ctx(request).extras["definitions"]


def _store(request: Request) -> CityStore:
    return _ctx(request).extras["store"]


def _settings(request: Request) -> CitySettings:
    return _ctx(request).settings  # type: ignore[return-value]


def _definition_body(d: KpiDefinition) -> dict[str, Any]:
    body = d.model_dump(mode="json")
    # A level KPI (things in fault now) is shown and judged on its running window (services/city/alarm_rules.yaml)
    body["level"] = d.id in LEVEL_KPIS
    return body


def _with_definition(row: dict[str, Any], defs: dict[str, KpiDefinition]) -> dict[str, Any]:
    d = defs.get(row["kpi"])
    row["name"] = d.name.model_dump() if d is not None else {"vi": row["kpi"], "en": row["kpi"]}
    row["direction"] = d.direction if d is not None else "none"
    row["headline"] = d.headline if d is not None else False
    row["thresholds"] = d.thresholds.model_dump() if d is not None else {"warning": None, "critical": None}
    return row


# KPIs ------------------------------------------------------------------------------------------------------
@router.get("/kpis/definitions", summary="Every KPI definition (names, unit, windows, thresholds, formula)")
async def kpi_definitions(request: Request, principal: Principal = READ) -> dict:
    return {
        "items": [_definition_body(d) for d in sorted(_definitions(request).values(), key=lambda d: d.id)]
    }


@router.get("/kpis", summary="Current KPI values, filtered by domain, district or scope")
async def current_kpis(
    request: Request,
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
    rows = await repo.current_kpis(
        _ctx(request).pool,
        domain=domain,
        scope_level=scope_level,
        scope_code=scope_code,
        kpi=kpi,
        trend_points=trend,
    )
    defs = _definitions(request)
    await _with_windows(_ctx(request).pool, rows)
    return {"items": [_with_definition(r, defs) for r in rows]}


async def _with_windows(pool: Any, rows: list[dict[str, Any]]) -> None:
    """Mark each current value running (its window still filling) or complete; give a running one the last
    complete window of its series (``complete``), which is what tiles show first."""
    now = datetime.now(UTC)
    running = []
    for r in rows:
        r["running"] = r["window_start"] + timedelta(seconds=r["window_seconds"]) > now
        r["complete"] = None if r["running"] else {k: r[k] for k in ("window_start", "value", "status")}
        if r["running"]:
            running.append((r["kpi"], r["scope_level"], r["scope_code"], r["window_seconds"]))
    found = await repo.last_complete_values(pool, running, now)
    for r in rows:
        if r["running"]:
            r["complete"] = found.get((r["kpi"], r["scope_level"], r["scope_code"], r["window_seconds"]))


@router.get("/kpis/{kpi}/history", summary="A KPI's values over a time range (raw windows or roll-ups)")
async def kpi_history(
    request: Request,
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
    pool = _ctx(request).pool
    definition = _definitions(request).get(kpi)
    if window_seconds is None:
        windows = await repo.series_windows(pool, kpi, scope_level, scope_code)
        if definition is not None and (not windows or definition.windows[0] in windows):
            window_seconds = definition.windows[0]
        elif windows:
            window_seconds = windows[0]
        else:
            raise ApiError(
                404,
                "not_found",
                "no values for this KPI and scope",
                [{"kpi": kpi, "scope_level": scope_level, "scope_code": scope_code}],
            )
    chosen = choose_step(start, end) if step == "auto" else step
    points = await repo.kpi_history(
        pool,
        kpi=kpi,
        scope_level=scope_level,
        scope_code=scope_code,
        window_seconds=window_seconds,
        start=start,
        end=end,
        step=chosen,
    )
    return {
        "kpi": kpi,
        "scope_level": scope_level,
        "scope_code": scope_code,
        "window_seconds": window_seconds,
        "step": chosen,
        "from": start,
        "to": end,
        "unit": definition.unit if definition else None,
        "points": points,
    }


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@router.get(
    "/reliability",
    summary="IEEE 1366 SAIFI/SAIDI/CAIDI/MAIFI over Hanoi days, with and without Major Event Days (2.5 beta)",
)
async def reliability(
    request: Request,
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
    return await reliability_report(
        _ctx(request).pool,
        scope_level=scope_level,
        scope_code=scope_code,
        first_day=first_day,
        last_day=last_day,
    )


# Districts -------------------------------------------------------------------------------------------------
@router.get(
    "/districts",
    summary="The top areas (30 districts in 2019, 126 communes and wards in 2025) with their status",
)
async def districts(request: Request, principal: Principal = READ) -> dict:
    statuses = await repo.district_statuses(_ctx(request).pool)
    items = []
    for a in sorted(hanoi().districts, key=lambda a: a.code):
        s = statuses.get(a.code, {"statuses": [], "severities": []})
        items.append(
            {
                "code": a.code,
                "name": a.name,
                "kind": a.kind,
                # The colour follows the open alarms (managed: judged on settled windows, with delays and
                # deadbands), not the raw status of every filling window: ok when KPIs arrive and none is open.
                "status": worst_status(["ok"] if s["statuses"] else [], s["severities"]),
                "open_alarms": len(s["severities"]),
                "kpis_warning": s["statuses"].count("warning"),
                "kpis_critical": s["statuses"].count("critical"),
            }
        )
    return {"items": items}


@router.get("/districts/{code}", summary="One district: its KPIs, the assets in alarm, open incidents")
async def district_detail(
    request: Request, code: str = Path(max_length=32), principal: Principal = READ
) -> dict:
    area = hanoi().areas.get(code)
    if area is None or area.parent != CITY_CODE:  # a top area: a district (2019), a commune or ward (2025)
        raise ApiError(404, "not_found", "no such district", [{"district": code}])
    pool = _ctx(request).pool
    defs = _definitions(request)
    rows = await repo.current_kpis(pool, scope_level="district", scope_code=code, trend_points=12)
    await _with_windows(pool, rows)
    kpis = [_with_definition(r, defs) for r in rows]
    alarms = await repo.list_alarms(pool, states=("active", "acknowledged"), district=code, shelved=False)
    incidents = await repo.list_incidents(pool, state="open", district=code)
    return {
        "code": area.code,
        "name": area.name,
        "kind": area.kind,
        "status": worst_status(["ok"] if kpis else [], [a["severity"] for a in alarms]),
        "kpis": kpis,
        "alarms": alarms,
        "incidents": incidents,
    }


# Alarms and incidents --------------------------------------------------------------------------------------
AlarmFilter = Literal["open", "active", "acknowledged", "cleared", "shelved", "all"]
_STATES = {
    "shelved": ("active", "acknowledged"),
    "open": ("active", "acknowledged"),
    "active": ("active",),
    "acknowledged": ("acknowledged",),
    "cleared": ("cleared",),
    "all": ("active", "acknowledged", "cleared"),
}


@router.get("/alarms", summary="Alarms of every domain (one model), most severe first")
async def alarms(
    request: Request,
    state: AlarmFilter = "open",
    district: str | None = Query(None, max_length=32),
    domain: str | None = Query(None, max_length=24),
    incident_id: str | None = Query(None, max_length=100),
    limit: int = Query(200, ge=1, le=1000),
    principal: Principal = READ,
) -> dict:
    items = await repo.list_alarms(
        _ctx(request).pool,
        states=_STATES[state],
        district=district,
        domain=domain,
        incident_id=incident_id,
        limit=limit,
        # open/active/acknowledged leave shelved alarms out (until their shelf expires); "shelved" lists them
        shelved=True
        if state == "shelved"
        else (False if state in ("open", "active", "acknowledged") else None),
    )
    return {"items": items}


@router.get("/alarms/stats", summary="Alarm rates (EEMUA 191 budget), chattering and most frequent alarms")
async def alarm_stats(
    request: Request,
    minutes: int = Query(60, ge=10, le=7 * 24 * 60, description="the period measured, ending now"),
    principal: Principal = READ,
) -> dict:
    since = datetime.now(UTC) - timedelta(minutes=minutes)
    rates = await repo.alarm_rates(_ctx(request).pool, since)
    return {
        "minutes": minutes,
        "from": since,
        **rates,
        "per_10_minutes": rate_per_10_minutes(rates["annunciated"], minutes),
        "budget_per_10_minutes": BUDGET_PER_10_MINUTES,
    }


class ShelveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    minutes: int = Field(60, ge=1, le=int(MAX_SHELVE.total_seconds() // 60))
    reason: str = Field("", max_length=200)


@router.post(
    "/alarms/{alarm_id:path}/shelve", summary="Shelve an open alarm for a while (audited; it expires)"
)
async def shelve_alarm(
    request: Request, alarm_id: str, body: ShelveRequest, principal: Principal = ACK
) -> dict:
    done = await _store(request).operate(
        [alarm_id], "shelve", principal.id, shelf=timedelta(minutes=body.minutes), reason=body.reason
    )
    return done[0]


@router.post("/alarms/{alarm_id:path}/unshelve", summary="Put a shelved alarm back in the list (audited)")
async def unshelve_alarm(request: Request, alarm_id: str, principal: Principal = ACK) -> dict:
    done = await _store(request).operate([alarm_id], "unshelve", principal.id)
    return done[0]


@router.post("/alarms/{alarm_id:path}/acknowledge", summary="Acknowledge an active alarm (audited)")
async def acknowledge_alarm(request: Request, alarm_id: str, principal: Principal = ACK) -> dict:
    done = await _store(request).operate([alarm_id], "acknowledge", principal.id)
    return done[0]


@router.post("/alarms/{alarm_id:path}/clear", summary="Clear an active or acknowledged alarm (audited)")
async def clear_alarm(request: Request, alarm_id: str, principal: Principal = CLEAR) -> dict:
    # Clearing the last open alarm of an incident clears the incident: its procedure gate applies.
    service = incident_service(request)
    gate = await service.gate_alarm_clear(alarm_id, principal)
    done = await _store(request).operate([alarm_id], "clear", principal.id)
    if gate is not None and done[0].get("incident_id"):
        await service.record_clear(done[0]["incident_id"], principal, gate)
    return done[0]


@router.get(
    "/incidents",
    summary="Correlated incidents (alarms of one district close in time, across domains) with their workflow",
)
async def incidents(
    request: Request,
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
    items = await incident_service(request).cases(
        state=state, area=area or district, domain=domain, severity=severity, assignee=who, limit=limit
    )
    return {"items": items}


async def _operate_incident(request: Request, incident_id: str, action: str, principal: Principal) -> dict:
    pool = _ctx(request).pool
    assert pool is not None  # the app connects its pool before it serves (shared/http.py lifespan)
    async with pool.acquire() as conn:
        ids = await repo.incident_alarm_ids(conn, incident_id)
    if ids is None:
        raise ApiError(404, "not_found", "no such incident", [{"incident_id": incident_id}])
    if action == "acknowledge":
        current = await repo.list_alarms(pool, states=("active",), incident_id=incident_id, limit=1000)
        ids = [a["alarm_id"] for a in current]
    done = await _store(request).operate(ids, action, principal.id, target=incident_id) if ids else []
    return {"incident_id": incident_id, "alarms": done}


@router.post("/incidents/{incident_id}/acknowledge", summary="Acknowledge every active alarm of an incident")
async def acknowledge_incident(
    request: Request, incident_id: str = Path(max_length=100), principal: Principal = ACK
) -> dict:
    return await _operate_incident(request, incident_id, "acknowledge", principal)


@router.post(
    "/incidents/{incident_id}/clear",
    summary="Clear every open alarm of an incident (once its procedure's mandatory steps are done)",
)
async def clear_incident(
    request: Request, incident_id: str = Path(max_length=100), principal: Principal = CLEAR
) -> dict:
    return await incident_service(request).clear(_store(request), incident_id, principal, None)


# Live stream (SSE) -----------------------------------------------------------------------------------------
@router.post(
    "/stream-tickets",
    summary="A single-use ticket (valid 30 s) for one Server-Sent Events request (EventSource sends no headers)",
)
async def stream_ticket(request: Request, principal: Principal = READ) -> dict:
    from shared.auth import STREAM_TICKET_SECONDS

    ticket = await issue_stream_ticket(_ctx(request).pool, principal)
    return {"ticket": ticket, "expires_in": STREAM_TICKET_SECONDS}


class StreamSlots:
    """Concurrent Server-Sent Events streams (stream and tail) per principal and in all: a principal over its
    share gets 429, the service over its total 503, both with Retry-After, so no caller can hold them all."""

    def __init__(self, per_principal: int, total: int):
        self.per_principal = per_principal
        self.total = total
        self.held: dict[str, int] = {}

    def acquire(self, principal_id: str) -> Callable[[], None]:
        if sum(self.held.values()) >= self.total:
            raise ApiError(
                503,
                "too_many_streams",
                "the service holds its maximum of live streams; retry later",
                headers={"Retry-After": "5"},
            )
        if self.held.get(principal_id, 0) >= self.per_principal:
            raise ApiError(
                429,
                "too_many_streams",
                f"this principal already holds {self.per_principal} live streams; close one first",
                headers={"Retry-After": "5"},
            )
        self.held[principal_id] = self.held.get(principal_id, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = self.held.get(principal_id, 1) - 1
                if left > 0:
                    self.held[principal_id] = left
                else:
                    self.held.pop(principal_id, None)

        return release


def _slots(request: Request) -> StreamSlots:
    extras = _ctx(request).extras
    slots = extras.get("stream_slots")
    if slots is None:
        settings = _settings(request)
        slots = extras["stream_slots"] = StreamSlots(
            getattr(settings, "sse_max_streams_per_principal", 4), getattr(settings, "sse_max_streams", 64)
        )
    return slots


def _held_stream(items: AsyncIterator[bytes], release: Callable[[], None]) -> AsyncIterator[bytes]:
    async def run() -> AsyncIterator[bytes]:
        try:
            async for chunk in items:
                yield chunk
        finally:
            release()

    return run()


def _sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: ".encode() + orjson.dumps(data, default=str) + b"\n\n"


@router.get(
    "/stream",
    summary="Server-Sent Events of KPI updates, alarms and incidents (resumable)",
    response_class=StreamingResponse,
)
async def stream(
    request: Request,
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
    release = _slots(request).acquire(principal.id)
    return StreamingResponse(
        _held_stream(_stream_items(request, after, wanted), release),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
        background=BackgroundTask(release),  # also when the stream never started
    )


async def _stream_items(request: Request, after: int | None, kinds: list[str]) -> AsyncIterator[bytes]:
    ctx = _ctx(request)
    settings = _settings(request)
    store = _store(request)
    lo, hi = await repo.stream_bounds(ctx.pool)
    yield b"retry: 1000\n\n"
    if after is None:
        after = hi
    elif lo > 0 and after < lo - 1:
        yield _sse("reset", {"reason": "items after this id were deleted by retention; reload"})
    yield _sse("hello", {"after": after})
    started = last_sent = time.monotonic()
    signed_in = SessionWatch(request, settings.sse_session_check_seconds)
    while True:
        head_before = store.hub.head
        rows = await repo.stream_after(ctx.pool, after, kinds)
        for r in rows:
            yield _sse(r["kind"], r["payload"], r["seq"])
            after = r["seq"]
        if rows:
            last_sent = time.monotonic()
            if len(rows) >= 500:
                continue
        now = time.monotonic()
        if now - started > settings.sse_max_seconds or await request.is_disconnected():
            return
        if not await signed_in.holds():  # signed out or expired: the console shows the sign-in form
            return
        if now - last_sent > settings.sse_heartbeat_seconds:
            yield b": keep-alive\n\n"
            last_sent = now
        await store.hub.wait(max(after, head_before), settings.sse_poll_seconds)


def tail_scope(topic: TopicSpec) -> str:
    """The scope a principal needs to tail ``topic``: the city's figures (every domain's KPIs and alarms, the
    city's own topics) are ``city:read``; a domain's entity streams need that domain's ``<owner>:read``; the
    platform's (audit trail, dead letters of every topic) ``platform:read``."""
    if topic.owner == "city" or topic.name.endswith((".kpis", ".alarms")):
        return "city:read"
    return f"{topic.owner}:read"


def may_tail(principal: Principal, topic: TopicSpec) -> bool:
    if topic.internal or not principal.has_scope(tail_scope(topic)):
        return False
    # A principal confined to one agency never sees other agencies' dossier events.
    confined = principal.kind == "agency" or principal.attributes.get("agency") is not None
    return not (confined and topic.owner == "dossier" and tail_scope(topic) != "city:read")


@router.get("/topics", summary="Topics of the event catalogue this principal may tail (for the live tail)")
async def topics(principal: Principal = READ) -> dict:
    return {
        "items": [
            {"name": t.name, "owner": t.owner, "description": t.description, "scope": tail_scope(t)}
            for t in sorted(TOPICS.values(), key=lambda t: t.name)
            if may_tail(principal, t)
        ]
    }


@router.get(
    "/tail",
    summary="Server-Sent Events: a topic's new records, decoded, with a text filter",
    response_class=StreamingResponse,
)
async def tail(
    request: Request,
    topic: str = Query(max_length=120),
    filter: str | None = Query(
        None, max_length=200, description="case-insensitive text the record must contain"
    ),
    principal: Principal = READ_SSE,
) -> StreamingResponse:
    spec = TOPICS.get(topic)
    if spec is None:
        raise ApiError(404, "not_found", "no such topic in the catalogue", [{"topic": topic}])
    if not may_tail(principal, spec):
        raise ApiError(
            403,
            "forbidden",
            f"tailing {topic} needs the scope {tail_scope(spec)!r} (and no agency confinement for dossier events)",
            [{"field": "topic", "reason": "not readable by this principal"}],
        )
    release = _slots(request).acquire(principal.id)
    return StreamingResponse(
        _held_stream(_tail_records(request, topic, (filter or "").lower()), release),
        media_type="text/event-stream",
        headers=SSE_HEADERS,
        background=BackgroundTask(release),  # also when the stream never started
    )


async def _tail_records(request: Request, topic: str, needle: str) -> AsyncIterator[bytes]:
    settings = _settings(request)
    consumer = AIOKafkaConsumer(
        **settings.kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=200,
    )
    started_ms = int(time.time() * 1000)
    try:
        await consumer.start()
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer._client.force_metadata_update()  # no public way to refresh metadata
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        yield b"retry: 2000\n\n"
        yield _sse("hello", {"topic": topic, "partitions": len(tps)})
        started = last_sent = time.monotonic()
        signed_in = SessionWatch(request, settings.sse_session_check_seconds)
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=500)
            for recs in batch.values():
                for r in recs:
                    # The embedded broker's "latest" offset can be stale: skip records older than the tail.
                    if r.timestamp is not None and r.timestamp < started_ms - 2000:
                        continue
                    item = _tail_item(r)
                    if needle and needle not in orjson.dumps(item).decode().lower():
                        continue
                    yield _sse("record", item)
                    last_sent = time.monotonic()
            now = time.monotonic()
            if now - started > settings.sse_max_seconds or await request.is_disconnected():
                return
            if not await signed_in.holds():
                return
            if now - last_sent > settings.sse_heartbeat_seconds:
                yield b": keep-alive\n\n"
                last_sent = now
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # tell the console and end the stream; it reconnects
        log.warning("tail of %s failed: %s", topic, type(exc).__name__)
        yield _sse("error", {"reason": f"broker error: {type(exc).__name__}"})
    finally:
        await consumer.stop()


def _tail_item(record: Any) -> dict[str, Any]:
    base = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
    }
    try:
        ev = decode(record)
    except EventDecodeError as exc:
        return {**base, "error": exc.reason}
    return {
        **base,
        "type": ev.type,
        "source": ev.source,
        "id": ev.id,
        "time": ev.time,
        "subject": ev.subject,
        "key": ev.key,
        "data": ev.data,
    }


# Archive extracts for the console's export buttons -------------------------------------------------------
# The console is served from this origin and its CSP allows only same-origin connections, so the city forwards
# extract requests to the archive service. The caller's own Authorization header is forwarded (never a key in
# a URL, never a service key of the city's): the archive checks ``archive:read`` for that principal and audits
# the extract under its id. Query parameters are validated here as strictly as the archive does.
ARCHIVE_MEDIA = (
    "text/csv",
    "application/vnd.apache.parquet",
    "application/json",
    "application/problem+json",
)


async def _archive_forward(request: Request, path: str, params: dict[str, str]) -> Response:
    import httpx

    authorization = request.headers.get("authorization")
    url = _settings(request).archive_url.rstrip("/") + path
    headers = {"Authorization": authorization} if authorization else {}
    session_id = request.cookies.get(SESSION_COOKIE)
    if not authorization and session_id:  # a signed-in operator: the archive checks the same session
        headers["Cookie"] = f"{SESSION_COOKIE}={session_id}"
    try:
        async with httpx.AsyncClient(timeout=_settings(request).archive_timeout_seconds) as client:
            r = await client.get(url, params=params, headers=headers)
    except httpx.HTTPError as exc:
        raise ApiError(
            502, "archive_unavailable", f"the archive service did not answer: {type(exc).__name__}"
        ) from None
    media = r.headers.get("content-type", "application/octet-stream")
    if not media.startswith(ARCHIVE_MEDIA):
        raise ApiError(502, "archive_unavailable", "the archive service answered with an unexpected type")
    keep = {k: r.headers[k] for k in ("content-disposition", "x-row-count", "retry-after") if k in r.headers}
    return Response(r.content, status_code=r.status_code, media_type=media, headers=keep)


ARCHIVE_DOWN: dict[int | str, dict[str, Any]] = {
    502: {"description": "The archive service did not answer (code archive_unavailable)"}
}


@router.get(
    "/exports/archive/topics",
    summary="Archived topics (forwarded to the archive service; needs archive:read too)",
    responses=ARCHIVE_DOWN,
)
async def export_archive_topics(request: Request, principal: Principal = READ) -> Response:
    return await _archive_forward(request, "/v1/archive/topics", {})


@router.get(
    "/exports/archive",
    summary="An archive extract as CSV or Parquet (forwarded to the archive service; needs archive:read too)",
    responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}, **ARCHIVE_DOWN},
)
async def export_archive(
    request: Request,
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
    return await _archive_forward(request, "/v1/archive/extract", params)
