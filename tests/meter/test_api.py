"""The meter service through the real broker and database: registry, readings, events, auth."""

from __future__ import annotations

import uuid

import pytest

from shared.contracts.meter import (
    EVENTS_TOPIC,
    FEEDER_SUPPLY_TOPIC,
    INTERRUPTIONS_TOPIC,
    READINGS_TOPIC,
    REGISTRY_TOPIC,
)
from shared.testing import auth, read_topic
from tests.areas import BA_DINH, BA_DINH_UNIT, HOAN_KIEM, HOAN_KIEM_UNIT
from tests.meter.conftest import BASE, at

pytestmark = pytest.mark.integration


def meter(mid: str, **kw) -> dict:
    return {
        "meter_id": mid,
        "customers": 1,
        "district": BA_DINH,
        "commune": BA_DINH_UNIT,
        "feeder": f"F-{mid}",
        "installed_on": "2020-01-01",
        "interval_seconds": 900,
        **kw,
    }


async def register(client, keys, *meters, gateway: str | None = None):
    """Register ``meters`` (reported for by ``gateway``, default: the module's ``keys["ingest"]`` principal)."""
    items = [{"gateway": gateway or keys["gateway"], **m} for m in meters]
    r = await client.post("/v1/meters", json={"items": items}, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text
    return r.json()


def mine(prefix: str):
    return lambda e: e.data["meter_id"].startswith(prefix)


async def test_readings_validated_published_and_rejections_explained(client, keys, kafka_settings):
    p = f"t{uuid.uuid4().hex[:8]}-"
    await register(client, keys, meter(p + "a"), meter(p + "b", customers=3))
    items = [
        {"meter_id": p + "a", "obis": "1-0:1.8.0", "interval_end": at(15), "value": 100.0, "unit": "kWh"},
        {"meter_id": p + "a", "obis": "1-0:1.8.0", "interval_end": at(30), "value": 100.5, "unit": "kWh"},
        {
            "meter_id": p + "b",
            "obis": "1-0:1.8.0",
            "interval_end": at(15),
            "value": 7000,
            "unit": "Wh",
            "quality": "estimated",
        },
        {"meter_id": p + "zz", "obis": "1-0:1.8.0", "interval_end": at(15), "value": 1.0, "unit": "kWh"},
        {"meter_id": p + "a", "obis": "1-0:1.8.0", "interval_end": at(45), "value": 99.0, "unit": "kWh"},
        {"meter_id": p + "b", "obis": "1-0:1.8.0", "interval_end": "yesterday", "value": 1.0, "unit": "kWh"},
        {"meter_id": p + "b", "obis": "1-0:1.8.0", "interval_end": at(30), "value": "7", "unit": "kWh"},
    ]
    r = await client.post("/v1/readings", json={"items": items}, headers=auth(keys["ingest"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "partial" and body["accepted"] == 3
    rejected = {x["index"]: (x["id"], x["field"], x["code"]) for x in body["rejected"]}
    assert rejected == {
        3: (p + "zz", "meter_id", "unknown_entity"),
        4: (p + "a", "value", "register_backwards"),
        5: (p + "b", "interval_end", "invalid"),
        6: (p + "b", "value", "invalid"),
    }
    assert all(x["reason"] for x in body["rejected"])

    events = await read_topic(kafka_settings, READINGS_TOPIC.name, where=mine(p), expect=3)
    got = sorted(
        (e.data["meter_id"], e.data["interval_end"], e.data["value"], e.data["delta"]) for e in events
    )
    assert got == [
        (p + "a", at(15), 100.0, None),
        (p + "a", at(30), 100.5, 0.5),
        (p + "b", at(15), 7.0, None),
    ]
    b = next(e for e in events if e.data["meter_id"] == p + "b")
    assert b.key == p + "b" and b.type == "ioc.meter.reading.recorded.v1"
    assert (b.data["district"], b.data["customers"], b.data["quality"]) == (BA_DINH, 3, "estimated")

    # A resend of the same batch: the good ones are duplicates, nothing new is published.
    r = await client.post("/v1/readings", json={"items": items[:3]}, headers=auth(keys["ingest"]))
    assert r.json() == {"status": "accepted", "accepted": 0, "duplicates": 3, "rejected": []}
    events = await read_topic(kafka_settings, READINGS_TOPIC.name, where=mine(p))
    assert len(events) == 3


async def test_all_rejected_is_422_and_nothing_published(client, keys, kafka_settings):
    p = f"t{uuid.uuid4().hex[:8]}-"
    items = [{"meter_id": p + "x", "obis": "1-0:1.8.0", "interval_end": at(15), "value": 1.0, "unit": "kWh"}]
    r = await client.post("/v1/readings", json={"items": items}, headers=auth(keys["ingest"]))
    assert r.status_code == 422
    assert r.json()["rejected"][0]["code"] == "unknown_entity"
    r = await client.post("/v1/readings", json={"items": []}, headers=auth(keys["ingest"]))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert await read_topic(kafka_settings, READINGS_TOPIC.name, where=mine(p)) == []


async def test_power_events_give_interruptions_and_supply_changes(client, keys, kafka_settings):
    p = f"t{uuid.uuid4().hex[:8]}-"
    await register(client, keys, meter(p + "a", customers=2), meter(p + "b"))
    r = await client.post(
        "/v1/events",
        headers=auth(keys["ingest"]),
        json={
            "items": [
                {"meter_id": p + "a", "at": at(1), "code": 1, "raw_code": "1"},
                {"meter_id": p + "b", "at": at(1), "raw_code": "LAST_GASP"},
                {"meter_id": p + "b", "at": at(3), "raw_code": "POWER_RESTORED"},
                {"meter_id": p + "a", "at": at(2), "raw_code": "REV_ENERGY"},
                {"meter_id": p + "a", "at": at(2), "raw_code": "BOGUS"},
            ]
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 4
    assert [(x["index"], x["code"]) for x in r.json()["rejected"]] == [(4, "unknown_code")]
    # the power-up of meter a arrives in a later request
    r = await client.post(
        "/v1/events",
        headers=auth(keys["ingest"]),
        json={
            "items": [
                {"meter_id": p + "a", "at": at(61), "code": 2, "raw_code": "2"},
                {"meter_id": p + "a", "at": at(61), "code": 2, "raw_code": "2"},
            ]
        },
    )
    assert r.json()["accepted"] == 1 and r.json()["duplicates"] == 1

    evs = await read_topic(kafka_settings, EVENTS_TOPIC.name, where=mine(p), expect=5)
    assert sorted((e.data["meter_id"][-1], e.data["event"], e.data["raw_code"]) for e in evs) == [
        ("a", "power_down", "1"),
        ("a", "power_up", "2"),
        ("a", "reverse_energy_detected", "REV_ENERGY"),
        ("b", "power_down", "LAST_GASP"),
        ("b", "power_up", "POWER_RESTORED"),
    ]
    ints = await read_topic(kafka_settings, INTERRUPTIONS_TOPIC.name, where=mine(p), expect=2)
    assert sorted(
        (i.data["meter_id"][-1], i.data["kind"], i.data["duration_seconds"], i.data["customers"])
        for i in ints
    ) == [("a", "sustained", 3600.0, 2), ("b", "momentary", 120.0, 1)]
    sup = await read_topic(kafka_settings, FEEDER_SUPPLY_TOPIC.name, where=mine(p), expect=4)
    assert sorted((s.key, s.data["supply"]) for s in sup) == [
        (f"F-{p}a", "lost"),
        (f"F-{p}a", "restored"),
        (f"F-{p}b", "lost"),
        (f"F-{p}b", "restored"),
    ]


async def test_csv_import_and_meter_replacement_resets_register(client, keys, kafka_settings):
    p = f"t{uuid.uuid4().hex[:8]}-"
    gw = keys["gateway"]
    csv_text = (
        "meter_id,customers,district,commune,feeder,transformer,installed_on,interval_seconds,gateway\n"
        f"{p}a,1,{HOAN_KIEM},{HOAN_KIEM_UNIT},F1,,2020-01-01,900,{gw}\n"
        f"{p}b,2,{HOAN_KIEM},{BA_DINH_UNIT},F1,,2020-01-01,900,{gw}\n"  # a unit of another area
        f"{p}c,x,{HOAN_KIEM},{HOAN_KIEM_UNIT},F1,T1,2020-01-01,900,\n"
    )
    r = await client.post(
        "/v1/meters/import", content=csv_text, headers={**auth(keys["admin"]), "content-type": "text/csv"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 1
    assert [(x["index"], x["field"], x["code"]) for x in body["rejected"]] == [
        (1, "commune", "unknown_area"),
        (2, "customers", "invalid"),
    ]
    got = await client.get(f"/v1/meters/{p}a", headers=auth(keys["admin"]))
    assert (
        got.json()["district"] == HOAN_KIEM and got.json()["customers"] == 1 and got.json()["gateway"] == gw
    )
    reg = await read_topic(kafka_settings, REGISTRY_TOPIC.name, where=mine(p), expect=1)
    assert reg[0].data["commune"] == HOAN_KIEM_UNIT
    assert "gateway" not in reg[0].data  # access control stays in the service, not on the shared topic

    def reading(minutes, value):
        return {
            "meter_id": p + "a",
            "obis": "1-0:1.8.0",
            "interval_end": at(minutes),
            "value": value,
            "unit": "kWh",
        }

    r = await client.post("/v1/readings", json={"items": [reading(15, 5000.0)]}, headers=auth(keys["ingest"]))
    assert r.json()["accepted"] == 1
    r = await client.post("/v1/readings", json={"items": [reading(30, 3.0)]}, headers=auth(keys["ingest"]))
    assert r.json()["rejected"][0]["code"] == "register_backwards"
    # The meter is replaced today: the new register starts afresh.
    await register(
        client,
        keys,
        meter(p + "a", district=HOAN_KIEM, commune=HOAN_KIEM_UNIT, installed_on=BASE.date().isoformat()),
    )
    r = await client.post("/v1/readings", json={"items": [reading(30, 3.0)]}, headers=auth(keys["ingest"]))
    assert r.json()["accepted"] == 1, r.text
    evs = await read_topic(kafka_settings, READINGS_TOPIC.name, where=mine(p), expect=2)
    assert sorted(e.data["flags"] for e in evs) == [["first_read"], ["first_read"]]


async def test_a_head_end_reports_only_for_its_own_meters(app, client, keys, kafka_settings):
    from tests.meter.conftest import issue_key

    p = f"t{uuid.uuid4().hex[:8]}-"
    other_gateway = f"hes-other-{uuid.uuid4().hex[:6]}"
    other_key = await issue_key(app, ["meter:ingest"], pid=other_gateway)
    await register(client, keys, meter(p + "mine"))
    await register(client, keys, meter(p + "theirs"), gateway=other_gateway)
    r = await client.post("/v1/meters", json={"items": [meter(p + "nobody")]}, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text

    def reading(mid: str, minutes: int = 15) -> dict:
        return {
            "meter_id": mid,
            "obis": "1-0:1.8.0",
            "interval_end": at(minutes),
            "value": 10.0,
            "unit": "kWh",
        }

    # A batch naming another head-end's meter, or a meter nobody reports for, is refused whole.
    r = await client.post(
        "/v1/readings",
        headers=auth(keys["ingest"]),
        json={
            "items": [
                reading(p + "mine"),
                reading(p + "theirs"),
                reading(p + "unknown"),
                reading(p + "nobody"),
            ]
        },
    )
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "forbidden" and "nothing was accepted" in err["message"]
    assert [(d["item"], d["id"], d["field"]) for d in err["details"]] == [
        (1, p + "theirs", "meter_id"),
        (3, p + "nobody", "meter_id"),
    ]
    r = await client.post(
        "/v1/events",
        headers=auth(keys["ingest"]),
        json={
            "items": [
                {"meter_id": p + "mine", "at": at(5), "code": 1, "raw_code": "1"},
                {"meter_id": p + "theirs", "at": at(5), "code": 1, "raw_code": "1"},
            ]
        },
    )
    assert r.status_code == 403 and [d["item"] for d in r.json()["error"]["details"]] == [1]

    # Each head-end reports for its own meters; an unregistered meter is an item error, not a refusal.
    r = await client.post(
        "/v1/readings",
        headers=auth(keys["ingest"]),
        json={"items": [reading(p + "mine", 30), reading(p + "unknown", 30)]},
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    assert r.json()["rejected"][0]["code"] == "unknown_entity"
    r = await client.post(
        "/v1/readings", headers=auth(other_key), json={"items": [reading(p + "theirs", 30)]}
    )
    assert r.json()["accepted"] == 1, r.text
    # meter:admin reports for any meter, including those without a gateway.
    privileged = await issue_key(app, ["meter:admin", "meter:ingest"])
    r = await client.post(
        "/v1/readings", headers=auth(privileged), json={"items": [reading(p + "nobody", 30)]}
    )
    assert r.json()["accepted"] == 1, r.text
    # Nothing of the refused batches reached the topic: only the three 30-minute readings did.
    evs = await read_topic(kafka_settings, READINGS_TOPIC.name, where=mine(p), expect=3)
    assert sorted((e.data["meter_id"], e.data["interval_end"]) for e in evs) == [
        (p + "mine", at(30)),
        (p + "nobody", at(30)),
        (p + "theirs", at(30)),
    ]
    evs = await read_topic(kafka_settings, EVENTS_TOPIC.name, where=mine(p), expect=0, timeout=1.0)
    assert evs == []


async def test_missing_key_wrong_key_and_wrong_scope(client, keys):
    body = {
        "items": [{"meter_id": "m", "obis": "1-0:1.8.0", "interval_end": at(15), "value": 1.0, "unit": "kWh"}]
    }
    r = await client.post("/v1/readings", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    r = await client.post("/v1/readings", json=body, headers=auth("ioc_nope_nope"))
    assert r.status_code == 401
    r = await client.post("/v1/readings", json=body, headers=auth(keys["admin"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = await client.post("/v1/meters", json={"items": [meter("x")]}, headers=auth(keys["ingest"]))
    assert r.status_code == 403
    r = await client.post(
        "/v1/events",
        json={"items": [{"meter_id": "m", "at": at(1), "raw_code": "1"}]},
        headers=auth(keys["other"]),
    )
    assert r.status_code == 403


async def test_malformed_body_is_400_and_registers_survive_a_restart(app, client, keys):
    from services.meter.service import MeterService

    r = await client.post(
        "/v1/readings",
        content=b'{"items": [',
        headers={**auth(keys["ingest"]), "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    p = f"t{uuid.uuid4().hex[:8]}-"
    await register(client, keys, meter(p + "a"))
    item = {"meter_id": p + "a", "obis": "1-0:1.8.0", "interval_end": at(15), "value": 10.0, "unit": "kWh"}
    r = await client.post("/v1/readings", json={"items": [item]}, headers=auth(keys["ingest"]))
    assert r.json()["accepted"] == 1
    ctx = app.state.ctx
    await app.state.meter_service.register_writer.flush()
    # A new process loads the registers written after the Kafka acknowledgement: the resend is a duplicate.
    fresh = MeterService(ctx.settings, ctx.pool, ctx.publisher, ctx.source)
    await fresh.load()
    assert fresh.registers[(p + "a", "1-0:1.8.0")][2] == 10.0
