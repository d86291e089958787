"""IOC_METER_MAX_BATCH_READINGS / _EVENTS / _METERS configure the batch limits (they were hard-coded, the settings
ignored): a batch over the setting is a 413 naming the limit, and nothing of it is accepted."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from services.meter.app import create_app
from services.meter.settings import MeterSettings
from shared.testing import auth, running_app
from tests.areas import BA_DINH, BA_DINH_UNIT
from tests.meter.conftest import at, issue_key

pytestmark = pytest.mark.integration


def meter(mid: str, gateway: str) -> dict:
    return {
        "meter_id": mid,
        "customers": 1,
        "district": BA_DINH,
        "commune": BA_DINH_UNIT,
        "feeder": f"F-{mid}",
        "installed_on": "2020-01-01",
        "interval_seconds": 900,
        "gateway": gateway,
    }


def reading(mid: str, minutes: int, value: float) -> dict:
    return {"meter_id": mid, "obis": "1-0:1.8.0", "interval_end": at(minutes), "value": value, "unit": "kWh"}


def refused(r, limit: int, noun: str) -> bool:
    body = r.json()
    return (
        r.status_code == 413
        and body["error"]["code"] == "batch_too_large"
        and f"at most {limit} {noun} per request" in body["error"]["message"]
    )


async def test_smaller_settings_refuse_bigger_batches_with_a_413_naming_the_limit(
    kafka_settings, db_settings, topics_ready
):
    settings = MeterSettings(
        kafka=kafka_settings,
        database=db_settings,
        max_batch_readings=2,
        max_batch_events=2,
        max_batch_meters=2,
    )
    app = create_app(settings)
    async with running_app(app) as client:
        gw = f"hes-{uuid.uuid4().hex[:8]}"
        admin = auth(await issue_key(app, ["meter:admin", "meter:read"]))
        ingest = auth(await issue_key(app, ["meter:ingest"], pid=gw))
        p = f"lim{uuid.uuid4().hex[:8]}-"
        a, b, c = p + "a", p + "b", p + "c"

        r = await client.post("/v1/meters", json={"items": [meter(m, gw) for m in (a, b, c)]}, headers=admin)
        assert refused(r, 2, "meters"), r.text
        r = await client.get(f"/v1/meters/{a}", headers=admin)
        assert r.status_code == 404  # nothing of the refused batch was registered
        r = await client.post("/v1/meters", json={"items": [meter(m, gw) for m in (a, b)]}, headers=admin)
        assert r.status_code == 200 and r.json()["accepted"] == 2, r.text

        three = [reading(a, 15, 1.0), reading(a, 30, 2.0), reading(b, 15, 1.0)]
        r = await client.post("/v1/readings", json={"items": three}, headers=ingest)
        assert refused(r, 2, "readings"), r.text
        # Nothing of the refused batch moved a register: the same readings, two at a time, are all new.
        r = await client.post("/v1/readings", json={"items": three[:2]}, headers=ingest)
        assert r.status_code == 200 and r.json()["accepted"] == 2 and r.json()["duplicates"] == 0, r.text

        events = [{"meter_id": a, "at": at(m), "raw_code": "1"} for m in (1, 2, 3)]
        r = await client.post("/v1/events", json={"items": events}, headers=ingest)
        assert refused(r, 2, "events"), r.text
        r = await client.post("/v1/events", json={"items": events[:2]}, headers=ingest)
        assert r.status_code == 200, r.text


def test_a_setting_above_the_request_schemas_ceiling_is_refused_at_start():
    # The OpenAPI document states 10,000 readings / events and 50,000 meters per request: a setting cannot
    # promise more than the schema accepts.
    for field, ceiling in (
        ("max_batch_readings", 10_000),
        ("max_batch_events", 10_000),
        ("max_batch_meters", 50_000),
    ):
        with pytest.raises(ValidationError):
            MeterSettings(**{field: ceiling + 1})
        assert getattr(MeterSettings(**{field: ceiling}), field) == ceiling
