"""The administrative hierarchy as data: city → districts → communes/wards (2019), or city → communes/wards (2025).

Two Hanoi hierarchies ship (``shared/data/README.md`` has their sources and licences), chosen by the setting
``IOC_ADMIN_HIERARCHY``:

- ``hanoi-2019``: 30 district-level units, 584 communes and wards; commune names are not public in the seed, so
  communes get stable generated codes ``<district>-NN``.
- ``hanoi-2025``: the two-tier structure since 1 July 2025 (Resolution 1656/NQ-UBTVQH15): the city and its 126
  communes and wards, named and coded as in the national statistics registry.

Code that groups by area uses the *top areas*, the areas at level 1 under the city (the districts in 2019, the
communes and wards in 2025). Event contracts call that level ``district`` (their field names predate 2025): in
a two-tier hierarchy an event's ``district`` carries the commune or ward, and its ``commune`` the same code.
Another hierarchy loads from a ``code,name,level,parent_code`` CSV via :func:`load_hierarchy`.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from datetime import timedelta, timezone
from functools import lru_cache
from pathlib import Path

CITY_CODE = "HN"
#: Hanoi's offset from UTC (Vietnam keeps UTC+7 all year, no daylight saving): local days start at 17:00 UTC
HANOI_OFFSET_S = 7 * 3600
HANOI_TZ = timezone(timedelta(seconds=HANOI_OFFSET_S), "ICT")
DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Area:
    code: str
    name: str
    level: str  # city, district, commune
    parent: str | None
    kind: str = ""  # urban district, town, rural district (2019); ward, commune (2025)
    lat: float | None = None  # the centroid, where the data has it (2025)
    lon: float | None = None


@dataclass(frozen=True)
class Hierarchy:
    areas: dict[str, Area]

    def children(self, code: str) -> list[Area]:
        return [a for a in self.areas.values() if a.parent == code]

    @property
    def top_areas(self) -> list[Area]:
        """The areas at level 1 under the city: the districts (2019), the communes and wards (two-tier 2025)."""
        return [a for a in self.areas.values() if a.parent == CITY_CODE]

    @property
    def top_level(self) -> str:
        """The ``level`` of the top areas (``district`` in 2019, ``commune`` in 2025)."""
        return next((a.level for a in self.top_areas), "district")

    @property
    def districts(self) -> list[Area]:
        """The top areas (the name predates the two-tier structure, where they are communes and wards)."""
        return self.top_areas

    def units_of(self, top: str) -> list[Area]:
        """The smallest units of a top area: its communes (2019), or the area itself when it has none (2025)."""
        area = self.areas.get(top)
        if area is None:
            return []
        return self.children(top) or [area]

    def contains(self, top: str, unit: str) -> bool:
        """Whether ``unit`` is ``top`` itself or one of its communes (what a registry entry may name)."""
        area = self.areas.get(unit)
        return area is not None and (unit == top or area.parent == top)

    @property
    def communes(self) -> list[Area]:
        return [a for a in self.areas.values() if a.level == "commune"]

    def top_area_named(self, name: str) -> Area | None:
        """The top area called ``name`` (e.g. "Hoàn Kiếm": a district in 2019, a ward in 2025), else None."""
        return next((a for a in self.top_areas if a.name == name), None)

    def district_of(self, code: str) -> str | None:
        """The top area containing ``code`` (itself when it is one); None for the city or an unknown code."""
        a = self.areas.get(code)
        while a is not None and a.parent not in (CITY_CODE, None):
            a = self.areas.get(a.parent or "")
        return a.code if a is not None and a.parent == CITY_CODE else None


def load_district_csv(path: Path) -> Hierarchy:
    """Load ``district_code,district_name,kind,communes_2019`` rows (the seed format)."""
    areas = {CITY_CODE: Area(CITY_CODE, "Hà Nội", "city", None, "city")}
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            d = row["district_code"]
            areas[d] = Area(d, row["district_name"], "district", CITY_CODE, row["kind"])
            for i in range(1, int(row["communes_2019"]) + 1):
                c = f"{d}-{i:02d}"
                areas[c] = Area(c, f"{row['district_name']} {i:02d}", "commune", d)
    return Hierarchy(areas)


def load_hierarchy(path: Path) -> Hierarchy:
    """Load a generic ``code,name,level,parent_code`` CSV (any number of levels, e.g. two-tier)."""
    areas: dict[str, Area] = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.DictReader(f):
            lat, lon = row.get("lat") or "", row.get("lon") or ""
            areas[row["code"]] = Area(
                row["code"],
                row["name"],
                row["level"],
                row.get("parent_code") or None,
                row.get("kind") or "",
                float(lat) if lat else None,
                float(lon) if lon else None,
            )
    return Hierarchy(areas)


#: the hierarchies IOC ships: name -> (hierarchy CSV, boundaries GeoJSON keyed by ``properties.code``)
HIERARCHIES: dict[str, tuple[str, str]] = {
    "hanoi-2019": ("hanoi_admin_units_2019.csv", "hanoi_areas_2019.geojson"),
    "hanoi-2025": ("hanoi_admin_units_2025.csv", "hanoi_areas_2025.geojson"),
}
#: the structure Hanoi runs since 1 July 2025; ``hanoi-2019`` stays loadable (and tested) for older data
DEFAULT_HIERARCHY = "hanoi-2025"


def hierarchy_name() -> str:
    """The hierarchy ``IOC_ADMIN_HIERARCHY`` names (every service and simulator reads the same setting)."""
    name = os.environ.get("IOC_ADMIN_HIERARCHY", "").strip() or DEFAULT_HIERARCHY
    if name not in HIERARCHIES:
        raise ValueError(f"IOC_ADMIN_HIERARCHY={name!r}: expected one of {', '.join(sorted(HIERARCHIES))}")
    return name


@lru_cache(maxsize=4)
def load_named(name: str) -> Hierarchy:
    """One of :data:`HIERARCHIES` by name."""
    path = DATA / HIERARCHIES[name][0]
    return load_district_csv(path) if name == "hanoi-2019" else load_hierarchy(path)


def boundaries_path(name: str) -> Path:
    """The GeoJSON of the named hierarchy's top areas (OpenStreetMap boundaries, see shared/data/README.md)."""
    return DATA / HIERARCHIES[name][1]


def hanoi() -> Hierarchy:
    """The hierarchy the setting chooses (the two-tier 2025 one unless ``IOC_ADMIN_HIERARCHY`` says otherwise)."""
    return load_named(hierarchy_name())


@lru_cache(maxsize=4)
def label_points(name: str) -> dict[str, tuple[float, float]]:
    """``code -> (lat, lon)``: a point inside each top area of the named hierarchy (from its boundaries), where
    simulators place their assets and the map the markers of things known only by area."""
    doc = json.loads(boundaries_path(name).read_text(encoding="utf-8"))
    return {
        f["properties"]["code"]: (f["properties"]["label"][1], f["properties"]["label"][0])
        for f in doc["features"]
    }
