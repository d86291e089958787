"""Fixtures of the city tests: a private test domain ("citytest") and its KPI definitions.

The city layer must work with any subset of domains, so its tests publish into their own domain's topics
(registered here and removed from the catalogue afterwards, so other tests see the real catalogue).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
import uvicorn

from shared.contracts.base import EVENT_TYPES, TOPICS, EventType
from shared.contracts.common import domain_topics
from shared.kpis import KpiDefinition, load_file

KPI_FILE = Path(__file__).parent / "kpis.yaml"
TEST_DOMAIN = "citytest"


@pytest.fixture(scope="module")
def test_domain() -> tuple[EventType, EventType]:
    """(KPI observed type, alarm changed type) of the test domain, registered for this module."""
    kpi_et, alarm_et = domain_topics(TEST_DOMAIN, owner=TEST_DOMAIN)
    yield kpi_et, alarm_et
    for et in (kpi_et, alarm_et):
        EVENT_TYPES.pop(et.type, None)
        TOPICS.pop(et.topic, None)


@pytest.fixture(scope="session")
def definitions() -> dict[str, KpiDefinition]:
    return {d.id: d for d in load_file(KPI_FILE)}


@asynccontextmanager
async def serve(app, port: int) -> AsyncIterator[str]:
    """Run ``app`` under a real uvicorn server on ``port`` in this event loop; yield its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped during start-up")
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


class SseReader:
    """Reads ``id``/``event``/``data`` events from an open httpx streaming response."""

    def __init__(self, response):
        self.lines = response.aiter_lines()

    async def next_event(self, timeout: float = 20.0) -> dict:
        async def read() -> dict:
            event: dict = {}
            async for line in self.lines:
                if not line:
                    if "data" in event:
                        return event
                    event = {}
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                event[name] = orjson.loads(value) if name == "data" else value
            raise EOFError("stream ended")

        return await asyncio.wait_for(read(), timeout)

    async def until(self, predicate, timeout: float = 20.0) -> dict:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            ev = await self.next_event(max(0.1, deadline - asyncio.get_running_loop().time()))
            if predicate(ev):
                return ev
