"""Scoped live tails and streams (finding 3 of issue #40), over a real HTTP server.

A key with only ``city:read``, refused by the dossier service, streamed ``ioc.dossier.lifecycle`` and every
other topic through the city's ``/v1/tail``; every tail opened its own Kafka consumer with no cap (100 tails:
city memory 167 → 372 MB); the key travelled in the URL (``?access_token=``).
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import httpx
import pytest

from shared.embedded import free_port
from shared.testing import auth
from tests.city.conftest import SseReader, serve
from tests.security.conftest import build_app, present_service_names

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif("city" not in present_service_names(), reason="city service absent"),
]
PER_PRINCIPAL = 2
TOTAL = 3


@pytest.fixture(scope="module")
async def city(kafka_settings, db_settings, topics_ready, platform_pool):
    app = build_app(
        "city",
        kafka_settings,
        db_settings,
        sse_max_streams_per_principal=PER_PRINCIPAL,
        sse_max_streams=TOTAL,
        sse_heartbeat_seconds=1,
    )
    async with serve(app, free_port()) as base, httpx.AsyncClient(base_url=base, timeout=20) as http:
        yield http


async def hello(stack: AsyncExitStack, http: httpx.AsyncClient, path: str, **kw) -> httpx.Response:
    r = await stack.enter_async_context(http.stream("GET", path, **kw))
    if r.status_code == 200:
        r.sse = SseReader(r)  # kept: a collected reader closes its line iterator, and the stream with it
        await r.sse.until(lambda ev: ev.get("event") == "hello")
    return r


async def answer(http: httpx.AsyncClient, path: str, **kw) -> httpx.Response:
    """The answer's status, headers and (for a refusal) body; a granted stream is closed unread, so a test of
    a refusal fails at once instead of waiting on a stream that never ends."""
    async with http.stream("GET", path, **kw) as r:
        if r.status_code != 200:
            await r.aread()
        return r


async def test_the_tail_serves_only_topics_the_callers_scopes_cover(city, make_key):
    _, reader = await make_key(["city:read"], kind="operator", attributes={"role": "leader"})
    listed = {t["name"] for t in (await city.get("/v1/topics", headers=auth(reader))).json()["items"]}
    assert "ioc.city.kpis" in listed and "ioc.kiosk.alarms" in listed
    assert not listed & {
        "ioc.dossier.lifecycle",
        "ioc.deadletter",
        "ioc.platform.audit",
        "ioc.meter.readings",
    }
    for topic in ("ioc.dossier.lifecycle", "ioc.deadletter", "ioc.platform.audit", "ioc.meter.readings"):
        r = await answer(city, "/v1/tail", params={"topic": topic}, headers=auth(reader))
        assert r.status_code == 403, (topic, r.status_code)
        assert r.json()["error"]["details"][0]["field"] == "topic"
    # An agency's officer holding dossier:read still never tails other agencies' dossier events.
    _, officer = await make_key(
        ["city:read", "dossier:read"], kind="agency", attributes={"agency": "AG-X", "role": "leader"}
    )
    r = await answer(city, "/v1/tail", params={"topic": "ioc.dossier.lifecycle"}, headers=auth(officer))
    assert r.status_code == 403
    # The city's own figures are open to city:read, and dossier:read (unconfined) opens the lifecycle.
    _, analyst = await make_key(["city:read", "dossier:read"], kind="operator", attributes={"role": "leader"})
    async with AsyncExitStack() as stack:
        ok = await hello(stack, city, "/v1/tail", params={"topic": "ioc.city.kpis"}, headers=auth(reader))
        assert ok.status_code == 200
        ok = await hello(
            stack, city, "/v1/tail", params={"topic": "ioc.dossier.lifecycle"}, headers=auth(analyst)
        )
        assert ok.status_code == 200


async def test_no_key_in_urls_streams_take_a_single_use_ticket(city, make_key):
    _, key = await make_key(["city:read"], kind="operator", attributes={"role": "leader"})
    for path, params in (("/v1/stream", {}), ("/v1/tail", {"topic": "ioc.city.kpis"})):
        r = await answer(city, path, params={**params, "access_token": key})
        assert r.status_code == 401, path
    ticket = (await city.post("/v1/stream-tickets", headers=auth(key))).json()["ticket"]
    assert not ticket.startswith("ioc_")  # not a key
    async with AsyncExitStack() as stack:
        ok = await hello(stack, city, "/v1/stream", params={"ticket": ticket, "kinds": "kpi"})
        assert ok.status_code == 200
    again = await answer(city, "/v1/stream", params={"ticket": ticket, "kinds": "kpi"})
    assert again.status_code == 401  # single use
    assert (await answer(city, "/v1/stream", params={"ticket": "iot_" + uuid.uuid4().hex})).status_code == 401


async def test_concurrent_streams_are_capped_per_principal_and_in_total(city, make_key):
    keys = [
        (await make_key(["city:read"], kind="operator", attributes={"role": "leader"}))[1] for _ in range(3)
    ]
    async with AsyncExitStack() as stack:
        for _ in range(PER_PRINCIPAL):
            r = await hello(stack, city, "/v1/stream", params={"kinds": "kpi"}, headers=auth(keys[0]))
            assert r.status_code == 200
        over = await answer(city, "/v1/tail", params={"topic": "ioc.city.kpis"}, headers=auth(keys[0]))
        assert over.status_code == 429 and int(over.headers["retry-after"]) > 0
        # Another principal still gets its share, up to the process total.
        r = await hello(stack, city, "/v1/stream", params={"kinds": "kpi"}, headers=auth(keys[1]))
        assert r.status_code == 200
        full = await answer(city, "/v1/stream", params={"kinds": "kpi"}, headers=auth(keys[2]))
        assert full.status_code == 503 and int(full.headers["retry-after"]) > 0
    # Closed streams give their slots back.
    async with AsyncExitStack() as stack:
        r = await hello(stack, city, "/v1/stream", params={"kinds": "kpi"}, headers=auth(keys[2]))
        assert r.status_code == 200
