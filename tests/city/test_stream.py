"""The live stream over a real HTTP server: Server-Sent Events resumable with Last-Event-ID across a server
restart, header auth (no key in the URL), and the live tail of a topic with a text filter."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.city import publishing
from services.city.app import create_app
from services.city.settings import CitySettings
from shared.embedded import free_port
from shared.kafka import EventPublisher
from shared.testing import auth, issue_test_key

from .conftest import KPI_FILE, SseReader, serve

pytestmark = pytest.mark.integration


# Recent windows: the service's retention job deletes old raw values at start-up, and a replay would then
# legitimately store (and stream) them again.
_BASE = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)


def _update(kpi: str, minutes: int):
    w = _BASE + timedelta(minutes=15 * minutes)
    return publishing.kpi_updated(
        kpi=kpi,
        domain="citytest",
        scope_level="city",
        scope_code="HN",
        window_start=w.isoformat(),
        window_seconds=900,
        value=float(minutes),
        numerator=float(minutes),
        denominator=None,
        unit="kWh",
        status="ok",
        target=None,
        partitions=1,
        now=datetime.now(UTC),
    )


async def test_sse_resumes_after_a_server_restart_with_last_event_id(
    test_domain, kafka_settings, db_settings, topics_ready
):
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-sse-{uuid.uuid4().hex[:8]}",
        sse_heartbeat_seconds=1,
    )
    kpi = f"citytest.s{uuid.uuid4().hex[:8]}"
    mine = lambda ev: ev.get("event") == "kpi" and ev["data"]["kpi"] == kpi  # noqa: E731
    pub = EventPublisher(kafka_settings, client_id="city-sse-test")
    port = free_port()
    app = create_app(settings)
    async with serve(app, port) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        _, key = await issue_test_key(
            app.state.ctx.pool, ["city:read"], kind="operator", attributes={"role": "leader"}
        )
        assert (await http.get("/v1/stream")).status_code == 401
        async with http.stream("GET", "/v1/stream", params={"kinds": "kpi"}, headers=auth(key)) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            sse = SseReader(r)
            await sse.until(lambda ev: ev.get("event") == "hello")
            await pub.publish([_update(kpi, 0), _update(kpi, 1)])
            first = await sse.until(mine)
            second = await sse.until(mine)
    assert [first["data"]["value"], second["data"]["value"]] == [0.0, 1.0]
    assert int(second["id"]) > int(first["id"])

    # While the server is down, more updates arrive on the topic.
    await pub.publish([_update(kpi, 2), _update(kpi, 3)])
    # (a fresh consumer group: the embedded broker makes a rejoin of the old one wait for its session timeout;
    # the new group replays the topic from the start, which must not stream anything twice)
    app = create_app(settings.model_copy(update={"consumer_group": settings.consumer_group + "-2"}))
    async with serve(app, port) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        headers = {"Last-Event-ID": second["id"], **auth(key)}
        async with http.stream("GET", "/v1/stream", params={"kinds": "kpi"}, headers=headers) as r:
            sse = SseReader(r)
            resumed = [await sse.until(mine), await sse.until(mine)]
        assert [e["data"]["value"] for e in resumed] == [2.0, 3.0], (
            second,
            resumed,
        )  # nothing lost, nothing repeated
        assert int(resumed[0]["id"]) > int(second["id"])

        # the live tail: only new records of the topic that contain the filter text
        async with http.stream(
            "GET", "/v1/tail", params={"topic": "ioc.city.kpis", "filter": kpi.upper()}, headers=auth(key)
        ) as r:
            sse = SseReader(r)
            await sse.until(lambda ev: ev.get("event") == "hello")
            await asyncio.sleep(0.5)
            await pub.publish([_update(f"citytest.other{uuid.uuid4().hex[:6]}", 9), _update(kpi, 4)])
            rec = await sse.until(lambda ev: ev.get("event") == "record")
        assert rec["data"]["type"] == "ioc.city.kpi.updated.v1" and rec["data"]["data"]["value"] == 4.0
        assert (await http.get("/v1/tail", params={"topic": "nope"}, headers=auth(key))).status_code == 404
    await pub.stop()
