"""Alarm management through the real broker and database: a chattering source latches one alarm instead of
an alarm per toggle, shelving hides an alarm until its shelf expires, the rates are measured, and a KPI's
current value tells the running window from the last complete one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.city import publishing
from services.city.app import create_app
from services.city.settings import CitySettings
from shared.contracts.cloudevents import encode
from shared.kafka import EventPublisher
from shared.testing import auth, issue_test_key, running_app

from .conftest import KPI_FILE
from .test_api import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def city(test_domain, kafka_settings, db_settings, topics_ready, platform_pool):
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-am-{uuid.uuid4().hex[:8]}",
    )
    app = create_app(settings)
    pub = EventPublisher(kafka_settings, client_id="city-am-test")
    async with running_app(app) as client:
        _, key = await issue_test_key(
            app.state.ctx.pool,
            ["city:read", "city:operate"],
            kind="operator",
            attributes={"role": "operator"},
        )
        yield client, pub, app, auth(key)
    await pub.stop()


def notice(alarm_et, alarm_id, source, state, at):
    return encode(
        alarm_et,
        {
            "alarm_id": alarm_id,
            "domain": "kiosk",
            "alarm_type": "kiosk_offline",
            "state": state,
            "severity": "major",
            "source_id": source,
            "district": "TX",
            "commune": None,
            "at": at.isoformat(),
            "message": "kiosk silent",
        },
        source="/ioc/test",
    )


async def test_a_chattering_source_latches_one_alarm_and_is_measured(city, test_domain):
    client, pub, _, headers = city
    _, alarm_et = test_domain
    source = f"K-{uuid.uuid4().hex[:6]}"
    alarm_id = f"kiosk:kiosk_offline:{source}"
    t0 = datetime.now(UTC) - timedelta(minutes=2)
    toggles = ["raised", "cleared"] * 4  # 4 raises and 4 clears 5 s apart
    await pub.publish(
        [notice(alarm_et, alarm_id, source, s, t0 + timedelta(seconds=5 * i)) for i, s in enumerate(toggles)]
    )

    async def latched():
        r = await client.get("/v1/alarms", params={"state": "all", "limit": 1000}, headers=headers)
        mine = [a for a in r.json()["items"] if a["alarm_id"] == alarm_id]
        return mine if mine and mine[0]["source_state"] == "cleared" else None

    async def settled():
        r = await client.get("/v1/alarms/stats", params={"minutes": 10}, headers=headers)
        top = {t["alarm_id"]: t for t in r.json()["top"]}
        return r.json() if alarm_id in top and top[alarm_id]["raises"] == 4 else None

    stats = await eventually(settled)
    (alarm,) = await eventually(latched)
    # The third raise within 10 minutes made it chattering: it stays open (latched) though the source cleared
    assert (alarm["state"], alarm["chattering"], alarm["occurrences"]) == ("active", True, 3)
    assert {t["alarm_id"]: t for t in stats["top"]}[alarm_id]["chattering"] is True
    assert stats["budget_per_10_minutes"] == 1.0
    assert stats["suppressed"] >= 1  # the fourth raise was not annunciated
    assert alarm["raised_at"].endswith("Z")


async def test_shelving_hides_an_alarm_from_the_open_list_and_district_colour(city, test_domain):
    client, pub, _, headers = city
    _, alarm_et = test_domain
    source = f"K-{uuid.uuid4().hex[:6]}"
    alarm_id = f"kiosk:kiosk_offline:{source}"
    await pub.publish([notice(alarm_et, alarm_id, source, "raised", datetime.now(UTC))])

    async def listed(state):
        r = await client.get("/v1/alarms", params={"state": state, "limit": 1000}, headers=headers)
        return [a for a in r.json()["items"] if a["alarm_id"] == alarm_id]

    async def is_open():
        return await listed("open")

    await eventually(is_open)
    r = await client.post(f"/v1/alarms/{alarm_id}/shelve", json={"minutes": 0}, headers=headers)
    assert r.status_code == 422
    r = await client.post(
        f"/v1/alarms/{alarm_id}/shelve", json={"minutes": 30, "reason": "technician on site"}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert await listed("open") == []
    assert [a["shelve_reason"] for a in await listed("shelved")] == ["technician on site"]
    r = await client.post(f"/v1/alarms/{alarm_id}/unshelve", headers=headers)
    assert r.status_code == 200
    assert await listed("open")


async def test_a_running_window_comes_with_the_last_complete_one(city):
    client, pub, _, headers = city
    now = datetime.now(UTC)
    running = now.replace(minute=now.minute // 15 * 15, second=0, microsecond=0)
    code = "TX"
    kpi = "citytest.availability"

    def update(window, value):
        return publishing.kpi_updated(
            kpi=kpi,
            domain="citytest",
            scope_level="district",
            scope_code=code,
            window_start=window.isoformat(),
            window_seconds=900,
            value=value,
            numerator=value,
            denominator=1.0,
            unit="ratio",
            status="ok",
            target=0.98,
            partitions=1,
            now=datetime.now(UTC) + timedelta(hours=1),  # newer than any other test's update of this series
        )

    await pub.publish([update(running - timedelta(minutes=15), 0.97), update(running, 0.5)])

    async def current():
        r = await client.get("/v1/kpis", params={"district": code, "kpi": kpi}, headers=headers)
        rows = [x for x in r.json()["items"] if x["window_seconds"] == 900]
        return rows if rows and rows[0]["value"] == 0.5 else None

    (row,) = await eventually(current)
    assert row["running"] is True
    assert row["complete"]["value"] == 0.97
    assert row["complete"]["window_start"] == (running - timedelta(minutes=15)).isoformat().replace(
        "+00:00", "Z"
    )


async def test_a_late_consequence_reopens_the_incident_its_cause_opened(city, test_domain):
    """An outage's alarms cleared (incident closed), then a KPI judged on settled windows breaches 40 minutes
    after the outage began: outside the 15-minute sliding window, inside the 2-hour span: the same incident."""
    _, _, app, _ = city
    store = app.state.city_service
    t0 = datetime(2026, 1, 6, 3, 0, tzinfo=UTC)
    feeder = f"F-CM-{uuid.uuid4().hex[:4]}"

    def change(alarm_id, domain, kind, state, at):
        return {
            "alarm_id": alarm_id,
            "domain": domain,
            "alarm_type": kind,
            "state": state,
            "severity": "critical",
            "source_id": feeder,
            "district": "CM",
            "commune": None,
            "at": at.isoformat(),
            "message": kind,
        }

    outage = f"meter:feeder_outage:{feeder}"
    breach = f"city:kpi_breach:meter.read_success_rate:district:CM:{feeder}"
    await store.apply_alarm_changes([change(outage, "meter", "feeder_outage", "raised", t0)])
    await store.apply_alarm_changes(
        [change(outage, "meter", "feeder_outage", "cleared", t0 + timedelta(minutes=10))]
    )
    await store.apply_alarm_changes(
        [change(breach, "city", "kpi_breach", "raised", t0 + timedelta(minutes=40))]
    )
    async with app.state.ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT alarm_id, incident_id FROM alarms WHERE alarm_id = ANY($1::text[])", [outage, breach]
        )
        incident = {r["alarm_id"]: r["incident_id"] for r in rows}
        assert incident[outage] == incident[breach]
        state = await conn.fetchval("SELECT state FROM incidents WHERE incident_id=$1", incident[outage])
    assert state == "open"  # reopened by its late consequence
