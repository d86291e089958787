"""Use cases of the console map: the loaded hierarchy's boundaries, and per area the status of a KPI, its assets
in alarm and its open incidents (docs/console-map.md)."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

import asyncpg
import orjson

from services.city import repository as repo
from services.city.domain import worst_status
from shared.areas import boundaries_path, load_named
from shared.kpis import KpiDefinition


@lru_cache(maxsize=4)
def attribution(name: str) -> str:
    """The credit the named hierarchy's boundaries ask for (their licence, shared/data/README.md), which the
    GeoJSON file carries with it."""
    return str(orjson.loads(boundaries_path(name).read_bytes())["attribution"])


@lru_cache(maxsize=4)
def boundaries(name: str) -> bytes:
    """The GeoJSON of the named hierarchy's top areas, with each area's name and level (read once)."""
    doc = orjson.loads(boundaries_path(name).read_bytes())
    areas = load_named(name).areas
    for f in doc["features"]:
        area = areas[f["properties"]["code"]]
        f["properties"] |= {"name": area.name, "level": area.level, "kind": area.kind}
    return orjson.dumps(doc)


def _status_of(row: dict[str, Any], complete: dict[str, Any] | None, level: bool) -> tuple[str, Any]:
    """The tile rule: a level KPI shows its running window first, any other its last complete window."""
    shown = row if (level or not row["running"]) else complete
    if shown is None:
        return "unknown", None
    return shown["status"], shown["value"]


async def area_status(
    pool: asyncpg.Pool,
    *,
    codes: list[str],
    kpi: KpiDefinition | None,
    level_kpi: bool,
    now: datetime,
) -> dict[str, Any]:
    """Per top area: its colour (the selected KPI's status, or without one the districts' rule: the worst of
    its KPI statuses and open alarms), the assets in alarm and the open incidents."""
    alarms = await repo.list_alarms(pool, states=("active", "acknowledged"), shelved=False, limit=2000)
    incidents = await repo.list_incidents(pool, state="open", limit=500)
    known = set(codes)
    out: dict[str, dict[str, Any]] = {
        c: {"status": "unknown", "value": None, "open_alarms": 0} for c in codes
    }
    for a in alarms:
        if a["district"] in known:
            out[a["district"]]["open_alarms"] += 1
    if kpi is None:
        statuses = await repo.district_statuses(pool)
        for code, s in statuses.items():
            if code in out:
                out[code]["status"] = worst_status(["ok"] if s["statuses"] else [], s["severities"])
    else:
        window = kpi.windows[0]
        rows = [
            r
            for r in await repo.current_kpis(pool, scope_level="district", kpi=kpi.id)
            if r["window_seconds"] == window and r["scope_code"] in known
        ]
        for r in rows:
            r["running"] = r["window_start"].timestamp() + r["window_seconds"] > now.timestamp()
        series = [(r["kpi"], "district", r["scope_code"], window) for r in rows if r["running"]]
        complete = await repo.last_complete_values(pool, series, now)
        for r in rows:
            status, value = _status_of(
                r, complete.get((r["kpi"], "district", r["scope_code"], window)), level_kpi
            )
            out[r["scope_code"]] |= {"status": status, "value": value}
    return {
        "kpi": kpi.id if kpi is not None else None,
        "window_seconds": kpi.windows[0] if kpi is not None else None,
        "areas": out,
        "assets": [
            {
                k: a[k]
                for k in (
                    "alarm_id",
                    "source_id",
                    "domain",
                    "alarm_type",
                    "severity",
                    "state",
                    "district",
                    "commune",
                )
            }
            for a in alarms
            if a["district"] in known
        ],
        "incidents": [
            {k: i[k] for k in ("incident_id", "district", "opened_at", "domains", "alarm_count", "severity")}
            for i in incidents
            if i["district"] in known
        ],
    }
