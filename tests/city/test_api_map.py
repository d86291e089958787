"""The console map's API through the real broker and database: the loaded hierarchy's boundaries, and per area
the selected KPI's status (the tiles' rule), its assets in alarm and open incidents, for either hierarchy."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.city.app import create_app
from services.city.settings import CitySettings
from shared.contracts.cloudevents import encode
from shared.kafka import EventPublisher
from shared.testing import auth, issue_test_key, running_app

from .conftest import KPI_FILE
from .test_api import eventually, kpi_event

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def city(test_domain, kafka_settings, db_settings, topics_ready, platform_pool):
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-map-{uuid.uuid4().hex[:8]}",
        map_tile_url="https://tiles.example.vn/{z}/{x}/{y}.png",
        map_tile_attribution="© tiles",
    )
    app = create_app(settings)
    pub = EventPublisher(kafka_settings, client_id="city-map-test")
    async with running_app(app) as client:
        _, key = await issue_test_key(
            app.state.ctx.pool, ["city:read"], kind="operator", attributes={"role": "operator"}
        )
        yield client, pub, key
    await pub.stop()


async def test_the_areas_are_the_loaded_hierarchys_with_the_map_settings(city, monkeypatch):
    client, _, key = city
    monkeypatch.delenv("IOC_ADMIN_HIERARCHY", raising=False)  # the default: the two-tier structure of 2025
    r = await client.get("/v1/map/areas", headers=auth(key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["hierarchy"], body["level"], body["count"]) == ("hanoi-2025", "commune", 126)
    assert body["tiles"] == {"url": "https://tiles.example.vn/{z}/{x}/{y}.png", "attribution": "© tiles"}
    assert body["attribution"] == "Boundaries © OpenStreetMap contributors (ODbL 1.0)"
    assert len(body["geojson"]["features"]) == 126
    props = {f["properties"]["code"]: f["properties"] for f in body["geojson"]["features"]}
    assert props["00004"]["name"] == "Ba Đình" and props["00004"]["kind"] == "ward"
    # and the districts endpoint lists the same top areas
    items = (await client.get("/v1/districts", headers=auth(key))).json()["items"]
    assert {i["code"] for i in items} == set(props)
    detail = await client.get("/v1/districts/00004", headers=auth(key))
    assert detail.status_code == 200 and detail.json()["name"] == "Ba Đình"

    monkeypatch.setenv("IOC_ADMIN_HIERARCHY", "hanoi-2019")  # the 2019 districts stay selectable
    body = (await client.get("/v1/map/areas", headers=auth(key))).json()
    assert (body["hierarchy"], body["level"], body["count"]) == ("hanoi-2019", "district", 30)
    bd = next(f for f in body["geojson"]["features"] if f["properties"]["code"] == "BD")
    assert bd["properties"]["name"] == "Ba Đình" and bd["properties"]["level"] == "district"
    items = (await client.get("/v1/districts", headers=auth(key))).json()["items"]
    assert len(items) == 30 and "BD" in {i["code"] for i in items}

    assert (await client.get("/v1/map/areas")).status_code == 401


async def test_status_colours_each_area_by_the_selected_kpi_with_its_assets_and_incidents(
    city, test_domain, monkeypatch
):
    client, pub, key = city
    _, alarm_et = test_domain
    monkeypatch.setenv("IOC_ADMIN_HIERARCHY", "hanoi-2025")
    now = datetime.now(UTC)
    # a window that has ended: the tiles' rule shows its status (an availability KPI, not a level one)
    done = now.replace(minute=now.minute // 15 * 15, second=0, microsecond=0) - timedelta(minutes=30)
    later = now + timedelta(days=2)  # newer than any other test's update of these series
    source = f"KS-{uuid.uuid4().hex[:6]}"
    await pub.publish(
        [
            kpi_event("citytest.availability", "district", "00004", done, 0.85, status="critical", at=later),
            kpi_event("citytest.availability", "district", "00008", done, 0.99, status="ok", at=later),
            encode(
                alarm_et,
                {
                    "alarm_id": f"kiosk:kiosk_offline:{source}",
                    "domain": "kiosk",
                    "alarm_type": "kiosk_offline",
                    "state": "raised",
                    "severity": "major",
                    "source_id": source,
                    "district": "00025",
                    "commune": "00025",
                    "at": now.isoformat(),
                    "message": "kiosk silent for 3 heartbeats",
                },
                source="/ioc/test",
            ),
        ]
    )

    async def coloured():
        r = await client.get("/v1/map/status", params={"kpi": "citytest.availability"}, headers=auth(key))
        assert r.status_code == 200, r.text
        body = r.json()
        ready = body["areas"]["00004"]["status"] == "critical" and any(
            a["source_id"] == source for a in body["assets"]
        )
        return body if ready else None

    body = await eventually(coloured)
    assert len(body["areas"]) == 126 and body["window_seconds"] == 900
    # other tests of the session may raise alarms in 00004: only the count's type is this test's
    tile = body["areas"]["00004"]
    assert (tile["status"], tile["value"]) == ("critical", 0.85) and isinstance(tile["open_alarms"], int)
    assert set(tile) == {"status", "value", "open_alarms"}
    assert body["areas"]["00008"]["status"] == "ok"
    assert body["areas"]["00025"]["open_alarms"] >= 1
    (asset,) = [a for a in body["assets"] if a["source_id"] == source]
    assert asset["district"] == "00025" and asset["severity"] == "major" and asset["domain"] == "kiosk"
    assert any(i["district"] == "00025" for i in body["incidents"]), "the alarm opened an incident there"

    # without a KPI: the districts' rule, the worst of the area's KPIs and open alarms
    body = (await client.get("/v1/map/status", headers=auth(key))).json()
    assert body["kpi"] is None and body["areas"]["00025"]["status"] == "critical"

    r = await client.get("/v1/map/status", params={"kpi": "nope.nothing"}, headers=auth(key))
    assert r.status_code == 404 and r.json()["error"]["details"] == [{"kpi": "nope.nothing"}]
