"""The simulator drives the real service over HTTP: fleet registered, readings and events published."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from services.meter import simulator
from shared.contracts.meter import EVENTS_TOPIC, READINGS_TOPIC
from shared.testing import auth, read_topic
from tests.meter.conftest import issue_key

pytestmark = pytest.mark.integration


def test_load_shape_peaks_in_the_evening():
    assert simulator.load_shape(19.5) > simulator.load_shape(7.5) > simulator.load_shape(3)


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
            districts=["BD", "HK"],
            prefix=prefix,
            transport=httpx.ASGITransport(app=app),
        )
    )
    await asyncio.sleep(4)
    stop.set()
    await asyncio.wait_for(task, 30)
    r = await client.get(f"/v1/meters/{prefix}0000001", headers=auth(key))
    assert r.status_code == 200 and r.json()["district"] in ("BD", "HK")
    readings = await read_topic(
        kafka_settings, READINGS_TOPIC.name, where=lambda e: e.data["meter_id"].startswith(prefix)
    )
    # 100 meters, several simulated quarter hours each
    assert len({e.data["meter_id"] for e in readings}) > 80
    assert len({e.data["interval_end"] for e in readings}) >= 3
    assert all(e.data["district"] in ("BD", "HK") for e in readings)
    events = await read_topic(
        kafka_settings, EVENTS_TOPIC.name, where=lambda e: e.data["meter_id"].startswith(prefix)
    )
    assert events, "no meter events (outages/tamper) in several simulated intervals"
