"""The meter registry is read from PostgreSQL in pages (change order), at start-up and on every refresh: what another
replica registers or changes reaches this replica's cache whole, across page boundaries and equal change times."""

from __future__ import annotations

import uuid

import pytest

from services.meter.service import MeterRegistry, MeterService
from shared.testing import auth
from tests.areas import BA_DINH, BA_DINH_UNIT

pytestmark = pytest.mark.integration


def meter(mid: str, feeder: str, customers: int = 1) -> dict:
    return {
        "meter_id": mid,
        "customers": customers,
        "district": BA_DINH,
        "commune": BA_DINH_UNIT,
        "feeder": feeder,
        "installed_on": "2020-01-01",
        "interval_seconds": 900,
    }


async def test_a_paged_reload_and_refresh_see_every_meter_another_replica_wrote(app, client, keys):
    service: MeterService = app.state.meter_service
    prefix = f"PG{uuid.uuid4().hex[:6]}-"
    feeder_a, feeder_b = f"F-{prefix}A", f"F-{prefix}B"
    first = [meter(f"{prefix}{j:03d}", feeder_a) for j in range(23)]  # one request: rows of equal change time
    r = await client.post("/v1/meters", json={"items": first}, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text

    other = MeterRegistry(service.pool, page=7)  # 23 rows (and the module's others): several pages
    await other.reload()
    for m in first:
        assert other[m["meter_id"]] == service.registry[m["meter_id"]]
    assert other.feeder_sizes[feeder_a] == 23

    # The replica behind `client` writes more: new meters, one moved to another feeder, one changed otherwise.
    later = [meter(f"{prefix}{j:03d}", feeder_b) for j in range(23, 40)]
    later += [meter(f"{prefix}000", feeder_b), meter(f"{prefix}001", feeder_a, customers=5)]
    r = await client.post("/v1/meters", json={"items": later}, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text
    other.page = 3
    await other.refresh()
    for j in range(40):
        mid = f"{prefix}{j:03d}"
        assert other[mid] == service.registry[mid], mid
    assert other[f"{prefix}001"].customers == 5
    assert other.feeder_sizes[feeder_a] == 22 and other.feeder_sizes[feeder_b] == 18
    assert len([m for m in other if m.startswith(prefix)]) == 40
