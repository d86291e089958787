"""Use cases of the drill-down pages (area → asset), the multi-series history and the daily report.

What the city knows of an asset it learnt from the events it consumes: the asset's alarms (every domain's
``ioc.<d>.alarms``, keyed by the asset's id) and the KPIs of its area. What only the asset's own service knows
(an intersection's measures and timeline, an agency's Decision 766 scorecard, a kiosk's registry entry) is
fetched over HTTP from that service (``IOC_CITY_<D>_URL``) with the caller's own Authorization header, so the
domain service checks its own read scope for that principal; the city never imports another service.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from services.city import repository as repo
from services.city import repository_assets as arepo
from services.city.atspm_charts import atspm_charts, latest_phase_states
from services.city.domain import CITY_SCOPE, worst_status
from shared.areas import hanoi
from shared.kpis import KpiDefinition

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")

#: asset kind → the domains whose alarms name it by its id
ASSET_DOMAINS: dict[str, tuple[str, ...]] = {
    "intersection": ("traffic",),
    "kiosk": ("kiosk",),
    "feeder": ("meter",),
    "meter": ("meter",),
    "agency": ("dossier",),
    "dossier": ("dossier",),
}
#: asset kind → the domain whose area KPIs its page shows
KIND_DOMAIN = {kind: domains[0] for kind, domains in ASSET_DOMAINS.items()}
ALARM_HISTORY_DAYS = 30
KIOSK_AVAILABILITY_DAYS = 7

#: (domain service, path, params) → (HTTP status, JSON body)
Fetch = Callable[[str, str, dict[str, str]], Awaitable[tuple[int, Any]]]


def asset_kind(domain: str, alarm_type: str, source_id: str) -> str | None:
    """Which kind of asset an alarm is about (None: the alarm is about an area or the whole domain)."""
    if alarm_type in arepo.AREA_ALARM_TYPES:
        return None
    if domain == "traffic":
        return "intersection"
    if domain == "kiosk":
        return "kiosk"
    if domain == "meter":
        if alarm_type == "feeder_outage":
            return "feeder"
        return "meter" if alarm_type.startswith("tamper") else None
    if domain == "dossier":
        return "dossier" if alarm_type == "dossier_overdue" else None
    return None


def _area_name(code: str) -> str | None:
    if code == CITY_SCOPE:
        return None
    area = hanoi().areas.get(code)
    return area.name if area is not None else None


def group_assets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Open asset alarms → one entry per asset (kind, id, worst severity, its alarm types), worst first."""
    rank = {"critical": 0, "major": 1, "minor": 2, "warning": 3}
    assets: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        kind = asset_kind(r["domain"], r["alarm_type"], r["source_id"])
        if kind is None:
            continue
        a = assets.get((kind, r["source_id"]))
        if a is None:
            a = assets[(kind, r["source_id"])] = {
                "kind": kind,
                "asset_id": r["source_id"],
                "domain": r["domain"],
                "district": r["district"],
                "commune": r["commune"],
                "severity": r["severity"],
                "alarm_types": [],
                "open_alarms": 0,
                "since": r["raised_at"],
                "href": f"#asset/{kind}/{r['source_id']}",
            }
        a["open_alarms"] += 1
        if r["alarm_type"] not in a["alarm_types"]:
            a["alarm_types"].append(r["alarm_type"])
        if rank.get(r["severity"], 9) < rank.get(a["severity"], 9):
            a["severity"] = r["severity"]
        a["since"] = min(a["since"], r["raised_at"])
    return sorted(assets.values(), key=lambda a: (rank.get(a["severity"], 9), a["since"], a["asset_id"]))


async def assets_in_alarm(pool: asyncpg.Pool, area: str | None) -> list[dict[str, Any]]:
    return group_assets(await arepo.open_asset_alarms(pool, area))


async def area_page(pool: asyncpg.Pool, code: str, defs: dict[str, KpiDefinition]) -> dict[str, Any] | None:
    """An area (city, district or commune): its current KPIs, its assets in alarm, its open incidents."""
    area = hanoi().areas.get(code)
    if area is None:
        return None
    level = area.level
    kpis = await repo.current_kpis(pool, scope_code=code, trend_points=12)
    assets = await assets_in_alarm(pool, None if code == CITY_SCOPE else code)
    incidents = await repo.list_incidents(pool, state="open", district=None if code == CITY_SCOPE else code)
    children = [
        {"code": a.code, "name": a.name, "level": a.level}
        for a in sorted(hanoi().children(code), key=lambda a: a.code)
    ]
    return {
        "code": code,
        "name": area.name,
        "level": level,
        "parent": area.parent,
        "status": worst_status([k["status"] for k in kpis], [a["severity"] for a in assets]),
        "kpis": kpis,
        "assets_in_alarm": assets,
        "incidents": incidents,
        "children": children,
    }


async def asset_page(
    pool: asyncpg.Pool, kind: str, asset_id: str, fetch: Fetch, now: datetime
) -> dict[str, Any]:
    """One asset: what its own service says of it (``details``, or why not), its alarms (open first), the
    log of its alarms' raises and clears over the last 30 days, and the current KPIs of its area."""
    domains = ASSET_DOMAINS[kind]
    alarms = await arepo.alarms_of_source(pool, asset_id, domains)
    history = await arepo.alarm_log_of(
        pool, [a["alarm_id"] for a in alarms], now - timedelta(days=ALARM_HISTORY_DAYS)
    )
    details: dict[str, Any] | None
    if kind == "feeder":
        details, details_error = feeder_details(alarms, history), None
    else:
        details, details_error = await _details(kind, asset_id, fetch, now)
    district = (details or {}).get("district") or next((a["district"] for a in alarms if a["district"]), None)
    kpis = []
    if district:
        kpis = await repo.current_kpis(
            pool, domain=KIND_DOMAIN[kind], scope_level="district", scope_code=district, trend_points=12
        )
    open_alarms = [a for a in alarms if a["state"] != "cleared"]
    return {
        "kind": kind,
        "asset_id": asset_id,
        "domain": KIND_DOMAIN[kind],
        "district": district,
        "district_name": _area_name(district) if district else None,
        "status": worst_status(["ok"] if details or alarms else [], [a["severity"] for a in open_alarms]),
        "open_alarms": len(open_alarms),
        "details": details,
        "details_error": details_error,
        "alarms": alarms,
        "alarm_history": history,
        "kpis": kpis,
    }


#: the count the meter service writes into a feeder outage's message (it publishes no structured count)
_FEEDER_COUNT = re.compile(r"\b(\d+) of (\d+) meters\b")


def feeder_details(alarms: list[dict[str, Any]], history: list[dict[str, Any]]) -> dict[str, Any]:
    """A feeder from its ``feeder_outage`` alarm: in outage now, meters without supply out of the feeder's
    meters (as the raise said; none once cleared), and its interruptions (each raise to the next clear of the alarm's
    log, the last one open while it lasts)."""
    outage = next((a for a in alarms if a["alarm_type"] == "feeder_outage"), None)
    in_outage = outage is not None and outage["state"] != "cleared"
    # the count of the raise: the city keeps an alarm's first message, so a cleared outage has no count now
    count = _FEEDER_COUNT.search(outage["message"]) if outage is not None and in_outage else None
    interruptions: list[dict[str, Any]] = []
    for h in sorted((h for h in history if h["alarm_type"] == "feeder_outage"), key=lambda h: h["at"]):
        if h["state"] == "raised" and (not interruptions or interruptions[-1]["end"] is not None):
            interruptions.append({"start": h["at"], "end": None, "minutes": None})
        elif h["state"] == "cleared" and interruptions and interruptions[-1]["end"] is None:
            last = interruptions[-1]
            last["end"] = h["at"]
            last["minutes"] = round((h["at"] - last["start"]).total_seconds() / 60, 1)
    return {
        "in_outage": in_outage,
        "meters_without_supply": int(count.group(1)) if count else None,
        "meters": int(count.group(2)) if count else None,
        "as_of": outage["changed_at"] if outage is not None else None,
        "interruptions": interruptions[::-1],
    }


async def _details(
    kind: str, asset_id: str, fetch: Fetch, now: datetime
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """What the asset's own service says of it; (None, why) when it cannot say."""
    if kind == "intersection":
        status, body = await fetch("traffic", f"/v1/intersections/{asset_id}", {})
    elif kind == "kiosk":
        # the kiosk service's status read (kiosk:read, which console roles hold): registry facts without
        # secrets, peripherals' states, sessions, availability today (its default period) and over 7 days
        status, body = await fetch("kiosk", f"/v1/kiosks/{asset_id}/status", {})
        if status != 200:
            return None, {"reason": _why(status), "status": status}
        week_start = now - timedelta(days=KIOSK_AVAILABILITY_DAYS)
        week_status, week = await fetch(
            "kiosk", f"/v1/kiosks/{asset_id}/status", {"from": week_start.isoformat(), "to": now.isoformat()}
        )
        return kiosk_details(body, week if week_status == 200 else None), None
    elif kind == "agency":
        status, body = await fetch("dossier", "/v1/agencies", {})
        if status != 200:
            return None, {"reason": _why(status), "status": status}
        agency = next((a for a in body.get("items") or [] if a.get("code") == asset_id), None)
        if agency is None:
            return None, {"reason": "not_found", "status": 404}
        period = now.astimezone(HANOI).strftime("%Y-%m")
        status, body = await fetch(
            "dossier", "/v1/index766", {"period": period, "scope_level": "agency", "scope_code": asset_id}
        )
        if status == 200:
            items = body.get("items") or []
            # the agency's Decision 766 scorecard of this month (none before its first dossier of the month)
            return {**agency, "period": period, "index766": items[0] if items else None}, None
    else:
        return None, {
            "reason": "no_endpoint",
            "message": f"the {KIND_DOMAIN[kind]} service has no page of a {kind}",
        }
    if status == 200:
        return body, None
    return None, {"reason": _why(status), "status": status}


def kiosk_details(today: dict[str, Any], week: dict[str, Any] | None) -> dict[str, Any]:
    """The kiosk page's details from the kiosk service's status answers (today's, and the last 7 days'):
    its registry facts at the top (``district`` among them), then its state."""
    return {
        **today["kiosk"],
        "online": today["online"],
        "last_heartbeat": today["last_heartbeat"],
        "peripheral_states": today["peripherals"],
        "sessions_today": today["sessions_today"],
        "availability_today": today["availability"],
        "availability_7d": week["availability"] if week is not None else None,
    }


def _why(status: int) -> str:
    return {401: "unauthorised", 403: "forbidden", 404: "not_found", 502: "unavailable"}.get(
        status, "unavailable"
    )


async def intersection_atspm(
    asset_id: str, start: datetime, end: datetime, fetch: Fetch
) -> tuple[int, dict[str, Any]]:
    """The intersection's ATSPM charts over ``[start, end)`` from the traffic service's measures and timeline;
    (status, error body) when the traffic service refuses."""
    params = {"from": start.isoformat(), "to": end.isoformat()}
    status, measures = await fetch("traffic", f"/v1/intersections/{asset_id}/measures", params)
    if status != 200:
        return status, measures
    status, timeline = await fetch(
        "traffic", f"/v1/intersections/{asset_id}/measures", {**params, "kind": "timeline"}
    )
    if status != 200:
        return status, timeline
    # per vehicle and per cycle (a traffic service without kind=pcd answers 422: the charts then go without)
    status, pcd = await fetch("traffic", f"/v1/intersections/{asset_id}/measures", {**params, "kind": "pcd"})
    if status not in (200, 422):
        return status, pcd
    charts = atspm_charts(measures["measures"], timeline["timeline"], pcd if status == 200 else None)
    return 200, {
        "intersection_id": asset_id,
        "from": start,
        "to": end,
        "source": "traffic service GET /v1/intersections/{id}/measures (phases, kind=timeline, kind=pcd)",
        "latest": latest_phase_states(timeline["timeline"]),
        **charts,
    }


def kpi_scope_level(code: str) -> str:
    """The ``scope_level`` KPI events carry for an area: ``city``, ``district`` for every top area (the event
    vocabulary, also in the two-tier hierarchy where a top area is a ward), else the area's own level."""
    area = hanoi().areas[code]
    if code == CITY_SCOPE:
        return "city"
    return "district" if area.parent == CITY_SCOPE else area.level


# History: several series on one chart ------------------------------------------------------------------------
async def multi_series(
    pool: asyncpg.Pool,
    definition: KpiDefinition | None,
    kpi: str,
    scopes: list[str],
    start: datetime,
    end: datetime,
    step: str,
    window_seconds: int,
    compare_previous: bool,
) -> dict[str, Any]:
    """One KPI for several areas (and, with ``compare_previous``, each over the period just before, shifted
    onto this one), with the definition's threshold levels. ``rows`` is every point of every series in one
    list (what the chart's CSV export writes)."""
    series: list[dict[str, Any]] = []
    span = end - start
    periods = [("current", timedelta(0))] + ([("previous", span)] if compare_previous else [])
    for code in scopes:
        level = kpi_scope_level(code)
        for period, shift in periods:
            points = await repo.kpi_history(
                pool,
                kpi=kpi,
                scope_level=level,
                scope_code=code,
                window_seconds=window_seconds,
                start=start - shift,
                end=end - shift,
                step=step,
            )
            series.append(
                {
                    "scope_level": level,
                    "scope_code": code,
                    "period": period,
                    "shift_seconds": int(shift.total_seconds()),
                    "points": [{**p, "t": p["t"], "shown_at": p["t"] + shift} for p in points],
                }
            )
    rows = [
        {
            "scope_code": s["scope_code"],
            "period": s["period"],
            "t": p["t"],
            "shown_at": p["shown_at"],
            "value": p["value"],
            "min": p["min"],
            "max": p["max"],
        }
        for s in series
        for p in s["points"]
    ]
    return {
        "kpi": kpi,
        "unit": definition.unit if definition else None,
        "direction": definition.direction if definition else "none",
        "thresholds": definition.thresholds.model_dump()
        if definition
        else {"warning": None, "critical": None},
        "target": definition.target if definition else None,
        "window_seconds": window_seconds,
        "step": step,
        "from": start,
        "to": end,
        "series": series,
        "rows": rows,
    }


# Daily report ------------------------------------------------------------------------------------------------
def hanoi_day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), HANOI).astimezone(UTC)
    return start, start + timedelta(days=1)


def choose_daily_rows(rows: list[dict[str, Any]], defs: dict[str, KpiDefinition]) -> list[dict[str, Any]]:
    """One row per KPI and area for the day: the day window's value where the KPI has one (its ``last``: a day
    window is the only window of its day bucket), else the mean of its primary window's values over the day,
    judged against the KPI's thresholds."""
    by_series: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_series[(r["kpi"], r["scope_level"], r["scope_code"])][r["window_seconds"]] = r
    out = []
    for (kpi, level, code), windows in sorted(by_series.items()):
        d = defs.get(kpi)
        if 86400 in windows:
            r, value, basis = windows[86400], windows[86400]["last"], "day_window"
        else:
            primary = d.windows[0] if d is not None and d.windows[0] in windows else min(windows)
            r, value, basis = windows[primary], windows[primary]["mean"], "mean_of_windows"
        out.append(
            {
                "domain": d.domain if d is not None else kpi.split(".")[0],
                "kpi": kpi,
                "name_vi": d.name.vi if d is not None else kpi,
                "name_en": d.name.en if d is not None else kpi,
                "unit": d.unit if d is not None else "",
                "scope_level": level,
                "scope_code": code,
                "area_name": _area_name(code),
                "window_seconds": r["window_seconds"],
                "basis": basis,
                "windows": r["count"],
                "value": value,
                "min": r["min"],
                "max": r["max"],
                "status": d.status(value) if d is not None else "unknown",
                "warning": d.thresholds.warning if d is not None else None,
                "critical": d.thresholds.critical if d is not None else None,
                "target": d.target if d is not None else None,
            }
        )
    return out


async def daily_report(pool: asyncpg.Pool, day: date, defs: dict[str, KpiDefinition]) -> dict[str, Any]:
    """The city's KPIs of one Hanoi day per domain and area, the alarms raised that day, and the worst areas
    (most KPIs in critical, then in warning, then most alarms raised)."""
    start, end = hanoi_day_bounds(day)
    rows = choose_daily_rows(await arepo.day_kpi_rows(pool, start), defs)
    alarms = await arepo.day_alarm_counts(pool, start, end)
    per_area: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["scope_level"] == "city":
            continue
        a = per_area.setdefault(
            r["scope_code"],
            {
                "scope_code": r["scope_code"],
                "area_name": r["area_name"],
                "critical": 0,
                "warning": 0,
                "alarms": 0,
            },
        )
        if r["status"] in ("critical", "warning"):
            a[r["status"]] += 1
    for al in alarms:
        if al["district"] == CITY_SCOPE:
            continue
        a = per_area.setdefault(
            al["district"],
            {
                "scope_code": al["district"],
                "area_name": _area_name(al["district"]),
                "critical": 0,
                "warning": 0,
                "alarms": 0,
            },
        )
        a["alarms"] += al["raised"]
    worst = sorted(
        (a for a in per_area.values() if a["critical"] or a["warning"] or a["alarms"]),
        key=lambda a: (-a["critical"], -a["warning"], -a["alarms"], a["scope_code"]),
    )[:10]
    by_domain: dict[str, int] = defaultdict(int)
    for al in alarms:
        by_domain[al["domain"]] += al["raised"]
    return {
        "date": day.isoformat(),
        "from": start,
        "to": end,
        "timezone": "Asia/Ho_Chi_Minh",
        "kpis": rows,
        "alarms": alarms,
        "alarms_total": sum(by_domain.values()),
        "alarms_by_domain": [{"domain": k, "raised": v} for k, v in sorted(by_domain.items())],
        "worst_areas": worst,
    }
