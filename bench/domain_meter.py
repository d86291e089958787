"""Meter benchmark paths: batch ingest through the meter service, and the meter KPI processor."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import httpx
import orjson

from bench.domain_common import bearer, issue_key, measure_ingest, start_service
from shared.config import KafkaSettings

QUARTER = 900
OBIS_IMPORT = "1-0:1.8.0"


def district_codes() -> list[str]:
    from shared.areas import hanoi

    return sorted(a.code for a in hanoi().districts)


def commune_of(district: str) -> str:
    """A commune a registry entry in ``district`` may name under the default hierarchy: its first commune (2019),
    the area itself (2025)."""
    from shared.areas import hanoi

    return hanoi().units_of(district)[0].code


def meter_registry(prefix: str, meters: int, gateway: str | None = None) -> list[dict]:
    """``meters`` registry entries spread over Hanoi's districts (a commune of each), 4 feeders a district,
    reported for by the head-end principal ``gateway``."""
    districts = district_codes()
    communes = {d: commune_of(d) for d in districts}
    out = []
    for j in range(meters):
        d = districts[j % len(districts)]
        out.append(
            {
                "meter_id": f"{prefix}{j:06d}",
                "customers": 1 + j % 3,
                "district": d,
                "commune": communes[d],
                "feeder": f"F-{d}-{j % 4}",
                "installed_on": "2020-01-01",
                "interval_seconds": QUARTER,
                "gateway": gateway,
            }
        )
    return out


def reading_batches(prefix: str, meters: int, batches: int, *, first_end: int) -> list[bytes]:
    """One request body per quarter hour: every meter's import register at that interval end (JSON bytes)."""
    bodies = []
    for k in range(batches):
        end = datetime.fromtimestamp(first_end + k * QUARTER, UTC).isoformat().replace("+00:00", "Z")
        items = [
            {
                "meter_id": f"{prefix}{j:06d}",
                "obis": OBIS_IMPORT,
                "interval_end": end,
                "value": 1000.0 + (j % 100) + k * 0.25,
                "unit": "kWh",
            }
            for j in range(meters)
        ]
        bodies.append(orjson.dumps({"items": items}))
    return bodies


async def ingest(
    kafka: KafkaSettings, database_url: str, n: int, batch: int = 10_000, concurrency: int = 4
) -> dict:
    """Readings/s of one meter service process through ``POST /v1/readings`` (``batch`` readings a request,
    ``concurrency`` requests in flight), with the service's CPU and peak memory."""
    batches = max(1, n // batch)
    svc = await start_service("meter", kafka.bootstrap_servers, database_url)
    try:
        _, admin = await issue_key(database_url, ["meter:admin"])
        # A head-end system's key (not meter:admin): every reading goes through the ownership check.
        head_end, ingest_key = await issue_key(database_url, ["meter:ingest"])
        prefix = f"B{uuid.uuid4().hex[:6]}-"
        now = int(time.time())
        # Every interval end in the past (the service rejects future ones), on the quarter-hour grid.
        first_end = now - now % QUARTER - (batches + 2) * QUARTER
        bodies = reading_batches(prefix, batch, batches, first_end=first_end)
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=120) as client:
            r = await client.post(
                "/v1/meters",
                content=orjson.dumps({"items": meter_registry(prefix, batch, head_end)}),
                headers=bearer(admin),
            )
            r.raise_for_status()
            # Warm-up request (first publish fetches metadata, first validation builds caches): not measured.
            warm = reading_batches(prefix, batch, 1, first_end=first_end - QUARTER)
            (
                await client.post("/v1/readings", content=warm[0], headers=bearer(ingest_key))
            ).raise_for_status()
        out = await measure_ingest(
            svc, "/v1/readings", bodies, bearer(ingest_key), concurrency=concurrency, unit="readings"
        )
        out.update({"batch": batch, "not_accepted": len(bodies) * batch - out["events"]})
        return out
    finally:
        svc.stop()
