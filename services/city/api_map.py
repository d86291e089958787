"""HTTP routes of the console map: boundaries of the loaded hierarchy and the per-area status of a KPI."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from services.city import service_map
from services.city.api import City
from shared.areas import hanoi, hierarchy_name
from shared.auth import Principal, require_scope

router = APIRouter(prefix="/v1/map", tags=["city"])
READ = Depends(require_scope("city:read"))


@router.get("/areas", summary="The loaded hierarchy's top areas as GeoJSON, with the map's settings")
async def areas(city: City, principal: Principal = READ) -> Response:
    settings = city.settings
    name = hierarchy_name()
    h = hanoi()
    head = {
        "hierarchy": name,
        "level": h.top_level,
        "count": len(h.top_areas),
        "attribution": service_map.attribution(name),
        "tiles": {"url": settings.map_tile_url, "attribution": settings.map_tile_attribution}
        if settings.map_tile_url
        else None,
    }
    # the GeoJSON is serialised once per hierarchy: splice it in rather than parse and re-encode it per request
    body = orjson.dumps(head)[:-1] + b',"geojson":' + service_map.boundaries(name) + b"}"
    return Response(body, media_type="application/json")


@router.get("/status", summary="Per top area: the selected KPI's status, its assets in alarm, open incidents")
async def status(
    city: City,
    kpi: str | None = Query(
        None, max_length=128, description="a KPI id; none: the worst of every KPI and alarm"
    ),
    principal: Principal = READ,
) -> dict:
    return await city.area_status(kpi, datetime.now(UTC))
