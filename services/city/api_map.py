"""HTTP routes of the console map: boundaries of the loaded hierarchy and the per-area status of a KPI."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from services.city import service_map
from services.city.alarming import level_kpis
from services.city.settings import CitySettings
from shared.areas import hanoi, hierarchy_name
from shared.auth import ApiError, Principal, require_scope
from shared.http import ServiceContext

router = APIRouter(prefix="/v1/map", tags=["city"])
READ = Depends(require_scope("city:read"))
LEVEL_KPIS = level_kpis()


def _ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


@router.get("/areas", summary="The loaded hierarchy's top areas as GeoJSON, with the map's settings")
async def areas(request: Request, principal: Principal = READ) -> Response:
    settings: CitySettings = _ctx(request).settings  # type: ignore[assignment]
    name = hierarchy_name()
    h = hanoi()
    head = {
        "hierarchy": name,
        "level": h.top_level,
        "count": len(h.top_areas),
        "attribution": service_map.DATA_ATTRIBUTION,
        "tiles": {"url": settings.map_tile_url, "attribution": settings.map_tile_attribution}
        if settings.map_tile_url
        else None,
    }
    # the GeoJSON is serialised once per hierarchy: splice it in rather than parse and re-encode it per request
    body = orjson.dumps(head)[:-1] + b',"geojson":' + service_map.boundaries(name) + b"}"
    return Response(body, media_type="application/json")


@router.get("/status", summary="Per top area: the selected KPI's status, its assets in alarm, open incidents")
async def status(
    request: Request,
    kpi: str | None = Query(
        None, max_length=128, description="a KPI id; none: the worst of every KPI and alarm"
    ),
    principal: Principal = READ,
) -> dict:
    ctx = _ctx(request)
    definition = None
    if kpi is not None:
        definition = ctx.extras["definitions"].get(kpi)
        if definition is None:
            raise ApiError(404, "not_found", "no such KPI", [{"kpi": kpi}])
    return await service_map.area_status(
        ctx.pool,
        codes=[a.code for a in hanoi().top_areas],
        kpi=definition,
        level_kpi=kpi in LEVEL_KPIS,
        now=datetime.now(UTC),
    )
