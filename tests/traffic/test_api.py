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
from tests.areas import BA_DINH, CAU_GIAY, DONG_DA

pytestmark = pytest.mark.integration


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def client(kafka_settings, db_settings, topics_ready):
    settings = TrafficSettings(
        kafka=kafka_settings, database=db_settings, measures_store_group=uid("traffic-store")
    )
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
    gateway, ingest = await issue_test_key(pool, ["traffic:ingest"])
    _, reader = await issue_test_key(pool, ["traffic:read"], kind="operator")
    # "ingest" is a gateway key: it reports for the controllers registered with gateway = its principal id.
    return {"admin": admin, "ingest": ingest, "gateway": gateway, "read": reader}


def intersection(iid: str, cid: str, **kw) -> dict:
    return {
        "intersection_id": iid,
        "name": "Kim Mã - Giảng Võ",
        "district": BA_DINH,
        "lat": 21.031,
        "lon": 105.821,
        "controller_id": cid,
        "phases": [2, 4, 6, 8],
        **kw,
    }


async def register(client, keys, iid: str, cid: str, gateway: str | None = "") -> None:
    """Register an intersection with detectors; reported for by the ``ingest`` key unless ``gateway`` is given."""
    gateway = keys["gateway"] if gateway == "" else gateway
    r = await client.post(
        "/v1/intersections",
        json={"items": [intersection(iid, cid, gateway=gateway)]},
        headers=auth(keys["admin"]),
    )
    assert r.status_code == 200, r.text
    csv_body = (
        "DeviceId,Phase,Parameter,Function,Distance,Speed\n"
        f"{cid},2,1,Advance,50,36\n{cid},2,2,stop bar,,\n{cid},2,3,Presence,,\n{cid},4,9,Count,,\n"
    )
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
    r = await client.post(
        "/v1/intersections", json={"items": [intersection(uid("I"), uid("C"))]}, headers=auth(keys["ingest"])
    )
    assert r.status_code == 403
    r = await client.get("/v1/intersections/x/measures")
    assert r.status_code == 401


async def test_registry_write_publishes_config_and_rejects_bad_rows(client, keys, kafka_settings):
    iid, cid, other = uid("I"), uid("C"), uid("I")
    r = await client.post(
        "/v1/intersections",
        headers=auth(keys["admin"]),
        json={
            "items": [
                intersection(iid, cid),
                intersection(other, cid),  # same controller twice
                intersection(uid("I"), uid("C"), district="XX"),
                {**intersection(uid("I"), uid("C")), "lat": "north"},
            ]
        },
    )
    body = r.json()
    assert r.status_code == 200 and body["status"] == "partial" and body["accepted"] == 1
    assert [(e["index"], e["field"], e["code"]) for e in body["rejected"]] == [
        (1, "intersection_id", "duplicate"),
        (2, "district", "unknown_area"),
        (3, "lat", "invalid"),
    ]
    got = await read_topic(kafka_settings, REGISTRY_TOPIC.name, where=lambda e: e.key == cid, expect=1)
    assert got[0].data["intersection_id"] == iid and got[0].data["district"] == BA_DINH
    # bulk CSV import keeps the registry in one place; a controller owned elsewhere is a conflict
    csv_body = (
        "intersection_id,name,district,lat,lon,controller_id,phases\n"
        f"{other},Cầu Giấy,{CAU_GIAY},21.03,105.79,{uid('C')},2;4;6;8\n"
        f"{uid('I')},Láng,{DONG_DA},21.02,105.81,{cid},2 4\n"
    )
    r = await client.post("/v1/intersections/import", content=csv_body, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1 and r.json()["rejected"][0]["code"] == "conflict"
    r = await client.get(f"/v1/intersections/{other}", headers=auth(keys["read"]))
    assert r.status_code == 200 and r.json()["district"] == CAU_GIAY and r.json()["phases"] == [2, 4, 6, 8]


async def test_ingest_publishes_events_and_answers_each_rejection(client, keys, kafka_settings):
    iid, cid = uid("I"), uid("C")
    await register(client, keys, iid, cid)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)

    def ev(sec, code, param, controller=cid):
        return {
            "timestamp": (t0 + timedelta(seconds=sec)).isoformat(),
            "controller_id": controller,
            "event_code": code,
            "parameter": param,
        }

    items = [
        ev(0, 1, 2),
        ev(0.1, 82, 1),
        ev(30, 8, 2),
        ev(34, 9, 2),
        ev(1, 1, 2, controller=uid("C")),  # unknown controller
        ev(33, 400, 2),  # a vendor code: accepted and carried (issue #35; was refused as unknown_code)
        {**ev(3, 1, 2), "event_code": "1"},  # wrong type
        {
            "timestamp": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
            "controller_id": cid,
            "event_code": 1,
            "parameter": 2,
        },  # far in the future
        ev(0.1, 82, 1),
    ]  # duplicate
    r = await client.post("/v1/events", json={"items": items}, headers=auth(keys["ingest"]))
    body = r.json()
    assert r.status_code == 200, body
    assert body["status"] == "partial" and body["accepted"] == 5 and body["duplicates"] == 1
    assert [(e["index"], e["field"], e["code"]) for e in body["rejected"]] == [
        (4, "controller_id", "unknown_entity"),
        (6, "event_code", "invalid"),
        (7, "timestamp", "future_timestamp"),
    ]
    assert all(e["reason"] for e in body["rejected"])
    # older than the controller's latest accepted event by more than the tolerance: out of order
    r = await client.post("/v1/events", json={"items": [ev(10, 43, 4)]}, headers=auth(keys["ingest"]))
    assert r.status_code == 422 and r.json()["rejected"][0]["code"] == "out_of_order"

    got = await read_topic(kafka_settings, HIRES_TOPIC.name, where=lambda e: e.key == cid, expect=1)
    assert len(got) == 1 and got[0].subject == iid and got[0].data["district"] == BA_DINH
    assert [(e["code"], e["param"]) for e in got[0].data["events"]] == [
        (1, 2),
        (82, 1),
        (8, 2),
        (400, 2),
        (9, 2),
    ]


async def test_malformed_body_is_a_clear_400(client, keys):
    r = await client.post(
        "/v1/events", content=b"{nope", headers={**auth(keys["ingest"]), "content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    r = await client.post(
        "/v1/detectors/import", content=b"DeviceId,Phase,Parameter,Function\n", headers=auth(keys["admin"])
    )
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
    dets = [
        {"channel": 1, "phase": 2, "function": "advance", "distance_m": 50.0, "speed_kmh": 36.0},
        {"channel": 2, "phase": 2, "function": "presence"},
        {"channel": 3, "phase": 2, "function": "presence"},
        {"channel": 9, "phase": 4, "function": "count"},
    ]
    r = await client.post(
        "/v1/intersections",
        json={"items": [intersection(iid, cid, detectors=dets, gateway=keys["gateway"])]},
        headers=auth(keys["admin"]),
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    now = datetime.now(UTC)
    t0 = now - timedelta(hours=2)
    t0 = t0.replace(minute=t0.minute - t0.minute % 15, second=0, microsecond=0)
    shift = round(t0.timestamp() * 1000) - BASE
    events = [*two_cycles(), (BASE + 1_200_000, 43, 4), (BASE + 1_206_000, 43, 4)]
    items = [
        {
            "timestamp": datetime.fromtimestamp((t + shift) / 1000, UTC).isoformat(),
            "controller_id": cid,
            "event_code": code,
            "parameter": param,
        }
        for t, code, param in events
    ]
    r = await client.post("/v1/events", json={"items": items}, headers=auth(keys["ingest"]))
    assert r.status_code == 200 and r.json()["accepted"] == len(items), r.text

    processor_cls = type(
        "TrafficProcessorUnderTest", (TrafficSignalProcessor,), {"name": uid("traffic-test")}
    )
    async with ProcessorRuntime(processor_cls(), kafka_settings).running() as rt:
        await rt.drain(timeout=30)

    # the measures topic also carries the intersection's measures (a second event type since issue #35)
    measures = await read_topic(
        kafka_settings,
        MEASURES_TOPIC.name,
        where=lambda e: e.key == iid and e.type == "ioc.traffic.phase_measures.computed.v1",
        expect=4,
    )
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
        r = await client.get(
            f"/v1/intersections/{iid}/measures",
            params={**params, "format": "json"},
            headers=auth(keys["read"]),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        if len(body["measures"]) == 4:
            break
        await asyncio.sleep(0.2)
    assert [m["phase"] for m in body["measures"]] == [2, 4, 6, 8]
    r = await client.get(
        f"/v1/intersections/{iid}/measures", params={**params, "format": "csv"}, headers=auth(keys["read"])
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 4
    row2 = next(x for x in rows if x["phase"] == "2")
    assert row2["arrivals_on_green"] == "3" and row2["split_failures"] == "1"
    assert row2["detector_volumes"] == "1:7;2:4;3:1"
    assert float(row2["approach_delay_seconds"]) == pytest.approx(47 / 7)
    # the per-cycle timeline (kind=timeline): its own export, a day at most; left out of the other kinds' JSON
    assert all("timeline" not in m for m in body["intersection_measures"])
    r = await client.get(
        f"/v1/intersections/{iid}/measures",
        params={**params, "format": "csv", "kind": "timeline"},
        headers=auth(keys["read"]),
    )
    assert r.status_code == 200, r.text
    timeline = list(csv.DictReader(io.StringIO(r.text)))
    assert {("green", "2"), ("yellow", "2")} <= {(x["kind"], x["phase"]) for x in timeline}
    assert all(x["start"] < x["end"] for x in timeline)
    r = await client.get(
        f"/v1/intersections/{iid}/measures",
        params={"from": t0.isoformat(), "to": (t0 + timedelta(days=2)).isoformat(), "kind": "timeline"},
        headers=auth(keys["read"]),
    )
    assert r.status_code == 422 and "1 day" in r.text
    r = await client.get(f"/v1/intersections/{uid('I')}/measures", headers=auth(keys["read"]))
    assert r.status_code == 404
    r = await client.get(
        f"/v1/intersections/{iid}/measures",
        params={"from": params["to"], "to": params["from"]},
        headers=auth(keys["read"]),
    )
    assert r.status_code == 422


async def test_replay_feeds_a_udot_log_through_the_api(client, keys, tmp_path, kafka_settings):
    from services.traffic.replay import replay_file

    iid, cid = uid("I"), uid("C")
    await register(client, keys, iid, cid)
    t0 = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(minutes=10)
    lines = ["Timestamp,SignalID,EventCode,EventParam"]
    for k in range(30):
        lines.append(f"{(t0 + timedelta(seconds=k * 0.5)).isoformat(sep=' ')},{cid},{82 if k % 2 else 81},1")
    lines.append(f"{t0.isoformat(sep=' ')},{cid},70000,1")  # outside 0-65535 (999 is a vendor code since #35)
    path = tmp_path / "log.csv"
    path.write_text("\n".join(lines) + "\n")
    report = await replay_file(
        path, "http://ioc.test", keys["ingest"], speed=None, tz="UTC", batch_size=10, client=client
    )
    assert (report.sent, report.accepted, report.rejected) == (31, 30, 1)
    assert report.reasons == {"invalid": 1}  # 70000 is outside the 0-65535 range of the schema
    got = await read_topic(kafka_settings, HIRES_TOPIC.name, where=lambda e: e.key == cid, expect=4)
    assert sum(len(e.data["events"]) for e in got) == 30
    assert report.summary() == "sent 31, accepted 30, duplicates 0, refused 1 (invalid 1) in 4 requests"


# --- entity ownership: a gateway reports for the controllers registered with it as their gateway ---------------
def hires(cid: str, t0: datetime, sec: float, code: int = 82, param: int = 1) -> dict:
    return {
        "timestamp": (t0 + timedelta(seconds=sec)).isoformat(),
        "controller_id": cid,
        "event_code": code,
        "parameter": param,
    }


def recent() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


async def new_key(client, scopes: list[str], kind: str = "gateway") -> tuple[str, str]:
    return await issue_test_key(client.app.state.ctx.pool, scopes, kind=kind)


async def test_a_gateway_reports_for_its_own_controller(client, keys, kafka_settings):
    iid, cid, unknown = uid("I"), uid("C"), uid("C")
    await register(client, keys, iid, cid)
    t0 = recent()
    items = [hires(cid, t0, 0, 82), hires(cid, t0, 1, 81), hires(unknown, t0, 2)]
    r = await client.post("/v1/events", json={"items": items}, headers=auth(keys["ingest"]))
    body = r.json()
    assert r.status_code == 200, body
    # an unregistered controller is not an ownership matter: it stays a per-item unknown_entity
    assert body["accepted"] == 2 and [(e["index"], e["field"], e["code"]) for e in body["rejected"]] == [
        (2, "controller_id", "unknown_entity")
    ]
    got = await read_topic(kafka_settings, HIRES_TOPIC.name, where=lambda e: e.key == cid, expect=1)
    assert [(e["code"], e["param"]) for e in got[0].data["events"]] == [(82, 1), (81, 1)]


async def test_a_batch_naming_another_gateways_controller_is_refused_whole(client, keys, kafka_settings):
    other_gw, other_key = await new_key(client, ["traffic:ingest"])
    mine, theirs = uid("C"), uid("C")
    await register(client, keys, uid("I"), mine)
    await register(client, keys, uid("I"), theirs, gateway=other_gw)
    t0 = recent()
    items = [
        hires(mine, t0, 0),
        hires(theirs, t0, 1),
        hires(mine, t0, 2),
        hires("<b>C\u202e", t0, 3),
        hires(theirs, t0, 4),
    ]
    r = await client.post("/v1/events", json={"items": items}, headers=auth(keys["ingest"]))
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "forbidden"
    assert err["message"] == f"not your controller(s): {theirs}; nothing was accepted"
    assert [(d["item"], d["id"], d["field"]) for d in err["details"]] == [
        (1, theirs, "controller_id"),
        (4, theirs, "controller_id"),
    ]
    assert all(d["reason"] == "this principal may not report for this controller" for d in err["details"])
    assert "<b>" not in r.text  # a malformed id names no controller and is never echoed
    # nothing of the batch was published, not even the own controller's events ...
    assert await read_topic(kafka_settings, HIRES_TOPIC.name, where=lambda e: e.key in (mine, theirs)) == []
    # ... nor reserved: the same events of the own controller are accepted afterwards, none as a duplicate
    r = await client.post("/v1/events", json={"items": [items[0], items[2]]}, headers=auth(keys["ingest"]))
    assert r.status_code == 200 and (r.json()["accepted"], r.json()["duplicates"]) == (2, 0), r.text
    # the other gateway may report for its controller, and not for mine
    r = await client.post("/v1/events", json={"items": [items[1], items[4]]}, headers=auth(other_key))
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    r = await client.post("/v1/events", json={"items": [hires(mine, t0, 5)]}, headers=auth(other_key))
    assert r.status_code == 403 and r.json()["error"]["details"][0]["id"] == mine, r.text
    got = await read_topic(
        kafka_settings, HIRES_TOPIC.name, where=lambda e: e.key in (mine, theirs), expect=2
    )
    assert sorted((e.key, len(e.data["events"])) for e in got) == sorted([(mine, 2), (theirs, 2)])


async def test_a_controller_without_gateway_is_reported_by_traffic_admin_only(client, keys, kafka_settings):
    iid, cid = uid("I"), uid("C")
    await register(client, keys, iid, cid, gateway=None)
    items = [hires(cid, recent(), 0)]
    r = await client.post("/v1/events", json={"items": items}, headers=auth(keys["ingest"]))
    assert r.status_code == 403, r.text
    assert [(d["item"], d["id"]) for d in r.json()["error"]["details"]] == [(0, cid)]
    _, operator = await new_key(client, ["traffic:ingest", "traffic:admin"], kind="admin")
    r = await client.post("/v1/events", json={"items": items}, headers=auth(operator))
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    got = await read_topic(kafka_settings, HIRES_TOPIC.name, where=lambda e: e.key == cid, expect=1)
    assert len(got) == 1 and got[0].subject == iid


async def test_registry_shows_the_gateway_and_never_publishes_it(client, keys, kafka_settings):
    from shared.contracts.traffic import IntersectionConfigured

    iid, cid, gw = uid("I"), uid("C"), keys["gateway"]
    r = await client.post(
        "/v1/intersections", json={"items": [intersection(iid, cid, gateway=gw)]}, headers=auth(keys["admin"])
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    r = await client.get(f"/v1/intersections/{iid}", headers=auth(keys["read"]))
    assert r.status_code == 200 and r.json()["gateway"] == gw
    r = await client.get("/v1/intersections", params={"district": BA_DINH}, headers=auth(keys["read"]))
    assert [x["gateway"] for x in r.json()["items"] if x["intersection_id"] == iid] == [gw]
    got = await read_topic(kafka_settings, REGISTRY_TOPIC.name, where=lambda e: e.key == cid, expect=1)
    assert "gateway" not in got[0].data and gw not in str(got[0].data)
    IntersectionConfigured.model_validate(got[0].data)  # the closed contract (additionalProperties false)
    # an update says the whole entry: without a gateway the controller has none (as in the kiosk registry)
    r = await client.post(
        "/v1/intersections", json={"items": [intersection(iid, cid)]}, headers=auth(keys["admin"])
    )
    assert r.status_code == 200, r.text
    r = await client.get(f"/v1/intersections/{iid}", headers=auth(keys["read"]))
    assert r.json()["gateway"] is None and r.json()["revision"] == 2
    r = await client.post(
        "/v1/events", json={"items": [hires(cid, recent(), 0)]}, headers=auth(keys["ingest"])
    )
    assert r.status_code == 403, r.text
    # a malformed gateway id is refused for its item
    r = await client.post(
        "/v1/intersections",
        json={"items": [intersection(uid("I"), uid("C"), gateway="gw one")]},
        headers=auth(keys["admin"]),
    )
    assert r.status_code == 422 and [e["field"] for e in r.json()["rejected"]] == ["gateway"], r.text


async def test_csv_import_sets_keeps_and_clears_the_gateway(client, keys):
    a, b, ca, cb, gw = uid("I"), uid("I"), uid("C"), uid("C"), keys["gateway"]
    header = "intersection_id,name,district,lat,lon,controller_id,phases"
    body = (
        f"{header},gateway\n{a},Láng,{DONG_DA},21.02,105.81,{ca},2;4,{gw}\n"
        f"{b},Hào Nam,{DONG_DA},21.02,105.82,{cb},2 4,\n"
    )
    r = await client.post("/v1/intersections/import", content=body, headers=auth(keys["admin"]))
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    r = await client.get(f"/v1/intersections/{a}", headers=auth(keys["read"]))
    assert r.json()["gateway"] == gw
    r = await client.get(f"/v1/intersections/{b}", headers=auth(keys["read"]))
    assert r.json()["gateway"] is None  # an empty cell: no gateway
    # a file without the column keeps the gateway (as it keeps the detectors it cannot express)
    r = await client.post(
        "/v1/intersections/import",
        content=f"{header}\n{a},Láng 2,{DONG_DA},21.02,105.81,{ca},2;4\n",
        headers=auth(keys["admin"]),
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    r = await client.get(f"/v1/intersections/{a}", headers=auth(keys["read"]))
    assert (r.json()["name"], r.json()["gateway"]) == ("Láng 2", gw)
    t0 = recent()
    r = await client.post(
        "/v1/events", json={"items": [hires(ca, t0, 0), hires(cb, t0, 1)]}, headers=auth(keys["ingest"])
    )
    assert r.status_code == 403 and [(d["item"], d["id"]) for d in r.json()["error"]["details"]] == [(1, cb)]
    r = await client.post(
        "/v1/intersections/import",
        content=f"{header},gateway\n{b},X,DD,21.0,105.8,{cb},2,a b\n",
        headers=auth(keys["admin"]),
    )
    assert r.status_code == 422 and r.json()["rejected"][0]["field"] == "gateway", r.text


async def test_a_controller_registered_by_another_replica_is_judged_on_fresh_data(client, keys):
    from services.traffic import repository

    iid, cid = uid("I"), uid("C")
    ctx = client.app.state.ctx
    async with ctx.pool.acquire() as conn:  # as another replica would: this one's cache does not know it yet
        await repository.upsert_intersections(
            conn, [{**intersection(iid, cid), "detectors": [], "gateway": "another-gateway"}]
        )
    assert cid not in client.app.state.traffic_service.registry
    await asyncio.sleep(1.1)  # ingest reloads the registry for an unknown controller at most once a second
    r = await client.post(
        "/v1/events", json={"items": [hires(cid, recent(), 0)]}, headers=auth(keys["ingest"])
    )
    assert r.status_code == 403 and r.json()["error"]["details"][0]["id"] == cid, r.text
