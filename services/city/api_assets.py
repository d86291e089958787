"""HTTP routes of the drill-down pages (area → asset), the ATSPM charts, the multi-series history and the daily
report. Thin: parse, call ``service_assets``, format. Reads need ``city:read``; what an asset's own service
knows is fetched with the caller's own Authorization header (docs/console-assets.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request

from services.city import service_assets as svc
from services.city.api import READ, _aware, _ctx, _definitions, _settings, _with_definition, _with_windows
from services.city.domain import CITY_SCOPE, choose_step
from shared.areas import hanoi
from shared.auth import SESSION_COOKIE, ApiError, Principal
from shared.ingest import SaneDate, SaneDatetime

router = APIRouter(prefix="/v1", tags=["city: assets, history, reports"])

AssetKind = Literal["intersection", "kiosk", "feeder", "meter", "agency", "dossier"]
ASSET_ID = Path(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
MAX_SCOPES = 8
MAX_ATSPM = timedelta(days=1)  # the traffic service exports a timeline a day at a time


def _fetcher(request: Request) -> svc.Fetch:
    """GET a domain service's JSON with the caller's own credential (its Authorization header, else its session
    cookie): (status, body); 502 when it does not answer."""
    import httpx

    settings = _settings(request)
    bases = {"traffic": settings.traffic_url, "kiosk": settings.kiosk_url, "dossier": settings.dossier_url}
    authorization = request.headers.get("authorization")
    headers = {"Authorization": authorization} if authorization else {}
    session_id = request.cookies.get(SESSION_COOKIE)
    if not authorization and session_id:  # a signed-in operator: the domain services check the same session
        headers["Cookie"] = f"{SESSION_COOKIE}={session_id}"

    async def fetch(service: str, path: str, params: dict[str, str]) -> tuple[int, Any]:
        url = bases[service].rstrip("/") + path
        try:
            async with httpx.AsyncClient(timeout=settings.domain_timeout_seconds) as client:
                r = await client.get(url, params=params, headers=headers)
        except httpx.HTTPError as exc:
            return 502, {"error": {"code": f"{service}_unavailable", "message": type(exc).__name__}}
        try:
            body = r.json()
        except ValueError:
            return 502, {"error": {"code": f"{service}_unavailable", "message": "not JSON"}}
        return r.status_code, body

    return fetch


@router.get("/areas/{code}", summary="An area (city, district or commune): KPIs, assets in alarm, incidents")
async def area(request: Request, code: str = Path(max_length=32), principal: Principal = READ) -> dict:
    pool = _ctx(request).pool
    page = await svc.area_page(pool, code, _definitions(request))
    if page is None:
        raise ApiError(404, "not_found", "no such area", [{"area": code}])
    await _with_windows(pool, page["kpis"])
    defs = _definitions(request)
    page["kpis"] = [_with_definition(r, defs) for r in page["kpis"]]
    return page


@router.get("/assets-in-alarm", summary="Assets (intersections, kiosks, feeders, ...) with open alarms")
async def assets_in_alarm(
    request: Request,
    area: str | None = Query(
        None, max_length=32, description="a district or commune code; default: the city"
    ),
    principal: Principal = READ,
) -> dict:
    if area is not None and area != CITY_SCOPE and area not in hanoi().areas:
        raise ApiError(404, "not_found", "no such area", [{"area": area}])
    return {
        "items": await svc.assets_in_alarm(_ctx(request).pool, None if area in (None, CITY_SCOPE) else area)
    }


@router.get(
    "/assets/{kind}/{asset_id}",
    summary="One asset: what its service says of it, its alarms and their history, its area's KPIs",
)
async def asset(
    request: Request, kind: AssetKind, asset_id: str = ASSET_ID, principal: Principal = READ
) -> dict:
    pool = _ctx(request).pool
    page = await svc.asset_page(pool, kind, asset_id, _fetcher(request), datetime.now(UTC))
    await _with_windows(pool, page["kpis"])
    defs = _definitions(request)
    page["kpis"] = [_with_definition(r, defs) for r in page["kpis"]]
    return page


@router.get(
    "/assets/intersection/{asset_id}/atspm",
    summary="ATSPM charts (coordination diagram, split monitor, terminations) from the traffic service's measures",
    responses={502: {"description": "the traffic service did not answer"}},
)
async def intersection_atspm(
    request: Request,
    asset_id: str = ASSET_ID,
    start: SaneDatetime | None = Query(None, alias="from", description="default: 6 hours before `to`"),
    end: SaneDatetime | None = Query(
        None, alias="to", description="default: now; at most 1 day after `from`"
    ),
    principal: Principal = READ,
) -> dict:
    end = _aware(end) if end is not None else datetime.now(UTC)
    start = _aware(start) if start is not None else end - timedelta(hours=6)
    if start >= end or end - start > MAX_ATSPM:
        raise ApiError(
            422,
            "invalid_request",
            "`from` must be before `to`, at most 1 day apart",
            [{"field": "to", "reason": "not after `from` or more than 1 day after it"}],
        )
    status, body = await svc.intersection_atspm(asset_id, start, end, _fetcher(request))
    if status != 200:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise ApiError(
            status if status in (401, 403, 404, 422) else 502,
            error.get("code", "traffic_unavailable"),
            f"the traffic service answered {status}: {error.get('message', '')}".strip(),
        )
    return body


@router.get(
    "/history",
    summary="One KPI for several areas on one chart, optionally against the previous period, with its thresholds",
)
async def history(
    request: Request,
    kpi: str = Query(max_length=80, pattern=r"^[a-z0-9_.]+$"),
    scope: list[str] = Query([CITY_SCOPE], description="area codes (HN: the city), up to 8"),
    start: SaneDatetime | None = Query(None, alias="from", description="default: 24 hours before `to`"),
    end: SaneDatetime | None = Query(None, alias="to", description="default: now"),
    step: Literal["auto", "raw", "minute", "hour", "day"] = "auto",
    compare: Literal["none", "previous"] = Query("none", description="previous: also the period just before"),
    window_seconds: int | None = Query(None, gt=0, le=400 * 86400, description="default: the primary window"),
    principal: Principal = READ,
) -> dict:
    end = _aware(end) if end is not None else datetime.now(UTC)
    start = _aware(start) if start is not None else end - timedelta(hours=24)
    if start >= end:
        raise ApiError(422, "invalid_request", "`from` must be before `to`", [{"field": "from"}])
    scopes = list(dict.fromkeys(scope))
    if len(scopes) > MAX_SCOPES:
        raise ApiError(422, "invalid_request", f"at most {MAX_SCOPES} areas", [{"field": "scope"}])
    unknown = [s for s in scopes if s not in hanoi().areas]
    if unknown:
        raise ApiError(
            422,
            "invalid_request",
            "unknown area code",
            [{"field": "scope", "value": s, "reason": "no such area"} for s in unknown],
        )
    definition = _definitions(request).get(kpi)
    if definition is None and window_seconds is None:
        raise ApiError(404, "not_found", "no such KPI", [{"kpi": kpi}])
    window = window_seconds or definition.windows[0]  # type: ignore[union-attr]
    chosen = choose_step(start, end) if step == "auto" else step
    return await svc.multi_series(
        _ctx(request).pool, definition, kpi, scopes, start, end, chosen, window, compare == "previous"
    )


@router.get(
    "/reports/daily", summary="The city's KPIs of one Hanoi day per domain and area, alarms, worst areas"
)
async def daily_report(
    request: Request,
    day: SaneDate | None = Query(None, alias="date", description="a Hanoi day; default: yesterday"),
    principal: Principal = READ,
) -> dict:
    if day is None:
        day = (datetime.now(svc.HANOI) - timedelta(days=1)).date()
    return await svc.daily_report(_ctx(request).pool, day, _definitions(request))
