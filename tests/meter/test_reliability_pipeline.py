"""End to end through the broker: registry and meter events into the meter service's API, the meter KPI
processor, then the city processor; IEEE 1366 day indices of the merged city view against values worked out by
hand (IEEE 1366-2012: SAIFI = Σ N_i / N_T, SAIDI = Σ r_i N_i / N_T, CAIDI = SAIDI / SAIFI, MAIFI = Σ IM_i N_mi /
N_T; 5 minutes or less is momentary; N_T = every customer served in the area)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.city.domain import load_definitions
from services.city.processors import CityKpiProcessor
from services.meter.domain import window_start
from services.meter.processors import MeterKpiProcessor
from shared.contracts.meter import KPI_EVENT
from shared.stream.runtime import ProcessorRuntime
from shared.testing import auth, read_topic
from tests.areas import area, first_unit
from tests.meter.conftest import BASE, at

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# No other test registers meters in these districts, so their indices come from this test alone.
ALIVE, HEAD_END_DOWN = area("UH"), area("TX")


async def test_day_indices_from_the_api_through_the_meter_and_city_processors(client, keys, kafka_settings):
    p = f"r{uuid.uuid4().hex[:8]}-"

    def meter(name, district, customers):
        return {
            "meter_id": p + name,
            "customers": customers,
            "district": district,
            "commune": first_unit(district),
            "feeder": f"F-{p}{district}",
            "installed_on": "2020-01-01",
            "interval_seconds": 900,
            "gateway": keys["gateway"],
        }

    # UH: U1 2 customers, U2 1, U3 3, U4 4 (never reports), U5 7 (decommissioned today) → N_T = 10
    # TX: X1 5, X2 5: its head-end is down, nothing arrives                                   → N_T = 10
    meters = [meter("U1", ALIVE, 2), meter("U2", ALIVE, 1), meter("U3", ALIVE, 3), meter("U4", ALIVE, 4)]
    meters += [meter("U5", ALIVE, 7), meter("X1", HEAD_END_DOWN, 5), meter("X2", HEAD_END_DOWN, 5)]
    r = await client.post("/v1/meters", json={"items": meters}, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text
    hanoi_day = (BASE + timedelta(hours=7)).date().isoformat()
    r = await client.post(
        f"/v1/meters/{p}U5/decommission", json={"on": hanoi_day}, headers=auth(keys["admin"])
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    r = await client.get(f"/v1/meters/{p}U5", headers=auth(keys["admin"]))
    assert r.json()["decommissioned_on"] == hanoi_day

    def event(name, minutes, code, raw=None):
        return {"meter_id": p + name, "at": at(minutes), "code": code, "raw_code": raw or str(code)}

    batches = [
        [
            event("U1", 10, 1),
            event("U1", 10.5, None, "LAST_GASP"),  # a duplicate last gasp
            event("U2", 50, 2),  # U2's power-up reaches IOC before its power-down
            event("U3", 20, 1),
            event("U3", 25, 2),  # exactly 5 minutes: momentary
        ],
        [event("U2", 30, 1), event("U1", 40, 2)],
    ]
    for items in batches:
        r = await client.post("/v1/events", json={"items": items}, headers=auth(keys["ingest"]))
        assert r.status_code == 200 and r.json()["rejected"] == [], r.text

    meter_proc = type("MeterKpiE2E", (MeterKpiProcessor,), {"name": f"meter-kpi-{p[:-1]}"})()
    city_proc = CityKpiProcessor(load_definitions(), topics=(KPI_EVENT.topic,))
    city_proc.name = f"city-kpi-{p[:-1]}"
    async with (
        ProcessorRuntime(meter_proc, kafka_settings).running() as meter_rt,
        ProcessorRuntime(city_proc, kafka_settings).running() as city_rt,
    ):
        await meter_rt.drain(timeout=40)
        await city_rt.drain(timeout=40)

    day = datetime.fromtimestamp(window_start(int(BASE.timestamp()), 86400), UTC)

    def mine(e):
        d = e.data
        return (
            d["scope_code"] in (ALIVE, HEAD_END_DOWN)
            and d["window_seconds"] == 86400
            and d["kpi"].startswith("meter.")
            and datetime.fromisoformat(d["window_start"].replace("Z", "+00:00")) == day
        )

    out = await read_topic(kafka_settings, "ioc.city.kpis", where=mine, expect=10)
    latest = {(e.data["kpi"], e.data["scope_code"]): e.data for e in out}

    def index(kpi, code):
        d = latest[(kpi, code)]
        return d["value"], d["numerator"], d["denominator"]

    # UH sustained: U1 2 customers × 30 min (+10 → +40 min), U2 1 customer × 20 min (+30 → +50 min)
    # Σ N_i = 3, Σ r_i N_i = 60 + 20 = 80; momentary: U3 3 customers × 1
    assert index("meter.saifi", ALIVE) == (pytest.approx(3 / 10), 3.0, 10.0)
    assert index("meter.saidi_minutes", ALIVE) == (pytest.approx(8.0), pytest.approx(80.0), 10.0)
    assert index("meter.caidi_minutes", ALIVE) == (pytest.approx(80 / 3), pytest.approx(80.0), 3.0)
    assert index("meter.maifi", ALIVE) == (pytest.approx(3 / 10), 3.0, 10.0)
    assert index("meter.maifi_e", ALIVE) == (pytest.approx(3 / 10), 3.0, 10.0)
    # TX: nothing arrived; its customers are served all the same
    assert index("meter.saifi", HEAD_END_DOWN) == (0.0, 0.0, 10.0)
    assert index("meter.saidi_minutes", HEAD_END_DOWN) == (0.0, 0.0, 10.0)
