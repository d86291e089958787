"""HTTP routes of the drill-down pages (area → asset), the ATSPM charts, the multi-series history and the daily
report. Thin: parse, call :class:`services.city.service.CityService` (``service_assets``), format. Reads need ``city:read``; what an asset's own service
knows is fetched with the caller's own Authorization header (docs/console-assets.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Path, Query, Request

from services.city import service_assets as svc
from services.city.api import READ, City, _aware
from services.city.domain import CITY_SCOPE
from shared.areas import hanoi
from shared.auth import SESSION_COOKIE, ApiError, Principal
from shared.ingest import SaneDate, SaneDatetime

router = APIRouter(prefix="/v1", tags=["city: assets, history, reports"])

AssetKind = Literal["intersection", "kiosk", "feeder", "meter", "agency", "dossier"]
ASSET_ID = Path(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
MAX_SCOPES = 8
MAX_ATSPM = timedelta(days=1)  # the traffic service exports a timeline a day at a time


def _fetcher(request: Request, city: City) -> svc.Fetch:
    """GETs a domain service's JSON with the caller's own credential (its Authorization header, else its session
    cookie)."""
    return city.domain_fetcher(
        authorization=request.headers.get("authorization"), session_id=request.cookies.get(SESSION_COOKIE)
    )


@router.get("/areas/{code}", summary="An area (city, district or commune): KPIs, assets in alarm, incidents")
async def area(city: City, code: str = Path(max_length=32), principal: Principal = READ) -> dict:
    return await city.area_page(code)


@router.get("/assets-in-alarm", summary="Assets (intersections, kiosks, feeders, ...) with open alarms")
async def assets_in_alarm(
    city: City,
    area: str | None = Query(
        None, max_length=32, description="a district or commune code; default: the city"
    ),
    principal: Principal = READ,
) -> dict:
    if area is not None and area != CITY_SCOPE and area not in hanoi().areas:
        raise ApiError(404, "not_found", "no such area", [{"area": area}])
    return {"items": await city.assets_in_alarm(None if area in (None, CITY_SCOPE) else area)}


@router.get(
    "/assets/{kind}/{asset_id}",
    summary="One asset: what its service says of it, its alarms and their history, its area's KPIs",
)
async def asset(
    request: Request, city: City, kind: AssetKind, asset_id: str = ASSET_ID, principal: Principal = READ
) -> dict:
    return await city.asset_page(kind, asset_id, _fetcher(request, city), datetime.now(UTC))


@router.get(
    "/assets/intersection/{asset_id}/atspm",
    summary="ATSPM charts (coordination diagram, split monitor, terminations) from the traffic service's measures",
    responses={502: {"description": "the traffic service did not answer"}},
)
async def intersection_atspm(
    request: Request,
    city: City,
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
    status, body = await city.intersection_atspm(asset_id, start, end, _fetcher(request, city))
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
    city: City,
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
    return await city.multi_series(
        kpi=kpi,
        scopes=scopes,
        start=start,
        end=end,
        step=step,
        window_seconds=window_seconds,
        compare_previous=compare == "previous",
    )


@router.get(
    "/reports/daily", summary="The city's KPIs of one Hanoi day per domain and area, alarms, worst areas"
)
async def daily_report(
    city: City,
    day: SaneDate | None = Query(None, alias="date", description="a Hanoi day; default: yesterday"),
    principal: Principal = READ,
) -> dict:
    if day is None:
        day = (datetime.now(svc.HANOI) - timedelta(days=1)).date()
    return await city.daily_report(day)
