"""What the simulators share: fleet sizes per area of the loaded hierarchy, and the scripted incidents ``ioc up``
hands them (``IOC_SIM_INCIDENTS``)."""

from __future__ import annotations

from datetime import datetime, timedelta

from shared.areas import hanoi, hierarchy_name

#: the number of top areas the simulators' fleet sizes and rates were calibrated on (2019's 30 districts)
CALIBRATED_AREAS = 30
#: where ``ioc up``'s default scripted incident happens: a top area of that name exists in both hierarchies
DEFAULT_INCIDENT_AREA = "Hoàn Kiếm"


def fleet_size(per_city: float, scale: float, areas: int) -> float:
    """How many assets (meters, kiosks, intersections) a simulator spreads over ``areas`` top areas: ``per_city ×
    scale`` for the 30 districts of 2019, and as many *per area* for another hierarchy (126 communes and wards
    since 2025: 4.2 times the fleet). An area's KPIs rest on its own assets (a read success rate of 30 meters
    moves in steps of 3 %, wider than its 98 % warning margin), so each area keeps the count the rates and
    thresholds were tuned for (docs/simulation.md); the city-wide load grows with the number of areas instead."""
    return per_city * scale * (areas / CALIBRATED_AREAS)


def default_incident_area() -> str:
    """The code of :data:`DEFAULT_INCIDENT_AREA` in the loaded hierarchy (``HK`` in 2019, ``00070`` in 2025)."""
    area = hanoi().top_area_named(DEFAULT_INCIDENT_AREA)
    if area is None:
        return sorted(a.code for a in hanoi().top_areas)[0]  # another hierarchy: its first area
    return area.code


def parse_incidents(spec: str | None) -> list[tuple[str, datetime, datetime]]:
    """``"00070@2026-12-07T03:05:00Z/20,..."`` → [(top area, start, end)] (20 minutes when no length is given);
    empty or "none" → []. An area the loaded hierarchy does not have is a ValueError (a 2019 code such as ``HK``
    under the 2025 hierarchy would otherwise script an incident nowhere)."""
    out = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part or part == "none":
            continue
        district, _, rest = part.partition("@")
        if district not in {a.code for a in hanoi().top_areas}:
            raise ValueError(
                f"IOC_SIM_INCIDENTS: {district!r} is not a top area of the loaded hierarchy "
                f"(IOC_ADMIN_HIERARCHY={hierarchy_name()})"
            )
        start, _, minutes = rest.partition("/")
        t0 = datetime.fromisoformat(start.replace("Z", "+00:00"))
        out.append((district, t0, t0 + timedelta(minutes=float(minutes or 20))))
    return out
