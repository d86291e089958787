"""Traffic registry writes go through the transactional outbox: a registry change made while the broker is away is
still answered 503 (2xx only once the broker acknowledged), but it is committed and its registry record reaches the
topic once the broker is back, without a retry (it used to be rolled back: the record never came)."""

from __future__ import annotations

import uuid

import pytest
import pytest_asyncio

from services.traffic.app import create_app
from services.traffic.settings import TrafficSettings
from shared.config import KafkaSettings
from shared.contracts.traffic import REGISTRY_TOPIC
from shared.kafka.producer import EventPublisher
from shared.testing import auth, issue_test_key, read_topic, running_app
from tests.areas import BA_DINH

pytestmark = pytest.mark.integration


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def app(kafka_settings, db_settings, topics_ready):
    settings = TrafficSettings(
        kafka=kafka_settings,
        database=db_settings,
        measures_store_group=uid("traffic-store"),
        store_measures=False,
    )
    app = create_app(settings)
    async with running_app(app) as client:
        app.state.test_client = client
        yield app


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def admin(app):
    _, key = await issue_test_key(app.state.ctx.pool, ["traffic:admin", "traffic:read"], kind="admin")
    return auth(key)


def intersection(iid: str, cid: str) -> dict:
    return {
        "intersection_id": iid,
        "name": "Kim Mã - Giảng Võ",
        "district": BA_DINH,
        "lat": 21.031,
        "lon": 105.821,
        "controller_id": cid,
        "phases": [2, 4, 6, 8],
    }


async def test_a_registry_change_refused_while_the_broker_is_away_is_committed_and_published_when_it_is_back(
    app, admin, kafka_settings
):
    client, ctx = app.state.test_client, app.state.ctx
    iid, cid = uid("I"), uid("C")
    live = ctx.publisher
    # A publisher whose broker does not answer (nothing listens on port 1), with a short timeout.
    away = EventPublisher(
        KafkaSettings(bootstrap_servers="127.0.0.1:1"), client_id="ioc-traffic-test", timeout_s=1.0
    )
    ctx.publisher = away
    try:
        r = await client.post("/v1/intersections", json={"items": [intersection(iid, cid)]}, headers=admin)
        assert r.status_code == 503 and r.json()["error"]["code"] == "broker_unavailable", r.text
        r = await client.get(f"/v1/intersections/{iid}", headers=admin)
        assert r.status_code == 200 and r.json()["controller_id"] == cid  # committed all the same
    finally:
        ctx.publisher = live
        await away.stop()
    app.state.traffic_service.outbox.notify()
    records = await read_topic(
        kafka_settings, REGISTRY_TOPIC.name, where=lambda e: e.data.get("intersection_id") == iid, expect=1
    )
    assert [(e.data["controller_id"], e.data["revision"]) for e in records] == [(cid, 1)]
