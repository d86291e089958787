"""Server timeouts (finding 6 of issue #40): slow request heads and bodies cannot hold connections.

200 slow-loris sockets were held 40-60 s each with no server timeout. Served as ``ioc serve`` serves
(``shared/server.py``), a real uvicorn server on a free port.
"""

from __future__ import annotations

import asyncio

import pytest
import uvicorn

from shared.embedded import free_port
from tests.security.conftest import build_app, endpoints, present_service_names

pytestmark = pytest.mark.integration
SERVICES = present_service_names()


@pytest.fixture
async def server(kafka_settings, db_settings, topics_ready, monkeypatch):
    from shared.server import uvicorn_options

    monkeypatch.setenv("IOC_HEADER_TIMEOUT_SECONDS", "0.5")
    name = "kiosk" if "kiosk" in SERVICES else SERVICES[0]
    app = build_app(name, kafka_settings, db_settings, body_timeout_seconds=0.5)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options())
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        assert not task.done()
        await asyncio.sleep(0.05)
    write = next(e for e in endpoints(app) if e.method == "POST")
    try:
        yield port, write.concrete_path()
    finally:
        srv.should_exit = True
        async with asyncio.timeout(15):
            await task


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded: a test must not hang)."""
    async with asyncio.timeout(10):
        return await reader.read()


async def test_a_request_head_trickled_slowly_is_cut_off(server):
    port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ...and never the blank line
    await writer.drain()
    assert await read_all(reader) == b""  # closed by the server, nothing answered
    writer.close()
    # A normal request on a new connection is served.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await read_all(reader)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_request_body_trickled_slowly_gets_408(server):
    port, path = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    writer.write(head.encode() + b'{"items": [')  # 11 of 100 bytes, then nothing
    await writer.drain()
    answer = await read_all(reader)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer
    writer.close()


@pytest.mark.skipif("city" not in SERVICES, reason="city service absent")
async def test_a_stop_is_not_held_by_open_live_streams(
    kafka_settings, db_settings, topics_ready, make_key, monkeypatch
):
    """Fair shutdown: streams in flight get the graceful period, then they are cancelled and the server stops
    (a live stream otherwise lasts ``sse_max_seconds``, ten minutes)."""
    import httpx

    from shared.server import uvicorn_options
    from shared.testing import auth
    from tests.city.conftest import SseReader

    monkeypatch.setenv("IOC_GRACEFUL_SHUTDOWN_SECONDS", "1")
    app = build_app("city", kafka_settings, db_settings)
    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **uvicorn_options())
    )
    task = asyncio.create_task(srv.serve())
    while not srv.started:
        assert not task.done()
        await asyncio.sleep(0.05)
    _, key = await make_key(["city:read"], kind="operator", attributes={"role": "leader"})
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
        async with http.stream("GET", "/v1/stream", params={"kinds": "kpi"}, headers=auth(key)) as r:
            assert r.status_code == 200
            reader = SseReader(r)  # kept: a collected reader would close the stream itself
            await reader.until(lambda ev: ev.get("event") == "hello")
            srv.should_exit = True
            async with asyncio.timeout(30):  # the graceful period plus the lifespan's own stop
                await task
