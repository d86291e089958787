"""The meter service on the Apache Kafka cluster: app, keys, a registered fleet and readings to post.

Each scenario uses a district of its own (``DISTRICTS``) so the KPI totals its processors publish for that
district come from its readings alone (KPI observations carry no test id; the readings topic is shared).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.meter.app import create_app
from services.meter.settings import MeterSettings
from shared.config import KafkaSettings
from shared.testing import auth
from tests.areas import area, first_unit

# Quarter hours well in the past, hour-aligned, and all inside one Hanoi day (UTC+7): a day window holds them all.
BASE = (datetime.now(UTC) - timedelta(hours=7)).replace(minute=0, second=0, microsecond=0)
if (BASE + timedelta(hours=7)).hour >= 18:
    BASE -= timedelta(hours=6)
QUARTERS = 24

DISTRICTS = {
    "failover": area("BV"),
    "outage": area("CM"),
    "kill9": area("DP"),
    "duplicates": area("GL"),
    "poison": area("HD"),
}


def at(minutes: float) -> str:
    return (BASE + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def meter_app(kafka: KafkaSettings, database):
    return create_app(MeterSettings(kafka=kafka, database=database, registry_refresh_seconds=1.0))


async def issue_keys(app) -> dict[str, str]:
    store = app.state.ctx.keys
    gateway = f"hes-{uuid.uuid4().hex[:8]}"
    admin = f"adm-{uuid.uuid4().hex[:8]}"
    await store.upsert_principal(gateway, "gateway", gateway, ["meter:ingest"], {})
    await store.upsert_principal(admin, "gateway", admin, ["meter:admin", "meter:read"], {})
    return {
        "gateway": gateway,
        "ingest": await store.issue_key(gateway),
        "admin": await store.issue_key(admin),
    }


async def register_fleet(client, keys: dict, district: str, n: int) -> list[str]:
    prefix = f"k{uuid.uuid4().hex[:8]}-"
    meters = [
        {
            "meter_id": f"{prefix}{i}",
            "customers": 1,
            "district": district,
            "commune": first_unit(district),
            "feeder": f"F-{prefix}{i % 4}",
            "installed_on": "2020-01-01",
            "interval_seconds": 900,
            "gateway": keys["gateway"],
        }
        for i in range(n)
    ]
    r = await client.post("/v1/meters", json={"items": meters}, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text
    return [m["meter_id"] for m in meters]


def readings(meters: list[str], quarter: int) -> list[dict]:
    """One energy-import reading per meter for quarter ``quarter`` (1-based), registers growing 0.25 kWh."""
    return [
        {
            "meter_id": m,
            "obis": "1-0:1.8.0",
            "interval_end": at(15 * quarter),
            "value": 1000.0 + 0.25 * quarter,
            "unit": "kWh",
        }
        for m in meters
    ]


def reading_id(item: dict) -> str:
    """The CloudEvents id the meter service gives a reading (services/meter/publishing.py)."""
    return f"r:{item['meter_id']}:{item['obis']}:{item['interval_end']}"
