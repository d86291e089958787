"""The registry's decommissioning and the reliability report endpoint over HTTP (real broker and PostgreSQL)."""

from __future__ import annotations

import math
import uuid

import pytest

from shared.contracts.meter import REGISTRY_TOPIC
from shared.testing import auth, read_topic
from tests.areas import area, unit

pytestmark = pytest.mark.integration


async def test_decommissioning_is_stored_published_and_refuses_later_readings(client, keys, kafka_settings):
    mid = f"d{uuid.uuid4().hex[:8]}"
    entry = {
        "meter_id": mid,
        "customers": 2,
        "district": area("BD"),
        "commune": unit("BD-01"),
        "feeder": "F1",
        "installed_on": "2020-01-01",
        "gateway": keys["gateway"],
    }
    r = await client.post("/v1/meters", json={"items": [entry]}, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text
    r = await client.post(
        f"/v1/meters/{mid}/decommission", json={"on": "2021-06-01"}, headers=auth(keys["admin"])
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    got = await read_topic(
        kafka_settings, REGISTRY_TOPIC.name, where=lambda e: e.data["meter_id"] == mid, expect=2
    )
    assert got[-1].data["decommissioned_on"] == "2021-06-01" and got[-1].data["customers"] == 2
    reading = {"meter_id": mid, "obis": "1-0:1.8.0", "interval_end": "2021-06-05T00:00:00Z", "value": 1.0}
    r = await client.post(
        "/v1/readings", json={"items": [{**reading, "unit": "kWh"}]}, headers=auth(keys["ingest"])
    )
    assert r.status_code == 422
    assert r.json()["rejected"][0]["code"] == "after_decommissioning"
    r = await client.post(
        "/v1/meters/nope-unknown/decommission", json={"on": "2021-06-01"}, headers=auth(keys["admin"])
    )
    assert r.status_code == 404
    r = await client.post(f"/v1/meters/{mid}/decommission", json={"on": "x"}, headers=auth(keys["admin"]))
    assert r.status_code == 422


async def test_reliability_report_with_and_without_major_event_days(client, keys):
    # History ln-values 0, 1, 2, 1 → alpha 1, beta sqrt(2/3), T_MED = exp(1 + 2.5 sqrt(2/3)) ≈ 20.93 min
    body = {
        "days": [
            {
                "day": "2024-05-01",
                "customers_interrupted": 10,
                "customer_minutes": 3000,
                "customers_served": 100,
            },
            {
                "day": "2024-05-02",
                "customers_interrupted": 5,
                "customer_minutes": 300,
                "customers_served": 100,
            },
        ],
        "history_saidi": [1.0, math.e, math.e**2, math.e],
    }
    r = await client.post("/v1/reliability/report", json=body, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["t_med_minutes"] == pytest.approx(math.exp(1 + 2.5 * math.sqrt(2 / 3)))
    assert got["major_event_days"] == ["2024-05-01"]  # SAIDI 30 > T_MED; the second day's 3 is not
    assert got["without_major_event_days"]["saidi_minutes"] == pytest.approx(3.0)
    assert got["all_days"]["saifi"] == pytest.approx(0.15)
    r = await client.post("/v1/reliability/report", json=body, headers=auth(keys["ingest"]))
    assert r.status_code == 403
