"""The administrative hierarchies as data (shared/data/README.md): Hanoi's two-tier structure since 1 July 2025
checked against Resolution 1656/NQ-UBTVQH15, the 2019 structure still loadable, their boundaries matching them,
and the code that groups by area (registries, simulators) following whichever is loaded."""

from __future__ import annotations

import json
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


def test_the_2025_polygons_contain_their_official_centroids_mostly():
    """The polygons are approximations (shared/data/README.md): most official centroids still fall inside
    their own unit, which is what makes a click land on the right area."""
    features = _features("hanoi-2025")
    h = load_named("hanoi-2025")
    hits = sum(_inside((a.lon, a.lat), features[a.code]["geometry"]) for a in h.top_areas if a.lon and a.lat)
    assert hits >= 0.85 * 126


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
