"""The simulators size their fleets per top area of the loaded hierarchy, and script incidents only in its areas."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import pytest

from shared.simulation import default_incident_area, fleet_size, parse_incidents


def test_an_area_gets_as_many_assets_as_a_2019_district(monkeypatch):
    from services.kiosk.simulator import KIOSKS_PER_CITY, build_fleet
    from services.meter.simulator import METERS_PER_CITY, Fleet
    from services.traffic.simulator import build_intersections

    # 2019, ioc up's scale 0.2: 20,000 × 0.2 = 4,000 meters, 300 × 0.2 = 60 kiosks and 60 intersections over
    # 30 districts (133.3 meters and 2 of each other per district, what docs/simulation.md calibrates for)
    assert fleet_size(METERS_PER_CITY, 0.2, 30) == pytest.approx(4_000)
    assert fleet_size(KIOSKS_PER_CITY, 0.2, 30) == pytest.approx(60)
    # 2025: the same per area over 126 communes and wards: 126 × 133.3 = 16,800 meters, 126 × 2 = 252 of each
    assert fleet_size(METERS_PER_CITY, 0.2, 126) == pytest.approx(16_800)
    assert fleet_size(KIOSKS_PER_CITY, 0.2, 126) == pytest.approx(252)

    monkeypatch.setenv("IOC_ADMIN_HIERARCHY", "hanoi-2025")
    per_area = Counter(m["district"] for m in Fleet(16_800, random.Random(1)).meters)
    assert len(per_area) == 126 and min(per_area.values()) >= 133
    items, _ = build_intersections(0.2, random.Random(2), 0.0)
    assert len(items) == 252 and set(Counter(i["district"] for i in items).values()) == {2}
    kiosks = build_fleet(252, random.Random(3), datetime(2026, 1, 5, tzinfo=UTC))
    assert set(Counter(k.district for k in kiosks).values()) == {2}


@pytest.mark.parametrize(("hierarchy", "code"), [("hanoi-2025", "00070"), ("hanoi-2019", "HK")])
def test_the_default_incident_is_in_hoan_kiem_and_an_unknown_area_is_refused(hierarchy, code, monkeypatch):
    monkeypatch.setenv("IOC_ADMIN_HIERARCHY", hierarchy)
    # Hoàn Kiếm: district HK in the 2019 seed, ward 00070 in the 2025 list (shared/data/*.csv)
    assert default_incident_area() == code
    assert parse_incidents(f"{code}@2026-12-07T03:05:00Z/15")[0][0] == code
    other = "HK" if code == "00070" else "00070"  # the other hierarchy's code: an incident nowhere
    with pytest.raises(ValueError, match=f"'{other}' is not a top area of the loaded hierarchy.*{hierarchy}"):
        parse_incidents(f"{other}@2026-12-07T03:05:00Z/15")
