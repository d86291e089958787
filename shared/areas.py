"""The administrative hierarchy as data: city → districts → communes/wards.

The seed is Hanoi's 2019 structure (30 district-level units, 584 communes and wards; commune names are not
public in the seed, so communes get stable generated codes ``<district>-NN``). A different hierarchy (e.g. the
two-tier province → commune structure since July 2025) loads from another CSV with the same columns, or from
a ``parent_code`` CSV via :func:`load_hierarchy`, without code changes.
"""

from __future__ import annotations

import csv
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
    kind: str = ""


@dataclass(frozen=True)
class Hierarchy:
    areas: dict[str, Area]

    def children(self, code: str) -> list[Area]:
        return [a for a in self.areas.values() if a.parent == code]

    @property
    def districts(self) -> list[Area]:
        return [a for a in self.areas.values() if a.level == "district"]

    @property
    def communes(self) -> list[Area]:
        return [a for a in self.areas.values() if a.level == "commune"]

    def district_of(self, code: str) -> str | None:
        a = self.areas.get(code)
        while a is not None and a.level not in ("district", "city"):
            a = self.areas.get(a.parent or "")
        return a.code if a is not None and a.level == "district" else None


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
            areas[row["code"]] = Area(row["code"], row["name"], row["level"], row.get("parent_code") or None)
    return Hierarchy(areas)


@lru_cache(maxsize=1)
def hanoi() -> Hierarchy:
    """The seed hierarchy (30 districts, 584 communes and wards)."""
    return load_district_csv(DATA / "hanoi_admin_units_2019.csv")
