"""The simulator drives the real service over HTTP: fleet registered, readings and events published."""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from services.meter import simulator
from shared.contracts.meter import EVENTS_TOPIC, READINGS_TOPIC
from shared.testing import auth, read_topic
from tests.areas import BA_DINH, HOAN_KIEM, top_code
from tests.meter.conftest import issue_key


def test_load_shape_peaks_in_the_evening():
    assert simulator.load_shape(19.5) > simulator.load_shape(7.5) > simulator.load_shape(3)


def test_the_shape_integral_matches_a_numerical_one():
    # midpoint rule over a day in 1-second steps (independent of the erf closed form)
    n = 86400
    numeric = sum(simulator.load_shape((k + 0.5) / 3600) for k in range(n)) / 3600
    assert simulator.DAY_SHAPE == pytest.approx(numeric, rel=1e-6)
    # 0.35 × 24 + 0.45 √(3π) + 0.9 √(4π) ≈ 12.97 when the bumps lie inside the day
    assert simulator.DAY_SHAPE == pytest.approx(
        0.35 * 24 + 0.45 * math.sqrt(3 * math.pi) + 0.9 * math.sqrt(4 * math.pi), rel=1e-3
    )


def test_registers_are_a_function_of_time_so_a_restarted_fleet_continues_them():
    """Two fleets built on two starts agree meter by meter; every quarter hour's energy is positive, so what
    the service stored before a restart is below what the simulator posts after it."""
    first = simulator.Fleet(300, random.Random(simulator.FLEET_SEED))
    again = simulator.Fleet(300, random.Random(simulator.FLEET_SEED))
    assert first.meters == again.meters and first.kw == again.kw
    t = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)
    for m in first.meters[:50]:
        mid = m["meter_id"]
        values = [
            simulator.register_at(first.register[mid], first.kw[mid], mid, t + timedelta(minutes=15 * k))
            for k in range(200)
        ]
        assert all(b > a for a, b in itertools.pairwise(values))
        stored = values[100]
        resumed = simulator.register_at(
            again.register[mid], again.kw[mid], mid, t + timedelta(minutes=15 * 101)
        )
        assert resumed > stored


@pytest.mark.parametrize("hierarchy", ["hanoi-2025", "hanoi-2019"])
def test_calibrated_outages_are_rare_and_a_scripted_incident_darkens_its_district(hierarchy, monkeypatch):
    monkeypatch.setenv("IOC_ADMIN_HIERARCHY", hierarchy)  # the 2019 districts stay simulated too
    hoan_kiem = top_code("Hoàn Kiếm")  # HK (2019), 00070 (2025)
    fleet = simulator.Fleet(4000, random.Random(simulator.FLEET_SEED))
    rng = random.Random(3)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    outages: dict = {}
    gasps = 0
    for k in range(96 * 30):  # 30 days of quarter hours
        t = start + timedelta(minutes=15 * k)
        _, events = simulator._interval(fleet, rng, t, t + timedelta(minutes=15), [], outages)
        gasps += sum(1 for e in events if e.get("raw_code") == "LAST_GASP")
    # SAIFI + MAIFI = 4.5 a year per feeder: ~0.37 interruptions a month for each customer, so about
    # 0.37 × 4,000 last gasps in 30 days (Poisson spread: well under 4,000)
    assert 0 < gasps < 4000
    t0 = start + timedelta(hours=1)
    scripted: dict = {}
    started: set = set()
    incident = [(hoan_kiem, t0, t0 + timedelta(minutes=20))]
    down = simulator._incident_events(fleet, incident, scripted, started, t0)
    hk = {m["meter_id"] for m in fleet.meters if m["district"] == hoan_kiem}
    assert hk
    assert {e["meter_id"] for e in down} == hk and all(e["raw_code"] == "LAST_GASP" for e in down)
    assert simulator._incident_events(fleet, incident, scripted, started, t0 + timedelta(minutes=5)) == []
    readings, _ = simulator._interval(fleet, rng, t0, t0 + timedelta(minutes=15), [], {}, set(scripted))
    assert not hk & {r["meter_id"] for r in readings}
    up = simulator._incident_events(fleet, incident, scripted, started, t0 + timedelta(minutes=20))
    assert {e["meter_id"] for e in up} == hk and {e["code"] for e in up} == {2}
    assert simulator.parse_incidents(f"{hoan_kiem}@2026-12-07T03:05:00Z/20, none") == [
        (hoan_kiem, datetime(2026, 12, 7, 3, 5, tzinfo=UTC), datetime(2026, 12, 7, 3, 25, tzinfo=UTC))
    ]


async def test_a_known_fleet_resumes_shortly_before_now():
    posted: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={})  # the fleet is registered already
        if request.url.path == "/v1/readings":
            posted.extend(orjson.loads(request.content)["items"])
        return httpx.Response(200, json={"accepted": 0, "rejected": []})

    stop = asyncio.Event()
    task = asyncio.create_task(
        simulator.run(
            "http://m.test",
            "k",
            stop=stop,
            scale=0.001,
            step_seconds=0.01,
            incidents=[],
            transport=httpx.MockTransport(handler),
        )
    )
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.wait_for(task, 10)
    first = min(datetime.fromisoformat(r["interval_end"].replace("Z", "+00:00")) for r in posted)
    assert datetime.now(UTC) - first <= simulator.RESUME_BACKFILL


@pytest.mark.integration
async def test_simulator_registers_fleet_and_posts_readings(app, client, kafka_settings):
    prefix = f"S{uuid.uuid4().hex[:6]}-"
    key = await issue_key(app, ["meter:admin", "meter:ingest", "meter:read"])
    stop = asyncio.Event()
    task = asyncio.create_task(
        simulator.run(
            "http://ioc.test",
            key,
            stop=stop,
            scale=0.005,
            step_seconds=0.05,
            seed=7,
            districts=[BA_DINH, HOAN_KIEM],
            prefix=prefix,
            transport=httpx.ASGITransport(app=app),
            # outages are rare at calibrated rates: a scripted one makes sure events flow
            incidents=[
                (HOAN_KIEM, datetime.now(UTC) - timedelta(hours=23), datetime.now(UTC) - timedelta(hours=22))
            ],
        )
    )
    await asyncio.sleep(4)
    stop.set()
    await asyncio.wait_for(task, 30)
    r = await client.get(f"/v1/meters/{prefix}0000001", headers=auth(key))
    assert r.status_code == 200 and r.json()["district"] in (BA_DINH, HOAN_KIEM)
    readings = await read_topic(
        kafka_settings, READINGS_TOPIC.name, where=lambda e: e.data["meter_id"].startswith(prefix)
    )
    # 100 meters (30 districts) or 420 (126 areas), several simulated quarter hours each
    assert len({e.data["meter_id"] for e in readings}) > 80
    assert len({e.data["interval_end"] for e in readings}) >= 3
    assert all(e.data["district"] in (BA_DINH, HOAN_KIEM) for e in readings)
    events = await read_topic(
        kafka_settings, EVENTS_TOPIC.name, where=lambda e: e.data["meter_id"].startswith(prefix)
    )
    assert events, "no meter events (outages/tamper) in several simulated intervals"
