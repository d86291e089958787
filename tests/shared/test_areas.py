"""The administrative hierarchies as data (shared/data/README.md): Hanoi's two-tier structure since 1 July 2025
checked against Resolution 1656/NQ-UBTVQH15, the 2019 structure still loadable, their boundaries matching them,
and the code that groups by area (registries, simulators) following whichever is loaded."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from datetime import UTC, date, datetime
from itertools import pairwise

import pytest

from shared import areas
from shared.areas import CITY_CODE, boundaries_path, hierarchy_name, label_points, load_named


def _inside(point: tuple[float, float], geometry: dict) -> bool:
    """Even-odd ray casting over every ring of a (Multi)Polygon; ``point`` is (lon, lat)."""
    x, y = point
    polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
    inside = False
    for polygon in polygons:
        for ring in polygon:
            for (x1, y1), (x2, y2) in pairwise(ring):
                if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
                    inside = not inside
    return inside


def _features(name: str) -> dict[str, dict]:
    doc = json.loads(boundaries_path(name).read_text(encoding="utf-8"))
    codes = [f["properties"]["code"] for f in doc["features"]]
    assert len(codes) == len(set(codes)), "one feature per area"
    return {f["properties"]["code"]: f for f in doc["features"]}


def test_the_2025_hierarchy_has_the_resolutions_126_units_51_wards_and_75_communes():
    h = load_named("hanoi-2025")
    units = h.top_areas
    # Resolution 1656/NQ-UBTVQH15, art. 2: after the arrangement Hanoi has 126 commune-level units,
    # 51 wards and 75 communes (51 + 75 = 126).
    assert len(units) == 126
    assert Counter(a.kind for a in units) == {"ward": 51, "commune": 75}
    assert h.areas[CITY_CODE].level == "city" and all(a.parent == CITY_CODE for a in units)
    assert len({a.name for a in units}) == 126, "names are unique"
    assert all(len(a.code) == 5 and a.code.isdigit() for a in units), "national statistics codes (5 digits)"
    assert h.top_level == "commune" and not any(a.level == "district" for a in h.areas.values())
    # Spot checks against the resolution's list (art. 1: e.g. cl. 1 Hoàn Kiếm ward, cl. 2 Cửa Nam ward, ...;
    # the former districts' seats of Sóc Sơn, Ba Vì and Đông Anh became communes of the same name).
    kinds = {a.name: a.kind for a in units}
    for ward in ("Hoàn Kiếm", "Cửa Nam", "Ba Đình", "Văn Miếu - Quốc Tử Giám", "Hà Đông", "Sơn Tây"):
        assert kinds[ward] == "ward", ward
    for commune in ("Sóc Sơn", "Ba Vì", "Đông Anh", "Gia Lâm", "Thanh Trì", "Mê Linh"):
        assert kinds[commune] == "commune", commune
    # The units' areas add up to Hanoi's (3,359.8 km², 2024 statistical yearbook), within rounding.
    total = sum(float(r) for r in _column("hanoi_admin_units_2025.csv", "area_km2") if r)
    assert total == pytest.approx(3359.8, abs=1.0)


def _column(file: str, name: str) -> list[str]:
    import csv

    with open(areas.DATA / file, encoding="utf-8") as f:
        return [row[name] for row in csv.DictReader(f)]


def test_the_2019_hierarchy_still_loads_with_30_districts_and_584_communes():
    h = load_named("hanoi-2019")
    assert len(h.top_areas) == 30 and h.top_level == "district"
    assert len(h.communes) == 584
    assert h.district_of("BD-03") == "BD" and h.units_of("BD")[0].code == "BD-01"


@pytest.mark.parametrize("name", ["hanoi-2025", "hanoi-2019"])
def test_every_area_has_one_polygon_with_its_label_inside_and_the_codes_match(name):
    features = _features(name)
    codes = {a.code for a in load_named(name).top_areas}
    assert set(features) == codes
    for code, f in features.items():
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        lon, lat = f["properties"]["label"]
        assert 20.5 < lat < 21.4 and 105.2 < lon < 106.1, code  # within Hanoi's extent
        assert _inside((lon, lat), f["geometry"]), f"{code}: label outside its polygon"
        for polygon in (
            f["geometry"]["coordinates"]
            if f["geometry"]["type"] == "MultiPolygon"
            else [f["geometry"]["coordinates"]]
        ):
            assert all(ring[0] == ring[-1] and len(ring) >= 4 for ring in polygon), f"{code}: open ring"
    assert set(label_points(name)) == codes


def _km2(geometry: dict) -> float:
    """Area of a (Multi)Polygon in km²: the shoelace formula on lon/lat degrees, one degree of latitude being
    111.32 km and one of longitude 111.32 km x cos(latitude) (equirectangular at each ring's mean latitude;
    over Hanoi's 0.8° of latitude this is well under 0.1 % from the ellipsoidal area)."""
    polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
    total = 0.0
    for polygon in polygons:
        for i, ring in enumerate(polygon):
            twice = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in pairwise(ring))
            lat = sum(y for _, y in ring[:-1]) / (len(ring) - 1)
            km2 = abs(twice) / 2 * 111.32**2 * math.cos(math.radians(lat))
            total += km2 if i == 0 else -km2  # inner rings are holes
    return total


def test_the_area_formula_on_a_square_worked_by_hand():
    # A 0.01° x 0.01° square from 21° N, mean latitude 21.005°: 0.01° of latitude = 1.1132 km, 0.01° of
    # longitude = 1.1132 km x cos 21.005° (0.933549) = 1.039227 km, area 1.1132 x 1.039227 = 1.156867 km².
    square = [[105.0, 21.0], [105.01, 21.0], [105.01, 21.01], [105.0, 21.01], [105.0, 21.0]]
    assert _km2({"type": "Polygon", "coordinates": [square]}) == pytest.approx(1.156867, rel=1e-5)
    # With a 0.005° square hole in its corner (mean latitude 21.0025°): 0.5566 x 0.5566 x cos 21.0025°
    # (0.933565) = 0.289222 km² less, 1.156867 - 0.289222 = 0.867645 km².
    hole = [[105.0, 21.0], [105.0, 21.005], [105.005, 21.005], [105.005, 21.0], [105.0, 21.0]]
    assert _km2({"type": "Polygon", "coordinates": [square, hole]}) == pytest.approx(0.867645, rel=1e-5)


def test_the_2025_polygons_are_the_units_boundaries_not_an_approximation():
    """The polygons are OpenStreetMap's boundary relations of the 126 units (shared/data/README.md): each
    contains its unit's official centroid, and its area matches the official one of the resolution's list
    (vietnamadminunits 1.0.4, the CSV's ``area_km2``) to a few per cent; the Voronoi approximation they
    replace had a median error of 12 % and a 90th percentile of 36 %."""
    features = _features("hanoi-2025")
    h = load_named("hanoi-2025")
    outside = [a.code for a in h.top_areas if not _inside((a.lon, a.lat), features[a.code]["geometry"])]
    assert outside == [], "every official centroid lies in its own unit"
    official = dict(
        zip(
            _column("hanoi_admin_units_2025.csv", "code"),
            _column("hanoi_admin_units_2025.csv", "area_km2"),
            strict=True,
        )
    )
    errors = sorted(
        abs(_km2(features[a.code]["geometry"]) - float(official[a.code])) / float(official[a.code])
        for a in h.top_areas
    )
    assert len(errors) == 126
    assert errors[63] < 0.02, f"median area error {errors[63]:.1%}"
    assert errors[113] < 0.05, f"90th percentile {errors[113]:.1%}"
    # the largest, Hòa Lạc (OpenStreetMap 43.3 km², list 35.37 km²): the surveyed line and the list differ
    assert errors[-1] < 0.25, f"largest area error {errors[-1]:.1%}"


@pytest.mark.parametrize("name", ["hanoi-2025", "hanoi-2019"])
def test_the_areas_tile_hanoi_without_overshoot(name):
    """The top areas cover Hanoi once: their areas add up to the city's 3,359.8 km² (2024 statistical yearbook)
    within 0.5 % (the approximation's outline overshot by ~8 %, 3,615 km²)."""
    total = sum(_km2(f["geometry"]) for f in _features(name).values())
    assert total == pytest.approx(3359.8, rel=0.005)


@pytest.mark.parametrize("name", ["hanoi-2025", "hanoi-2019"])
def test_the_boundaries_carry_their_licence_and_attribution(name):
    """OpenStreetMap data is ODbL 1.0: the files name it and its credit, and the licence text is beside them."""
    doc = json.loads(boundaries_path(name).read_text(encoding="utf-8"))
    assert "© OpenStreetMap contributors" in doc["attribution"] and "ODbL" in doc["attribution"]
    assert doc["license"].startswith("ODbL-1.0")
    text = (areas.DATA / "ODbL-1.0.txt").read_text(encoding="utf-8")
    assert "Open Data Commons Open Database License (ODbL)" in text and "4.3 Notice for using output" in text
    if name == "hanoi-2025":
        relations = [f["properties"]["osm_relation"] for f in doc["features"]]
        assert len(set(relations)) == 126 and all(isinstance(r, int) and r > 0 for r in relations)


def test_the_setting_chooses_the_hierarchy_and_rejects_an_unknown_one(monkeypatch):
    # unset: the structure the city runs today, two-tier since 1 July 2025 (126 communes and wards)
    monkeypatch.delenv("IOC_ADMIN_HIERARCHY", raising=False)
    assert hierarchy_name() == "hanoi-2025" and len(areas.hanoi().top_areas) == 126
    assert areas.hanoi().top_level == "commune"
    # the 2019 three-level structure stays selectable: 30 districts over 584 communes and wards
    monkeypatch.setenv("IOC_ADMIN_HIERARCHY", "hanoi-2019")
    assert len(areas.hanoi().top_areas) == 30 and len(areas.hanoi().communes) == 584
    monkeypatch.setenv("IOC_ADMIN_HIERARCHY", "hanoi-2025")
    assert len(areas.hanoi().top_areas) == 126
    monkeypatch.setenv("IOC_ADMIN_HIERARCHY", "hanoi-1999")
    with pytest.raises(
        ValueError, match="IOC_ADMIN_HIERARCHY='hanoi-1999': expected one of hanoi-2019, hanoi-2025"
    ):
        hierarchy_name()


def test_registries_accept_two_tier_areas_and_refuse_a_commune_of_another_area():
    from services.kiosk import domain as kiosk
    from services.meter import domain as meter
    from services.meter.domain import MeterIn

    h = load_named("hanoi-2025")

    def meter_in(district, commune):
        return MeterIn(
            meter_id="M1",
            customers=1,
            district=district,
            commune=commune,
            feeder="F-1",
            transformer="T-1",
            installed_on=date(2020, 1, 1),
            interval_seconds=900,
        )

    # two-tier: the commune-level unit is the area, and the commune field names the same unit
    assert meter.check_meter_areas([(0, meter_in("00004", "00004"))], h) == []
    (err,) = meter.check_meter_areas([(0, meter_in("00004", "00008"))], h)
    assert (err.field, err.code) == ("commune", "unknown_area")
    (err,) = meter.check_meter_areas([(0, meter_in("BD", "BD-01"))], h)  # a 2019 code is unknown in 2025
    assert err.field == "district"
    # and the 2019 rules are unchanged
    assert meter.check_meter_areas([(0, meter_in("BD", "BD-01"))], load_named("hanoi-2019")) == []
    assert (
        meter.check_meter_areas([(0, meter_in("BD", "HK-01"))], load_named("hanoi-2019"))[0].field
        == "commune"
    )

    from shared.contracts.kiosk import KioskRegistered

    def kiosk_in(district, commune):
        return KioskRegistered(
            kiosk_id="KS-1",
            building="B",
            address="A",
            district=district,
            commune=commune,
            opening_hours=[{"days": [1, 2, 3, 4, 5], "open": "08:00", "close": "17:00"}],
            peripherals=["touchscreen"],
            software_version="1",
            in_service_since=datetime(2025, 7, 1, tzinfo=UTC),
            version=1,
        )

    assert kiosk.check_registration(kiosk_in("00004", "00004"), h) == []
    assert kiosk.check_registration(kiosk_in("00004", "00008"), h) == [
        ("commune", "the commune is not in that district")
    ]


def test_the_simulators_follow_the_loaded_hierarchy(monkeypatch):
    from services.meter import domain as meter
    from services.meter.domain import MeterIn
    from services.meter.simulator import Fleet
    from services.traffic.simulator import build_intersections

    monkeypatch.setenv("IOC_ADMIN_HIERARCHY", "hanoi-2025")
    h = areas.hanoi()
    fleet = Fleet(300, random.Random(1))
    assert {m["district"] for m in fleet.meters} == {a.code for a in h.top_areas}
    items = [(i, MeterIn.model_validate(m)) for i, m in enumerate(fleet.meters)]
    assert meter.check_meter_areas(items, h) == []

    intersections, _ = build_intersections(1.0, random.Random(2), 0.0)
    features = _features("hanoi-2025")
    assert {i["district"] for i in intersections} <= {a.code for a in h.top_areas}
    inside = sum(_inside((i["lon"], i["lat"]), features[i["district"]]["geometry"]) for i in intersections)
    assert inside >= 0.8 * len(intersections), "intersections lie in (or at the edge of) their area"
