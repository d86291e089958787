"""The kiosk simulator speaks the HTTP API with valid payloads (checked against the contracts)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import orjson

from services.kiosk import simulator
from services.kiosk.domain import JOURNEY_NEEDS
from services.kiosk.service import KioskImportItem, registration_problems
from shared.areas import hanoi
from shared.contracts.kiosk import HeartbeatReceived, PeripheralStatusChanged, SessionEnded
from tests.areas import HOAN_KIEM

MODELS = {
    "/v1/heartbeats": HeartbeatReceived,
    "/v1/peripherals": PeripheralStatusChanged,
    "/v1/sessions": SessionEnded,
}


async def test_simulator_registers_the_fleet_and_reports_over_http():
    posted: dict[str, list[dict]] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer ioc_test_key"
        items = orjson.loads(request.content)["items"]
        path = request.url.path
        for item in items:
            if path == "/v1/kiosks/import":
                entry = KioskImportItem.model_validate(item)
                assert registration_problems(entry.kiosk_id, entry) == []
            else:
                MODELS[path].model_validate(item)
        posted.setdefault(path, []).extend(items)
        return httpx.Response(200, json={"status": "accepted", "accepted": len(items), "rejected": []})

    stop = asyncio.Event()
    task = asyncio.create_task(
        simulator.run(
            "http://kiosk.test",
            "ioc_test_key",
            stop=stop,
            scale=0.05,
            tick_seconds=0.02,
            heartbeat_seconds=0.05,
            seed=7,
            transport=httpx.MockTransport(handler),
        )
    )
    await asyncio.sleep(0.6)
    stop.set()
    await asyncio.wait_for(task, 5)
    fleet = {i["kiosk_id"] for i in posted["/v1/kiosks/import"]}
    # 10 kiosks per top area at scale 1: 30 × 10 × 0.05 = 15 in 2019, 126 × 10 × 0.05 = 63 in 2025
    assert len(fleet) == {30: 15, 126: 63}[len(hanoi().top_areas)]
    assert {h["kiosk_id"] for h in posted["/v1/heartbeats"]} <= fleet
    assert len({h["kiosk_id"] for h in posted["/v1/heartbeats"]}) >= len(fleet) - 1
    printers = [p for p in posted["/v1/peripherals"] if p["peripheral"] == "printer"]
    assert len(printers) >= len(fleet) and all("paper" in p for p in printers)


def test_fleet_step_usage_paper_and_dark_kiosks():
    rng = random.Random(3)
    # 10:00 in Hanoi on a Monday: a busy hour.
    now = datetime(2024, 5, 6, 3, 0, tzinfo=UTC)
    fleet = simulator.build_fleet(60, rng, now - timedelta(hours=1))
    dark = fleet[0]
    dark.dark_at = now - timedelta(minutes=5)
    printer_kiosk = fleet[1]
    printer_kiosk.paper = 3
    step = simulator.FleetStep(rng, heartbeat_seconds=60)
    heartbeats, peripherals, sessions = step.step(fleet, now, tick_s=3600)
    beating = {h["kiosk_id"] for h in heartbeats}
    assert dark.kiosk_id not in beating and len(beating) >= 45  # some may be in a network drop
    for s in sessions:
        SessionEnded.model_validate(s)
    # About 40 sessions a kiosk a day, ~11% of them at 10:00: a few hundred for 60 kiosks in that hour.
    assert 150 < len(sessions) < 450
    outcomes = Counter(s["outcome"] for s in sessions)
    assert outcomes["completed"] > outcomes["abandoned"] + outcomes["failed"]
    assert not any(s["kiosk_id"] == dark.kiosk_id for s in sessions)
    for p in peripherals:
        PeripheralStatusChanged.model_validate(p)
    # The kiosk with 3 sheets left: a completed printing session uses 1-5 of them, and the printer reports
    # "out" exactly when they are gone (whichever sessions this hour's random draw gave it).
    printed = [
        s
        for s in sessions
        if s["kiosk_id"] == printer_kiosk.kiosk_id
        and s["outcome"] == "completed"
        and "printer" in JOURNEY_NEEDS[s["journey"]]
    ]
    out = any(p["kiosk_id"] == printer_kiosk.kiosk_id and p.get("paper") == "out" for p in peripherals)
    assert (printer_kiosk.paper < 3) == bool(printed)
    assert out == (printer_kiosk.paper == 0) == (printer_kiosk.paper_state == "out")


def test_a_scripted_power_outage_darkens_the_districts_kiosks_and_the_fleet_is_stable():
    now = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
    fleet = simulator.build_fleet(60, random.Random(simulator.FLEET_SEED), now)
    again = simulator.build_fleet(60, random.Random(simulator.FLEET_SEED), now)
    assert [k.kiosk_id for k in fleet] == [k.kiosk_id for k in again]  # a restart continues the same kiosks
    incidents = simulator.parse_incidents(f"{HOAN_KIEM}@2026-12-07T03:05:00Z/20")
    step = simulator.FleetStep(random.Random(1), 60.0)
    t = now + timedelta(minutes=6)
    simulator.black_out(fleet, incidents, t)
    heartbeats, _, _ = step.step(fleet, t, 5.0)
    beating = {h["kiosk_id"] for h in heartbeats}
    hk = {k.kiosk_id for k in fleet if k.district == HOAN_KIEM}
    assert hk and not hk & beating
    later = now + timedelta(minutes=26)  # the incident is over: they can report again
    simulator.black_out(fleet, incidents, later)
    assert all(k.reachable(later) for k in fleet if k.district == HOAN_KIEM and k.dark_at is None)
