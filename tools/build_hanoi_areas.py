"""Build Hanoi's administrative-unit data (hierarchy CSV and map GeoJSON) from the `vietnamadminunits` package.

Run by hand when the source package changes; the outputs are committed (shared/data/), so neither this script nor
its inputs are needed at run time or in CI:

    python3 -m venv /tmp/areas-build
    /tmp/areas-build/bin/pip install vietnamadminunits==1.0.4 shapely==2.2.0
    /tmp/areas-build/bin/python tools/build_hanoi_areas.py

Inputs (vietnamadminunits 1.0.4, MIT, (c) 2025 Tran Ngoc Minh Hieu): the 126 units of Hanoi since 1 July 2025
(Resolution 1656/NQ-UBTVQH15) with their national statistics codes, names, centroids and areas, the 526 units of
the pre-reform structure with centroids and bounding boxes, and the merge list (which old units, or parts of
divided ones, make each new unit).

No registry package ships boundary polygons of Hanoi's communes and wards, so the polygons are DERIVED, not
surveyed (shared/data/README.md says what that means for the map):
1. Hanoi's outline = union of the old units' bounding boxes, smoothed (a buffer out and back in).
2. Each old unit gets the Voronoi cell of its centroid, clipped to the outline.
3. A new unit = the dissolve of the cells of the old units merged into it (the resolution's merge list); an old
   unit divided between several new units is split between them by nearest new-unit centroid.
4. The 2019 districts = the dissolve of the old units' cells per district.
Geometry is simplified and coordinates rounded to keep the files small.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import sys
from collections import defaultdict
from importlib import resources
from pathlib import Path

import shapely
from shapely.geometry import MultiPoint, Point, Polygon, box, mapping, shape
from shapely.ops import unary_union

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "shared" / "data"
SIMPLIFY_DEG = 0.0012  # ~130 m: far below what a city-wide map shows, keeps the files small
SMOOTH_DEG = 0.004
DIGITS = 4  # ~10 m


def _data() -> Path:
    return Path(str(resources.files("vietnamadminunits") / "data"))


def _geometry(parts: list) -> dict:
    """Dissolve, simplify, snap to the grid (set_precision keeps it valid) and drop slivers of split cells."""
    geom = unary_union(parts).simplify(SIMPLIFY_DEG, preserve_topology=True)
    geom = shapely.set_precision(geom, 10**-DIGITS)
    if geom.geom_type == "MultiPolygon":
        biggest = max(g.area for g in geom.geoms)
        geom = unary_union([g for g in geom.geoms if g.area >= biggest * 0.02])
    assert geom.is_valid and not geom.is_empty
    return dict(mapping(geom))


def _label(geometry: dict) -> list[float]:
    """A point inside the area (where the map puts its label and the markers of its incidents)."""
    p = shape(geometry).representative_point()
    return [round(p.x, DIGITS), round(p.y, DIGITS)]


def _bounds(text: str):  # "lat1,lon1 – lat2,lon2"
    a, b = (p.strip() for p in text.split("–"))
    lat1, lon1 = map(float, a.split(","))
    lat2, lon2 = map(float, b.split(","))
    return box(min(lon1, lon2), min(lat1, lat2), max(lon1, lon2), max(lat1, lat2))


def main() -> int:
    db = sqlite3.connect(_data() / "dataset.db")
    new = db.execute(
        "SELECT wardCode, ward, wardShort, wardType, wardKey, wardLat, wardLon, wardAreaKm2 FROM admin_units "
        "WHERE provinceCode='01' ORDER BY wardCode"
    ).fetchall()
    old = db.execute(
        "SELECT provinceKey, districtKey, wardKey, districtShort, wardLat, wardLon, wardBounds "
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

    # Geometry ----------------------------------------------------------------------------------------------
    outline = unary_union([_bounds(b) for *_, b in old]).buffer(SMOOTH_DEG).buffer(-SMOOTH_DEG)
    # the city has no holes: fill the gaps the bounding boxes leave between them
    rings = outline.geoms if outline.geom_type == "MultiPolygon" else [outline]
    outline = unary_union([Polygon(r.exterior) for r in rings])
    seeds = {f"{p}_{d}_{w}": (Point(lon, lat), short) for p, d, w, short, lat, lon, _ in old}
    cells = shapely.voronoi_polygons(MultiPoint([pt for pt, _ in seeds.values()]), extend_to=outline)
    cell_of = {}
    for key, (pt, _) in seeds.items():
        cell = next(c for c in cells.geoms if c.contains(pt) or c.touches(pt))
        cell_of[key] = cell.intersection(outline)

    parts: dict[str, list] = defaultdict(list)
    for new_key, old_keys in whole.items():
        for k in old_keys:
            if k in cell_of:
                parts[by_key[new_key]].append(cell_of[k])
    new_pts = {by_key[k]: Point(lon, lat) for _, _, _, _, k, lat, lon, _ in new}
    for old_key, targets in divided.items():
        if old_key not in cell_of:
            continue
        codes = [by_key[t["newWardKey"]] for t in targets if t["newWardKey"] in by_key]
        sub = shapely.voronoi_polygons(MultiPoint([new_pts[c] for c in codes]), extend_to=cell_of[old_key])
        for c in codes:
            piece = next(g for g in sub.geoms if g.contains(new_pts[c]) or g.touches(new_pts[c]))
            parts[c].append(piece.intersection(cell_of[old_key]))

    names = {r[0]: (r[1], r[4], float(r[7])) for r in rows}
    features = []
    missing = []
    for code in sorted(names):
        if not parts[code]:
            missing.append(code)
            continue
        name, kind, area = names[code]
        geometry = _geometry(parts[code])
        props = {
            "code": code,
            "name": name,
            "kind": kind,
            "area_km2_official": area,
            "label": _label(geometry),
        }
        features.append({"type": "Feature", "properties": props, "geometry": geometry})
    _write(OUT / "hanoi_areas_2025.geojson", features)

    codes_2019 = {}
    with open(OUT / "hanoi_admin_units_2019.csv", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            codes_2019[r["district_name"]] = (r["district_code"], r["kind"])
    by_district: dict[str, list] = defaultdict(list)
    for key, (_, short) in seeds.items():
        by_district[short].append(cell_of[key])
    features_2019 = []
    for short, cs in sorted(by_district.items()):
        code, kind = codes_2019[short]
        geometry = _geometry(cs)
        props = {"code": code, "name": short, "kind": kind, "label": _label(geometry)}
        features_2019.append({"type": "Feature", "properties": props, "geometry": geometry})
    _write(OUT / "hanoi_areas_2019.geojson", features_2019)
    print(
        f"2025: {len(features)} units ({len(missing)} without a polygon: {missing}); 2019: {len(features_2019)}"
    )
    return 1 if missing or len(features_2019) != len(codes_2019) else 0


def _write(path: Path, features: list) -> None:
    doc = {
        "type": "FeatureCollection",
        "name": path.stem,
        "attribution": "Derived from vietnamadminunits 1.0.4 (MIT, (c) 2025 Tran Ngoc Minh Hieu): "
        "approximate boundaries, see shared/data/README.md",
        "features": features,
    }
    path.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
