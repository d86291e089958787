"""Build Hanoi's administrative-unit data (hierarchy CSV and map GeoJSON).

Run by hand when a source changes; the outputs are committed (shared/data/), so neither this script nor its
inputs are needed at run time or in CI:

    python3 -m venv /tmp/venv-geo
    /tmp/venv-geo/bin/pip install vietnamadminunits==1.0.4 shapely==2.2.0
    git clone https://github.com/Baobonk/GIS_Hanoi-bus-stops /tmp/osm-hn
    git -C /tmp/osm-hn checkout 7cde0af045d78fe00e0a175a812b665612a7d59a
    /tmp/venv-geo/bin/python tools/build_hanoi_areas.py /tmp/osm-hn/GIS/Finals/ward_borders_all

Inputs:
- vietnamadminunits 1.0.4 (PyPI, MIT, (c) 2025 Tran Ngoc Minh Hieu): the 126 units of Hanoi since 1 July 2025
  (Resolution 1656/NQ-UBTVQH15) with their national statistics codes, names, centroids and areas, the 526 units
  of the pre-reform structure with their centroids, and the merge list (which old units, or parts of divided
  ones, make each new unit).
- The boundaries of the 126 units from OpenStreetMap (ODbL 1.0, (c) OpenStreetMap contributors): one GeoJSON
  file per unit (``Phường_<name>.geojson`` / ``Xã_<name>.geojson``, the unit's ``admin_level=6`` relation, and
  ``Thành_phố_Hà_Nội.geojson``, the city's relation), as extracted from OpenStreetMap with osmnx and
  published in the repository and commit above (``SOURCE``); the script checks their digest (``SOURCE_SHA256``)
  so that a build is from exactly those files. The same polygons can be re-extracted from OpenStreetMap by
  the relation ids the output keeps (``properties.osm_relation``).

Processing:
1. 2025: each unit's polygon is the OpenStreetMap relation whose name is "Phường <name>" (a ward) or
   "Xã <name>" (a commune) of the CSV and which lies inside the city's relation; every one of the 126 must be
   found, and none twice. The 126 are simplified together as a coverage (shared edges stay shared, so the map
   has no gaps or overlaps between neighbours), then snapped to a 1e-4° grid.
2. 2019 (districts, which the 2025 units do not follow): inside each 2025 unit, the old units merged into it
   (and the parts of divided old units assigned to it) share it by Voronoi cells of their centroids; a 2019
   district is the union of its old units' pieces. Its outline and every line that a 2025 unit boundary
   carries are thus OpenStreetMap's; the lines inside a 2025 unit that joined units of two districts are
   approximate.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sqlite3
import sys
from collections import defaultdict
from importlib import resources
from pathlib import Path

import shapely
from shapely.geometry import MultiPoint, Point, mapping, shape
from shapely.ops import unary_union

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "shared" / "data"
SOURCE = (
    "https://github.com/Baobonk/GIS_Hanoi-bus-stops, commit 7cde0af045d78fe00e0a175a812b665612a7d59a, "
    "GIS/Finals/ward_borders_all/ (OpenStreetMap extract, Nov-Dec 2025)"
)
#: sha256 over the sorted lines "<file name> <sha256 of the file>\n" of the 175 files read (the city and every Phường_/Xã_ file, neighbours included)
SOURCE_SHA256 = "57ab73b2b24687d51867831366b509028830130336d35ffdd63417b704f86e98"
CITY_FILE = "Thành_phố_Hà_Nội.geojson"
SIMPLIFY_DEG = 0.0008  # ~85 m: below what a city-wide map shows, keeps the files small
DIGITS = 4  # ~10 m
ATTRIBUTION_2025 = "Boundaries © OpenStreetMap contributors (ODbL 1.0)"
ATTRIBUTION_2019 = (
    "Boundaries © OpenStreetMap contributors (ODbL 1.0); 2019 district lines inside merged units approximate"
)


def _data() -> Path:
    return Path(str(resources.files("vietnamadminunits") / "data"))


def _km2(geom) -> float:
    """Area in km² (equirectangular at the geometry's latitude: well under 0.1 % off at Hanoi's extent)."""
    return geom.area * 111.32**2 * math.cos(math.radians(geom.centroid.y))


def _finish(geom) -> dict:
    """Snap to the grid (set_precision keeps it valid) and drop slivers a split may leave."""
    geom = shapely.set_precision(geom, 10**-DIGITS)
    if geom.geom_type == "MultiPolygon":
        biggest = max(g.area for g in geom.geoms)
        geom = unary_union([g for g in geom.geoms if g.area >= biggest * 0.001])
    assert geom.is_valid and not geom.is_empty
    return dict(mapping(geom))


def _label(geometry: dict) -> list[float]:
    """A point inside the area (where the map puts its label and the markers of its incidents)."""
    p = shape(geometry).representative_point()
    return [round(p.x, DIGITS), round(p.y, DIGITS)]


def _read_osm(folder: Path) -> tuple[dict[str, tuple[int, object]], object]:
    """``{name: (relation id, geometry)}`` of the ``admin_level=6`` relations, and the city's outline."""
    digest = hashlib.sha256()
    units: dict[str, tuple[int, object]] = {}
    city = None
    for path in sorted(folder.glob("*.geojson")):
        if not path.name.startswith(("Phường_", "Xã_")) and path.name != CITY_FILE:
            continue
        data = path.read_bytes()
        digest.update(f"{path.name} {hashlib.sha256(data).hexdigest()}\n".encode())
        for f in json.loads(data)["features"]:
            p = f["properties"]
            geom = shapely.make_valid(shape(f["geometry"]))
            if path.name == CITY_FILE:
                city = geom
            elif p.get("admin_level") == "6" and p.get("boundary") == "administrative":
                assert p["name"] not in units, f"{p['name']}: two relations"
                units[p["name"]] = (int(p["level_1"]), geom)
    if digest.hexdigest() != SOURCE_SHA256:
        sys.exit(
            f"{folder}: not the recorded extract (digest {digest.hexdigest()}, expected {SOURCE_SHA256})"
        )
    assert city is not None, CITY_FILE
    return units, city


def main(osm_folder: Path) -> int:
    osm, city = _read_osm(osm_folder)  # first: a wrong extract writes nothing
    db = sqlite3.connect(_data() / "dataset.db")
    new = db.execute(
        "SELECT wardCode, ward, wardShort, wardType, wardKey, wardLat, wardLon, wardAreaKm2 FROM admin_units "
        "WHERE provinceCode='01' ORDER BY wardCode"
    ).fetchall()
    old = db.execute(
        "SELECT provinceKey, districtKey, wardKey, districtShort, wardLat, wardLon "
        "FROM admin_units_legacy WHERE provinceCode='01'"
    ).fetchall()
    conv = json.loads((_data() / "converter_2025.json").read_text(encoding="utf-8"))
    whole = conv["DICT_PROVINCE_WARD_NO_DIVIDED"]["thanhphohanoi"]  # new key -> [old keys]
    divided = conv["DICT_PROVINCE_WARD_DIVIDED"]["thanhphohanoi"]  # old key -> [{newWardKey, ...}]

    # Hierarchy CSV -----------------------------------------------------------------------------------------
    kinds = {"Phường": "ward", "Xã": "commune"}
    by_key = {}
    rows = []
    for code, _name, short, wtype, key, lat, lon, area in new:
        by_key[key] = code
        rows.append([code, short, "commune", "HN", kinds[wtype], f"{lat:.4f}", f"{lon:.4f}", f"{area:.2f}"])
    with open(OUT / "hanoi_admin_units_2025.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["code", "name", "level", "parent_code", "kind", "lat", "lon", "area_km2"])
        w.writerow(["HN", "Hà Nội", "city", "", "city", "21.0285", "105.8542", ""])
        w.writerows(rows)

    # 2025 geometry: the OpenStreetMap relations, joined by name -------------------------------------------
    prefix = {"ward": "Phường", "commune": "Xã"}
    names = {r[0]: (r[1], r[4], float(r[7])) for r in rows}
    relation: dict[str, int] = {}
    polygons: dict[str, object] = {}
    unmatched = []
    for code, (name, kind, _) in sorted(names.items()):
        hit = osm.get(f"{prefix[kind]} {name}")
        if hit is None or hit[1].intersection(city).area < 0.99 * hit[1].area:
            unmatched.append(f"{code} {prefix[kind]} {name}")
            continue
        relation[code], polygons[code] = hit
    if unmatched:
        sys.exit(f"no OpenStreetMap relation inside Hanoi for: {unmatched}")
    codes = sorted(polygons)
    simplified = shapely.coverage_simplify([polygons[c] for c in codes], SIMPLIFY_DEG)
    features = []
    errors = []
    for code, geom in zip(codes, simplified, strict=True):
        name, kind, area = names[code]
        geometry = _finish(geom)
        errors.append(abs(_km2(shape(geometry)) - area) / area)
        props = {
            "code": code,
            "name": name,
            "kind": kind,
            "area_km2_official": area,
            "osm_relation": relation[code],
            "label": _label(geometry),
        }
        features.append({"type": "Feature", "properties": props, "geometry": geometry})
    _write(OUT / "hanoi_areas_2025.geojson", features, ATTRIBUTION_2025)

    # 2019 geometry: old units share their 2025 unit by Voronoi cells ----------------------------------------
    seeds = {f"{p}_{d}_{w}": (Point(lon, lat), short) for p, d, w, short, lat, lon in old}
    members: dict[str, list[str]] = defaultdict(list)  # 2025 code -> old keys (whole or a part)
    for new_key, old_keys in whole.items():
        members[by_key[new_key]] += [k for k in old_keys if k in seeds]
    for old_key, targets in divided.items():
        for t in targets:
            if old_key in seeds and t["newWardKey"] in by_key:
                members[by_key[t["newWardKey"]]].append(old_key)
    by_district: dict[str, list] = defaultdict(list)
    for code, keys in members.items():
        unit = polygons[code]
        if len(keys) == 1:
            by_district[seeds[keys[0]][1]].append(unit)
            continue
        cells = shapely.voronoi_polygons(MultiPoint([seeds[k][0] for k in keys]), extend_to=unit)
        for k in keys:
            pt = seeds[k][0]
            cell = next(c for c in cells.geoms if c.contains(pt) or c.touches(pt))
            by_district[seeds[k][1]].append(cell.intersection(unit))
    codes_2019 = {}
    with open(OUT / "hanoi_admin_units_2019.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            codes_2019[r["district_name"]] = (r["district_code"], r["kind"])
    district_geoms = {short: unary_union(parts) for short, parts in by_district.items()}
    shorts = sorted(district_geoms)
    simplified_2019 = shapely.coverage_simplify([district_geoms[s] for s in shorts], SIMPLIFY_DEG)
    features_2019 = []
    for short, geom in zip(shorts, simplified_2019, strict=True):
        code, kind = codes_2019[short]
        geometry = _finish(geom)
        props = {"code": code, "name": short, "kind": kind, "label": _label(geometry)}
        features_2019.append({"type": "Feature", "properties": props, "geometry": geometry})
    _write(OUT / "hanoi_areas_2019.geojson", features_2019, ATTRIBUTION_2019)

    errors.sort()
    print(
        f"2025: {len(features)} units, area error against the official areas: median "
        f"{errors[len(errors) // 2]:.1%}, 90th percentile {errors[int(len(errors) * 0.9)]:.1%}, "
        f"max {errors[-1]:.1%}; union {_km2(unary_union(list(polygons.values()))):.1f} km²; "
        f"2019: {len(features_2019)} districts"
    )
    return 0 if len(features_2019) == len(codes_2019) else 1


def _write(path: Path, features: list, attribution: str) -> None:
    doc = {
        "type": "FeatureCollection",
        "name": path.stem,
        "attribution": attribution,
        "license": "ODbL-1.0 (shared/data/ODbL-1.0.txt); source and processing: shared/data/README.md",
        "features": features,
    }
    path.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} <folder of the OpenStreetMap extract> (see the docstring)")
    sys.exit(main(Path(sys.argv[1])))
