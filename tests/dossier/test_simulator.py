"""The simulator drives the real service over HTTP and leaves a realistic mix of dossiers behind."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import uvicorn

from services.dossier import simulator
from services.dossier.app import create_app
from services.dossier.settings import DossierSettings
from shared.embedded.tansu import free_port

pytestmark = pytest.mark.integration


async def test_simulator_creates_dossiers_through_the_api(
    kafka_settings, db_settings, topics_ready, make_key
):
    port = free_port()
    app = create_app(
        DossierSettings(kafka=kafka_settings, database=db_settings, deadline_scan_seconds=3600.0)
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(100):
            if server.started:
                break
            await asyncio.sleep(0.05)
        _, key = await make_key(["*"], kind="admin")
        stop = asyncio.Event()
        sim = asyncio.create_task(simulator.run(f"http://127.0.0.1:{port}", key, stop=stop, scale=20))
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}
        ) as client:

            async def simulated() -> list[dict]:
                items: list[dict] = []
                after = None
                while True:
                    page = (
                        await client.get(
                            "/v1/dossiers", params={"limit": 1000, **({"after": after} if after else {})}
                        )
                    ).json()
                    items += [d for d in page["items"] if d["code"].startswith("SIM")]
                    after = page["next_after"]
                    if not after:
                        return items

            # Until the simulator has produced a varied city (a loaded machine takes longer; no fixed sleep).
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                items = await simulated()
                statuses = {d["status"] for d in items}
                varied = (
                    len(items) >= 10
                    and {9, 10} & statuses
                    and {2, 4, 5, 6} & statuses
                    and len({d["channel"] for d in items}) >= 2
                    and len({d["agency_code"] for d in items}) >= 3
                )
                if varied or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(sim, 10)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
    assert len(items) >= 10
    statuses = {d["status"] for d in items}
    assert {9, 10} & statuses and ({2, 4, 5, 6} & statuses)  # finished and still-open dossiers
    assert len({d["channel"] for d in items}) >= 2 and len({d["agency_code"] for d in items}) >= 3


async def test_after_a_restart_open_dossiers_are_carried_on_not_abandoned():
    """The service kept an open dossier (status 4, processing, due in 3 days): the restarted simulator lists
    it and resolves and returns it later, when its time comes."""
    import random
    from datetime import UTC, date, datetime, timedelta

    import orjson

    posted: list[tuple[str, dict]] = []
    due = (datetime.now(UTC) + timedelta(days=3)).date()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            status = int(request.url.params["status"])
            items = (
                [
                    {"code": "SIMabc-0000001", "status": 4, "due_date": due.isoformat()},
                    {"code": "X-1", "status": 4},
                ]
                if status == 4
                else []
            )
            return httpx.Response(200, json={"items": items, "next_after": None})
        posted.append((request.url.path, orjson.loads(request.content)))
        return httpx.Response(200, json={})

    pending: list = []
    now = datetime.now(UTC)
    async with httpx.AsyncClient(base_url="http://d.test", transport=httpx.MockTransport(handler)) as client:
        assert await simulator.resume_open(client, random.Random(1), pending, now) == 1  # only synthetic ones
        await simulator.advance_due(client, pending, now)
        assert posted == []  # nothing due yet: the clock runs on
        await simulator.advance_due(client, pending, now + timedelta(days=5))
    assert [(p, b["action"]) for p, b in posted if p.endswith("/transitions")] == [
        ("/v1/dossiers/SIMabc-0000001/transitions", "resolve"),
        ("/v1/dossiers/SIMabc-0000001/transitions", "return_result"),
    ]
    assert isinstance(due, date)
