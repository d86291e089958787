"""End to end: readings and events in through the API, KPIs and alarms out of the processors (ProcessorRuntime)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from services.meter.domain import window_start
from services.meter.processors import FeederOutageProcessor, MeterKpiProcessor
from shared.contracts.meter import ALARM_EVENT, KPI_EVENT
from shared.stream.runtime import ProcessorRuntime
from shared.testing import auth, read_topic
from tests.areas import area, first_unit
from tests.meter.conftest import BASE, at

pytestmark = pytest.mark.integration

# No other meter test registers meters here, so this district's KPIs come from this test alone.
DISTRICT = area("SS")


def merged(
    events, kpi: str, level: str, code: str, seconds: int, window_start: str
) -> tuple[float, float | None]:
    """Latest observation per partition, summed across partitions (what the city layer does)."""
    latest = {}
    for e in events:
        d = e.data
        if (d["kpi"], d["scope_level"], d["scope_code"], d["window_seconds"], d["window_start"]) == (
            kpi,
            level,
            code,
            seconds,
            window_start,
        ):
            latest[d["partition"]] = (d["numerator"], d["denominator"])
    assert latest, f"no observation of {kpi} {code} {window_start}"
    num = sum(n for n, _ in latest.values())
    dens = [d for _, d in latest.values() if d is not None]
    return num, (sum(dens) if dens else None)


async def test_kpis_and_alarms_from_the_api_through_the_processors(client, keys, kafka_settings):
    p = f"t{uuid.uuid4().hex[:8]}-"
    feeder = f"F-{p}"
    meters = [
        {
            "meter_id": f"{p}{i}",
            "customers": c,
            "district": DISTRICT,
            "commune": first_unit(DISTRICT),
            "feeder": feeder,
            "installed_on": "2020-01-01",
            "interval_seconds": 900,
            "gateway": keys["gateway"],
        }
        for i, c in enumerate([1, 1, 2, 6])
    ]  # N_T = 10 customers, 4 meters on one feeder
    r = await client.post("/v1/meters", json={"items": meters}, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text
    readings = []
    for i, (start, per_quarter) in enumerate(
        [(100.0, 0.5), (200.0, 1.0), (300.0, 0.25)]
    ):  # meter 3 never reads
        for q in range(3):
            readings.append(
                {
                    "meter_id": f"{p}{i}",
                    "obis": "1-0:1.8.0",
                    "interval_end": at(15 * (q + 1)),
                    "value": start + q * per_quarter,
                    "unit": "kWh",
                }
            )
    r = await client.post("/v1/readings", json={"items": readings}, headers=auth(keys["ingest"]))
    assert r.json()["accepted"] == 9, r.text
    # Meters 0-2 lose supply at 00:05; 0 back after 2 min (momentary), 1 and 2 after 30 min; 3 (6 customers)
    # after 10 min. Meter 1 also reports its cover opened.
    events = [{"meter_id": f"{p}{i}", "at": at(5), "code": 1, "raw_code": "1"} for i in range(4)]
    events += [
        {"meter_id": f"{p}0", "at": at(7), "code": 2, "raw_code": "2"},
        {"meter_id": f"{p}3", "at": at(15), "code": 2, "raw_code": "2"},
        {"meter_id": f"{p}1", "at": at(35), "code": 2, "raw_code": "2"},
        {"meter_id": f"{p}1", "at": at(20), "code": 44, "raw_code": "44"},
    ]
    r = await client.post("/v1/events", json={"items": events}, headers=auth(keys["ingest"]))
    assert r.json()["accepted"] == 8, r.text

    kpi_proc = type("MeterKpiTest", (MeterKpiProcessor,), {"name": f"meter-kpi-{p[:-1]}"})()
    feeder_proc = type("FeederTest", (FeederOutageProcessor,), {"name": f"meter-feeder-{p[:-1]}"})(0.5, 3)
    async with (
        ProcessorRuntime(kpi_proc, kafka_settings).running() as rt1,
        ProcessorRuntime(feeder_proc, kafka_settings).running() as rt2,
    ):
        await asyncio.gather(rt1.drain(timeout=40), rt2.drain(timeout=40))

    kpis = await read_topic(
        kafka_settings, KPI_EVENT.topic, where=lambda e: e.data["scope_code"] in (DISTRICT, "HN")
    )
    q0 = at(0)
    # day windows are Hanoi days (from 17:00 UTC)
    day = (
        datetime.fromtimestamp(window_start(int(BASE.timestamp()), 86400), UTC)
        .isoformat()
        .replace("+00:00", "Z")
    )
    # Energy: the first read of each meter has no delta; quarters 2 and 3 give 0.5 + 1.0 + 0.25 each.
    assert merged(kpis, "meter.energy_kwh", "district", DISTRICT, 900, at(15))[0] == pytest.approx(1.75)
    assert merged(kpis, "meter.energy_kwh", "district", DISTRICT, 86400, day)[0] == pytest.approx(3.5)
    assert merged(kpis, "meter.read_success_rate", "district", DISTRICT, 900, q0) == (3.0, 4.0)
    assert merged(kpis, "meter.interval_completeness", "district", DISTRICT, 86400, day) == (9.0, 4 * 96.0)
    # Sustained: meter 1 (1 customer × 30 min), meter 2 still out, meter 3 (6 customers × 10 min).
    assert merged(kpis, "meter.saifi", "district", DISTRICT, 900, q0) == (7.0, 10.0)
    assert merged(kpis, "meter.saidi_minutes", "district", DISTRICT, 900, q0) == (pytest.approx(90.0), 10.0)
    assert merged(kpis, "meter.caidi_minutes", "district", DISTRICT, 900, q0) == (pytest.approx(90.0), 7.0)
    assert merged(kpis, "meter.maifi", "district", DISTRICT, 900, q0) == (1.0, 10.0)
    assert merged(kpis, "meter.tamper_alarms", "district", DISTRICT, 86400, day)[0] == 1.0
    supply = [
        e.data
        for e in kpis
        if e.data["kpi"] == "meter.meters_without_supply" and e.data["scope_code"] == DISTRICT
    ]
    latest = {}
    for d in supply:
        latest[d["partition"]] = d["numerator"]
    assert sum(latest.values()) == 1.0  # meter 2

    alarms = await read_topic(
        kafka_settings, ALARM_EVENT.topic, where=lambda e: e.data["source_id"] in (feeder, f"{p}1")
    )
    got = sorted((a.data["alarm_type"], a.data["state"]) for a in alarms)
    # 4 of 4 feeder meters down → raised; back to 1 of 4 → cleared. Meter 1's cover → tamper raised.
    assert got == [
        ("feeder_outage", "cleared"),
        ("feeder_outage", "raised"),
        ("tamper_meter_cover", "raised"),
    ]
