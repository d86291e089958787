"""The city service through the real broker and database: KPIs stored with roll-ups and history, alarms
correlated into incidents, acknowledge/clear with authorization and audit, retention."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.city import publishing
from services.city import repository as repo
from services.city.app import create_app
from services.city.settings import CitySettings
from shared.areas import hierarchy_name
from shared.contracts.cloudevents import encode
from shared.kafka import EventPublisher
from shared.testing import auth, issue_test_key, running_app
from tests.areas import BA_DINH

from .conftest import KPI_FILE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def city(test_domain, kafka_settings, db_settings, topics_ready, platform_pool):
    """A running city service (own consumer group) and a publisher to feed it."""
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-test-{uuid.uuid4().hex[:8]}",
    )
    app = create_app(settings)
    pub = EventPublisher(kafka_settings, client_id="city-test")
    async with running_app(app) as client:
        yield client, pub, app
    await pub.stop()


async def eventually(check, timeout: float = 20.0):
    """Poll ``check`` (async, returns a truthy value when done) until it succeeds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.2)


@pytest.fixture
def make_key(city):
    """Keys issued through the service's pool: the session ``make_key`` fixture's pool has no JSON codec, so
    it cannot store principal attributes (the role)."""
    _, _, app = city

    async def make(scopes, **kw):
        return await issue_test_key(app.state.ctx.pool, scopes, **kw)

    return make


def kpi_event(kpi, level, code, window, value, *, n=None, d=None, status="ok", at=None, unit="ratio"):
    return publishing.kpi_updated(
        kpi=kpi,
        domain="citytest",
        scope_level=level,
        scope_code=code,
        window_start=window.isoformat(),
        window_seconds=900,
        value=value,
        numerator=n if n is not None else value,
        denominator=d,
        unit=unit,
        status=status,
        target=0.98,
        partitions=3,
        now=at or datetime.now(UTC),
    )


async def test_kpi_updates_are_stored_with_current_value_trend_history_and_rollups(city, make_key):
    client, pub, _ = city
    _, key = await make_key(["city:read"], kind="operator", attributes={"role": "leader"})
    kpi = f"citytest.k{uuid.uuid4().hex[:8]}"
    w0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)  # 17:00 in Hanoi
    t = datetime.now(UTC)
    await pub.publish(
        [
            kpi_event(kpi, "district", BA_DINH, w0, 0.90, status="critical", at=t),
            kpi_event(kpi, "district", BA_DINH, w0 + timedelta(minutes=15), 0.96, at=t),
            kpi_event(kpi, "district", BA_DINH, w0 + timedelta(minutes=30), 0.93, status="warning", at=t),
            # a newer update of the first window replaces it
            kpi_event(kpi, "district", BA_DINH, w0, 0.94, status="warning", at=t + timedelta(seconds=1)),
            kpi_event(kpi, "city", "HN", w0 + timedelta(minutes=30), 0.97, at=t),
        ]
    )

    async def stored():
        r = await client.get(
            "/v1/kpis", params={"kpi": kpi, "district": BA_DINH, "trend": 10}, headers=auth(key)
        )
        assert r.status_code == 200, r.text
        return r.json()["items"]

    (current,) = await eventually(stored)
    assert current["value"] == 0.93 and current["status"] == "warning" and current["scope_code"] == BA_DINH
    assert current["window_start"].startswith("2024-05-01T10:30")
    assert [v for _, v in current["trend"]] == [0.94, 0.96, 0.93]
    assert current["name"] == {"vi": kpi, "en": kpi}  # no definition for this random id: named by its id

    params = {
        "scope_level": "district",
        "scope_code": BA_DINH,
        "from": "2024-05-01T00:00:00Z",
        "to": "2024-05-02T00:00:00Z",
    }
    raw = (
        await client.get(f"/v1/kpis/{kpi}/history", params={**params, "step": "raw"}, headers=auth(key))
    ).json()
    assert raw["step"] == "raw" and raw["window_seconds"] == 900
    assert [p["value"] for p in raw["points"]] == [0.94, 0.96, 0.93]
    hour = (
        await client.get(f"/v1/kpis/{kpi}/history", params={**params, "step": "hour"}, headers=auth(key))
    ).json()
    (h,) = hour["points"]
    assert h["value"] == pytest.approx((0.94 + 0.96 + 0.93) / 3) and (h["min"], h["max"]) == (0.93, 0.96)
    day = (
        await client.get(f"/v1/kpis/{kpi}/history", params={**params, "step": "day"}, headers=auth(key))
    ).json()
    assert [p["t"][:19] for p in day["points"]] == ["2024-04-30T17:00:00"]  # the Hanoi day of 1 May, 00:00+07
    auto = (await client.get(f"/v1/kpis/{kpi}/history", params=params, headers=auth(key))).json()
    assert auto["step"] == "raw"

    bad = await client.get(f"/v1/kpis/{kpi}/history", params={**params, "step": "week"}, headers=auth(key))
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "step"
    backwards = await client.get(
        f"/v1/kpis/{kpi}/history",
        headers=auth(key),
        params={**params, "from": "2024-05-02T00:00:00Z", "to": "2024-05-01T00:00:00Z"},
    )
    assert backwards.status_code == 422

    districts = (await client.get("/v1/districts", headers=auth(key))).json()["items"]
    assert len(districts) == {"hanoi-2019": 30, "hanoi-2025": 126}[hierarchy_name()]
    bd = {d["code"]: d for d in districts}[BA_DINH]
    # its KPI statuses are counted; its colour follows open alarms only (managed, see docs/console.md)
    assert bd["kpis_critical"] + bd["kpis_warning"] >= 1 and bd["status"] != "unknown"
    detail = (await client.get(f"/v1/districts/{BA_DINH}", headers=auth(key))).json()
    assert any(k["kpi"] == kpi for k in detail["kpis"])
    assert (await client.get("/v1/districts/XX", headers=auth(key))).status_code == 404
    defs = (await client.get("/v1/kpis/definitions", headers=auth(key))).json()["items"]
    assert "citytest.availability" in {d["id"] for d in defs}

    metrics = (await client.get("/metrics")).text
    assert f'ioc_kpi_value{{kpi="{kpi}",scope_code="{BA_DINH}",scope_level="district"}} 0.93' in metrics


async def test_alarms_across_domains_in_one_district_form_one_incident_and_lifecycle_is_authorized(
    city, test_domain, make_key, platform_pool
):
    client, pub, _ = city
    _, alarm_et = test_domain
    tag = uuid.uuid4().hex[:6]
    now = datetime.now(UTC) - timedelta(minutes=10)
    # Districts of this test only: other tests' alarms in a real district within minutes would join the incident.
    here, there = f"T{tag}", f"U{tag}"

    def domain_alarm(domain, alarm_type, source, minutes, district=None, state="raised", severity="major"):
        return encode(
            alarm_et,
            {
                "alarm_id": f"{domain}:{alarm_type}:{source}",
                "domain": domain,
                "alarm_type": alarm_type,
                "state": state,
                "severity": severity,
                "source_id": source,
                "district": district or here,
                "commune": None,
                "at": (now + timedelta(minutes=minutes)).isoformat(),
                "message": f"{alarm_type} at {source}",
            },
            source="/ioc/test",
        )

    feeder = domain_alarm("meter", "feeder_outage", f"F-{tag}", 0, severity="critical")
    flash = domain_alarm("traffic", "signal_flash", f"I-{tag}", 2)
    kiosk = domain_alarm("kiosk", "kiosk_offline", f"K-{tag}", 4, severity="minor")
    elsewhere = domain_alarm("kiosk", "kiosk_offline", f"K2-{tag}", 4, district=there, severity="minor")
    await pub.publish([feeder, flash, kiosk, elsewhere])
    # the same kiosk alarm raised again is deduplicated
    await pub.publish([domain_alarm("kiosk", "kiosk_offline", f"K-{tag}", 5, severity="minor")])

    _, reader = await make_key(["city:read"], kind="operator", attributes={"role": "leader"})
    _, leader_operate = await make_key(
        ["city:read", "city:operate"], kind="operator", attributes={"role": "leader"}
    )
    op_id, operator = await make_key(
        ["city:read", "city:operate"], kind="operator", attributes={"role": "operator"}
    )

    feeder_id = f"meter:feeder_outage:F-{tag}"

    async def incident():
        r = await client.get("/v1/incidents", params={"district": here}, headers=auth(reader))
        for inc in r.json()["items"]:
            ids = {a["alarm_id"] for a in inc["alarms"]}
            if feeder_id in ids and len(ids) == 3:
                return inc
        return None

    inc = await eventually(incident)
    assert sorted(inc["domains"]) == ["kiosk", "meter", "traffic"] and inc["severity"] == "critical"
    kiosk_row = next(a for a in inc["alarms"] if a["source_id"] == f"K-{tag}")
    assert kiosk_row["occurrences"] == 1 and kiosk_row["state"] == "active"
    other = await client.get(
        "/v1/alarms", params={"district": there, "domain": "kiosk"}, headers=auth(reader)
    )
    assert (
        next(a for a in other.json()["items"] if a["source_id"] == f"K2-{tag}")["incident_id"]
        != inc["incident_id"]
    )

    path = f"/v1/alarms/{feeder_id}/acknowledge"
    assert (await client.post(path)).status_code == 401
    assert (await client.post(path, headers=auth("ioc_nope_nope"))).status_code == 401
    r = await client.post(path, headers=auth(reader))
    assert r.status_code == 403 and "city:operate" in r.json()["error"]["message"]
    r = await client.post(path, headers=auth(leader_operate))
    assert r.status_code == 403 and "leader" in r.json()["error"]["message"]
    r = await client.post(path, headers=auth(operator))
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["acknowledged_by"]) == ("acknowledged", op_id)
    again = await client.post(path, headers=auth(operator))
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"
    assert (
        await client.post("/v1/alarms/meter:nothing:here/acknowledge", headers=auth(operator))
    ).status_code == 404

    audit = await platform_pool.fetch(
        "SELECT principal, action, detail FROM platform.audit_log WHERE target=$1", feeder_id
    )
    assert [(a["principal"], a["action"]) for a in audit] == [(op_id, "alarm.acknowledge")]

    # clearing the incident clears its three alarms and closes it: before its procedure's mandatory steps only
    # a supervisor may, with a reason (docs/console.md, "Incident workflow")
    r = await client.post(f"/v1/incidents/{inc['incident_id']}/clear", headers=auth(operator))
    assert r.status_code == 409 and r.json()["error"]["details"][0]["procedure"] == "power-outage"
    sup_id, supervisor = await make_key(
        ["city:read", "city:operate", "city:supervise"], kind="operator", attributes={"role": "supervisor"}
    )
    r = await client.post(
        f"/v1/incidents/{inc['incident_id']}/clear-override",
        json={"reason": "test: the procedure is tested in test_incidents_api.py"},
        headers=auth(supervisor),
    )
    assert r.status_code == 200 and len(r.json()["alarms"]) == 3
    closed = (
        await client.get("/v1/incidents", params={"state": "closed", "district": here}, headers=auth(reader))
    ).json()["items"]
    assert inc["incident_id"] in {i["incident_id"] for i in closed}
    cleared = await client.get(
        "/v1/alarms", params={"state": "cleared", "domain": "meter"}, headers=auth(reader)
    )
    row = next(a for a in cleared.json()["items"] if a["alarm_id"] == feeder_id)
    assert row["cleared_by"] == sup_id and row["acknowledged_by"] == op_id


async def test_replays_stream_nothing_and_retention_keeps_day_rollups(city):
    _, _, app = city
    pool = app.state.ctx.pool
    kpi = f"citytest.r{uuid.uuid4().hex[:8]}"
    old = datetime.now(UTC) - timedelta(days=40)
    batch = [
        {
            "kpi": kpi,
            "domain": "citytest",
            "scope_level": "city",
            "scope_code": "HN",
            "window_start": old.isoformat(),
            "window_seconds": 900,
            "value": 5.0,
            "numerator": 5.0,
            "denominator": None,
            "unit": "kWh",
            "status": "ok",
            "target": None,
            "updated_at": old.isoformat(),
        }
    ]
    items, _ = await repo.store_kpi_updates(pool, batch)
    assert len(items) == 1 and items[0]["payload"]["kpi"] == kpi
    replayed, _ = await repo.store_kpi_updates(pool, batch)  # at-least-once delivery: a batch again
    assert replayed == []
    deleted = await repo.delete_expired(
        pool, datetime.now(UTC), raw_days=35, minute_days=30, hour_days=365, stream_hours=48
    )
    assert deleted["raw"] >= 1 and deleted["minute"] >= 1
    assert await pool.fetchval("SELECT count(*) FROM kpi_values WHERE kpi=$1", kpi) == 0
    assert await pool.fetchval("SELECT count(*) FROM kpi_minute WHERE kpi=$1", kpi) == 0
    assert await pool.fetchval("SELECT count(*) FROM kpi_hour WHERE kpi=$1", kpi) == 1
    assert await pool.fetchval("SELECT sum FROM kpi_day WHERE kpi=$1", kpi) == 5.0
