"""What the meter service accepts is never lost when the broker is away (docs/guarantees.md, "Meter writes").

Readings: the broker's acknowledgement is their durability point, so a batch the broker cannot take is refused
whole (503) and leaves no trace in the register cache: the gateway's retry is accepted as new, not dropped as a
duplicate. Registry changes: committed together with their events (the shared outbox), so one answered 503 is
still published once the broker is back, without any retry.

The broker "goes away" by giving the service a publisher pointed at a port nobody listens on (the session broker
is shared with other tests and is never stopped).
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.meter.app import create_app
from services.meter.service import MeterService
from services.meter.settings import MeterSettings
from shared.config import KafkaSettings
from shared.contracts.meter import READINGS_TOPIC, REGISTRY_TOPIC
from shared.embedded.tansu import free_port
from shared.kafka.producer import EventPublisher
from shared.testing import auth, read_topic
from tests.areas import BA_DINH, BA_DINH_UNIT
from tests.meter.conftest import at

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def app(kafka_settings, db_settings, topics_ready):
    # The registry refresh loop also publishes registry events left unpublished: run it often here.
    return create_app(MeterSettings(kafka=kafka_settings, database=db_settings, registry_refresh_seconds=0.2))


def service_of(app) -> MeterService:
    found = app.state.meter_service
    assert isinstance(found, MeterService)
    return found


def dead_publisher() -> EventPublisher:
    dead = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    return EventPublisher(dead, client_id="ioc-meter", timeout_s=1.0)


def meter(mid: str, gateway: str) -> dict:
    return {
        "meter_id": mid,
        "customers": 2,
        "district": BA_DINH,
        "commune": BA_DINH_UNIT,
        "feeder": f"F-{mid}",
        "installed_on": "2020-01-01",
        "interval_seconds": 900,
        "gateway": gateway,
    }


async def test_readings_refused_while_the_broker_is_away_are_accepted_on_retry_and_none_is_lost(
    app, client, keys, kafka_settings
):
    p = f"d{uuid.uuid4().hex[:8]}-"
    meters = [p + str(i) for i in range(3)]
    r = await client.post(
        "/v1/meters",
        json={"items": [meter(m, keys["gateway"]) for m in meters]},
        headers=auth(keys["admin"]),
    )
    assert r.status_code == 200, r.text
    items = [
        {"meter_id": m, "obis": "1-0:1.8.0", "interval_end": at(q), "value": 10.0 + q, "unit": "kWh"}
        for m in meters
        for q in (15, 30)
    ]
    service = service_of(app)
    live, service.publisher = service.publisher, dead_publisher()
    try:
        r = await client.post("/v1/readings", json={"items": items}, headers=auth(keys["ingest"]))
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
        # Nothing of the refused batch stays in the register cache (else the retry would be "duplicates").
        assert not [k for k in service.registers if k[0].startswith(p)]
    finally:
        await service.publisher.stop()
        service.publisher = live
    r = await client.post("/v1/readings", json={"items": items}, headers=auth(keys["ingest"]))
    assert r.status_code == 200, r.text
    assert (r.json()["accepted"], r.json().get("duplicates", 0)) == (6, 0)
    events = await read_topic(
        kafka_settings, READINGS_TOPIC.name, where=lambda e: e.data["meter_id"].startswith(p), expect=6
    )
    assert sorted((e.data["meter_id"], e.data["value"]) for e in events) == sorted(
        (i["meter_id"], i["value"]) for i in items
    )  # every accepted reading on the topic, once


async def test_a_registry_change_answered_503_is_published_when_the_broker_is_back_without_a_retry(
    app, client, keys, kafka_settings
):
    mid = f"d{uuid.uuid4().hex[:8]}-r"
    service = service_of(app)
    live, service.publisher = service.publisher, dead_publisher()
    try:
        r = await client.post(
            "/v1/meters", json={"items": [meter(mid, keys["gateway"])]}, headers=auth(keys["admin"])
        )
        assert r.status_code == 503, r.text  # no 2xx before the broker acknowledged
        assert mid in service.registry  # ... but the change is committed, with its event
    finally:
        await service.publisher.stop()
        service.publisher = live
    # The gateway gave up. The registry topic must still learn of the change (before the shared outbox the
    # database and the topic disagreed for good: subscribers never saw this meter).
    events = await read_topic(
        kafka_settings, REGISTRY_TOPIC.name, where=lambda e: e.data["meter_id"] == mid, expect=1
    )
    assert [(e.data["meter_id"], e.data["customers"]) for e in events] == [(mid, 2)]
    assert "gateway" not in events[0].data  # access control is not published
    for _ in range(50):  # marked sent just after the acknowledgement the topic read saw
        if await service.outbox.backlog() == 0:
            break
        await asyncio.sleep(0.1)
    assert await service.outbox.backlog() == 0
