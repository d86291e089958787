"""Integration: the traffic service over HTTP against the real broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio

from services.traffic.app import create_app
from services.traffic.settings import TrafficSettings
from shared.contracts.traffic import HIRES_TOPIC, REGISTRY_TOPIC
from shared.testing import auth, issue_test_key, read_topic, running_app

pytestmark = pytest.mark.integration


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(kafka_settings, db_settings, topics_ready):
    settings = TrafficSettings(kafka=kafka_settings, database=db_settings,
                               measures_store_group=uid("traffic-store"))
    app = create_app(settings)
    async with running_app(app) as c:
        c.app = app
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def keys(client):
    # The app's pool, not the platform_pool fixture: that one has no jsonb codec, so issuing a key with
    # attributes fails there (reported to the lead).
    pool = client.app.state.ctx.pool
    _, admin = await issue_test_key(pool, ["traffic:admin", "traffic:read"], kind="admin")
    _, ingest = await issue_test_key(pool, ["traffic:ingest"])
    _, reader = await issue_test_key(pool, ["traffic:read"], kind="operator")
    return {"admin": admin, "ingest": ingest, "read": reader}


def intersection(iid: str, cid: str, **kw) -> dict:
    return {"intersection_id": iid, "name": "Kim Mã - Giảng Võ", "district": "BD", "lat": 21.031,
            "lon": 105.821, "controller_id": cid, "phases": [2, 4, 6, 8], **kw}


async def register(client, keys, iid: str, cid: str) -> None:
    r = await client.post("/v1/intersections", json={"items": [intersection(iid, cid)]},
                          headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text
    csv_body = ("DeviceId,Phase,Parameter,Function,Distance,Speed\n"
                f"{cid},2,1,Advance,50,36\n{cid},2,2,stop bar,,\n{cid},2,3,Presence,,\n{cid},4,9,Count,,\n")
    r = await client.post("/v1/detectors/import", content=csv_body, headers=auth(keys["admin"]))
    assert r.status_code == 200 and r.json()["accepted"] == 4, r.text


async def test_auth_missing_key_401_and_missing_scope_403(client, keys):
    body = {"items": []}
    r = await client.post("/v1/events", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    r = await client.post("/v1/events", json=body, headers=auth("ioc_nope_secret"))
    assert r.status_code == 401
    r = await client.post("/v1/events", json=body, headers=auth(keys["read"]))
    assert r.status_code == 403 and "traffic:ingest" in r.json()["error"]["message"]
    r = await client.post("/v1/intersections", json={"items": [intersection(uid("I"), uid("C"))]},
                          headers=auth(keys["ingest"]))
    assert r.status_code == 403
    r = await client.get("/v1/intersections/x/measures")
    assert r.status_code == 401


async def test_registry_write_publishes_config_and_rejects_bad_rows(client, keys, kafka_settings):
    iid, cid, other = uid("I"), uid("C"), uid("I")
    r = await client.post("/v1/intersections", headers=auth(keys["admin"]), json={"items": [
        intersection(iid, cid),
        intersection(other, cid),  # same controller twice
        intersection(uid("I"), uid("C"), district="XX"),
        {**intersection(uid("I"), uid("C")), "lat": "north"},
    ]})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "partial" and body["accepted"] == 1
    assert [(e["index"], e["field"], e["code"]) for e in body["rejected"]] == [
        (1, "intersection_id", "duplicate"), (2, "district", "unknown_area"), (3, "lat", "invalid")]
    got = await read_topic(kafka_settings, REGISTRY_TOPIC.name, where=lambda e: e.key == cid, expect=1)
    assert got[0].data["intersection_id"] == iid and got[0].data["district"] == "BD"
    # bulk CSV import keeps the registry in one place; a controller owned elsewhere is a conflict
    csv_body = ("intersection_id,name,district,lat,lon,controller_id,phases\n"
                f"{other},Cầu Giấy,CG,21.03,105.79,{uid('C')},2;4;6;8\n"
                f"{uid('I')},Láng,DD,21.02,105.81,{cid},2 4\n")
    r = await client.post("/v1/intersections/import", content=csv_body, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1 and r.json()["rejected"][0]["code"] == "conflict"
    r = await client.get(f"/v1/intersections/{other}", headers=auth(keys["read"]))
    assert r.status_code == 200 and r.json()["district"] == "CG" and r.json()["phases"] == [2, 4, 6, 8]


async def test_ingest_publishes_events_and_answers_each_rejection(client, keys, kafka_settings):
    iid, cid = uid("I"), uid("C")
    await register(client, keys, iid, cid)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    def ev(sec, code, param, controller=cid):
        return {"timestamp": (t0 + timedelta(seconds=sec)).isoformat(), "controller_id": controller,
                "event_code": code, "parameter": param}

    items = [ev(0, 1, 2), ev(0.1, 82, 1), ev(30, 8, 2), ev(34, 9, 2),
             ev(1, 1, 2, controller=uid("C")),  # unknown controller
             ev(2, 77, 2),  # reserved code
             {**ev(3, 1, 2), "event_code": "1"},  # wrong type
             {"timestamp": (datetime.now(UTC) + timedelta(hours=1)).isoformat(), "controller_id": cid,
              "event_code": 1, "parameter": 2},  # far in the future
             ev(0.1, 82, 1)]  # duplicate
    r = await client.post("/v1/events", json={"items": items}, headers=auth(keys["ingest"]))
    body = r.json()
    assert r.status_code == 200, body
    assert body["status"] == "partial" and body["accepted"] == 4 and body["duplicates"] == 1
    assert [(e["index"], e["field"], e["code"]) for e in body["rejected"]] == [
        (4, "controller_id", "unknown_entity"), (5, "event_code", "unknown_code"), (6, "event_code", "invalid"),
        (7, "timestamp", "future_timestamp")]
    assert all(e["reason"] for e in body["rejected"])
    # older than the controller's latest accepted event by more than the tolerance: out of order
    r = await client.post("/v1/events", json={"items": [ev(10, 43, 4)]}, headers=auth(keys["ingest"]))
    assert r.status_code == 422 and r.json()["rejected"][0]["code"] == "out_of_order"

    got = await read_topic(kafka_settings, HIRES_TOPIC.name, where=lambda e: e.key == cid, expect=1)
    assert len(got) == 1 and got[0].subject == iid and got[0].data["district"] == "BD"
    assert [(e["code"], e["param"]) for e in got[0].data["events"]] == [(1, 2), (82, 1), (8, 2), (9, 2)]


async def test_malformed_body_is_a_clear_400(client, keys):
    r = await client.post("/v1/events", content=b"{nope", headers={**auth(keys["ingest"]),
                                                                  "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    r = await client.post("/v1/detectors/import", content=b"DeviceId,Phase,Parameter,Function\n",
                          headers=auth(keys["admin"]))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_csv"


async def test_events_to_measures_through_processor_and_csv_export(client, keys, kafka_settings):
    """API → hi-res topic → ProcessorRuntime → measures topic → service table → CSV/JSON export."""
    from services.traffic.processors import TrafficSignalProcessor
    from shared.contracts.traffic import MEASURES_TOPIC, SIGNAL_STATE_TOPIC
    from shared.stream.runtime import ProcessorRuntime

    from .test_domain import BASE, two_cycles

    iid, cid = uid("I"), uid("C")
    # One registry record with the detectors: the processor reads the registry and event topics in no fixed
    # order, so a configuration changed just before the events could apply after them.
    dets = [{"channel": 1, "phase": 2, "function": "advance", "distance_m": 50.0, "speed_kmh": 36.0},
            {"channel": 2, "phase": 2, "function": "presence"}, {"channel": 3, "phase": 2, "function": "presence"},
            {"channel": 9, "phase": 4, "function": "count"}]
    r = await client.post("/v1/intersections", json={"items": [intersection(iid, cid, detectors=dets)]},
                          headers=auth(keys["admin"]))
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    now = datetime.now(UTC)
    t0 = now - timedelta(hours=2)
    t0 = t0.replace(minute=t0.minute - t0.minute % 15, second=0, microsecond=0)
    shift = round(t0.timestamp() * 1000) - BASE
    events = [*two_cycles(), (BASE + 1_200_000, 43, 4), (BASE + 1_206_000, 43, 4)]
    items = [{"timestamp": datetime.fromtimestamp((t + shift) / 1000, UTC).isoformat(), "controller_id": cid,
              "event_code": code, "parameter": param} for t, code, param in events]
    r = await client.post("/v1/events", json={"items": items}, headers=auth(keys["ingest"]))
    assert r.status_code == 200 and r.json()["accepted"] == len(items), r.text

    processor_cls = type("TrafficProcessorUnderTest", (TrafficSignalProcessor,), {"name": uid("traffic-test")})
    async with ProcessorRuntime(processor_cls(), kafka_settings).running() as rt:
        await rt.drain(timeout=30)

    measures = await read_topic(kafka_settings, MEASURES_TOPIC.name, where=lambda e: e.key == iid, expect=4)
    by_phase = {e.data["phase"]: e.data for e in measures}
    assert sorted(by_phase) == [2, 4, 6, 8]
    p2 = by_phase[2]
    assert (p2["arrivals"], p2["arrivals_on_green"], p2["arrivals_on_red"]) == (7, 3, 3)
    assert (p2["split_failures"], p2["split_failure_cycles"], p2["cycles"]) == (1, 2, 2)
    assert p2["pct_green"] == pytest.approx(60 / 128) and p2["ped_delay_seconds_avg"] == pytest.approx(24)
    states = await read_topic(kafka_settings, SIGNAL_STATE_TOPIC.name, where=lambda e: e.key == iid, expect=1)
    assert states[-1].data["controller_id"] == cid

    # the service stores the measures topic; export the bin as CSV and JSON
    params = {"from": t0.isoformat(), "to": (t0 + timedelta(hours=1)).isoformat()}
    body = None
    for _ in range(100):
        r = await client.get(f"/v1/intersections/{iid}/measures", params={**params, "format": "json"},
                             headers=auth(keys["read"]))
        assert r.status_code == 200, r.text
        body = r.json()
        if len(body["measures"]) == 4:
            break
        await asyncio.sleep(0.2)
    assert [m["phase"] for m in body["measures"]] == [2, 4, 6, 8]
    r = await client.get(f"/v1/intersections/{iid}/measures", params={**params, "format": "csv"},
                         headers=auth(keys["read"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 4
    row2 = next(x for x in rows if x["phase"] == "2")
    assert row2["arrivals_on_green"] == "3" and row2["split_failures"] == "1"
    assert row2["detector_volumes"] == "1:7;2:4;3:1"
    assert float(row2["approach_delay_seconds"]) == pytest.approx(47 / 7)
    r = await client.get(f"/v1/intersections/{uid('I')}/measures", headers=auth(keys["read"]))
    assert r.status_code == 404
    r = await client.get(f"/v1/intersections/{iid}/measures", params={"from": params["to"], "to": params["from"]},
                         headers=auth(keys["read"]))
    assert r.status_code == 422


async def test_replay_feeds_a_udot_log_through_the_api(client, keys, tmp_path, kafka_settings):
    from services.traffic.replay import replay_file

    iid, cid = uid("I"), uid("C")
    await register(client, keys, iid, cid)
    t0 = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(minutes=10)
    lines = ["Timestamp,SignalID,EventCode,EventParam"]
    for k in range(30):
        lines.append(f"{(t0 + timedelta(seconds=k * 0.5)).isoformat(sep=' ')},{cid},{82 if k % 2 else 81},1")
    lines.append(f"{t0.isoformat(sep=' ')},{cid},999,1")  # not an Indiana code
    path = tmp_path / "log.csv"
    path.write_text("\n".join(lines) + "\n")
    report = await replay_file(path, "http://ioc.test", keys["ingest"], speed=None, tz="UTC", batch_size=10,
                               client=client)
    assert (report.sent, report.accepted, report.rejected) == (31, 30, 1)
    assert report.reasons == {"invalid": 1}  # 999 is outside the 0-255 range of the schema
    got = await read_topic(kafka_settings, HIRES_TOPIC.name, where=lambda e: e.key == cid, expect=4)
    assert sum(len(e.data["events"]) for e in got) == 30
