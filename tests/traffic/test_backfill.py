"""Backfill end to end: a replayed log older than the age limit, through the service, the broker, the processor
and the store, its last bin published at once (no wall-clock wait); and the `ioc replay` command's answers."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from typer.testing import CliRunner

from services.traffic.app import create_app
from services.traffic.replay import ReplayReport, replay_file
from services.traffic.settings import TrafficSettings
from shared.testing import auth, issue_test_key, read_topic, running_app
from tests.areas import area

from .test_domain import BASE, two_cycles


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


DETECTORS = [
    {"channel": 1, "phase": 2, "function": "advance", "distance_m": 50.0, "speed_kmh": 36.0},
    {"channel": 2, "phase": 2, "function": "presence"},
    {"channel": 3, "phase": 2, "function": "presence"},
    {"channel": 9, "phase": 4, "function": "count"},
]


@pytest.mark.integration
async def test_a_log_older_than_the_age_limit_is_backfilled_and_its_last_bin_published_at_once(
    client, kafka_settings, tmp_path
):
    from services.traffic.processors import TrafficSignalProcessor
    from shared.contracts.traffic import MEASURES_TOPIC
    from shared.stream.runtime import ProcessorRuntime

    pool = client.app.state.ctx.pool
    _, admin = await issue_test_key(pool, ["traffic:admin", "traffic:read", "traffic:ingest"], kind="admin")
    iid, cid = uid("I"), uid("C")
    r = await client.post(
        "/v1/intersections",
        json={
            "items": [
                {
                    "intersection_id": iid,
                    "name": "Kim Mã - Giảng Võ",
                    "district": area("BD"),
                    "lat": 21.031,
                    "lon": 105.821,
                    "controller_id": cid,
                    "phases": [2, 4],
                    "detectors": DETECTORS,
                }
            ]
        },
        headers=auth(admin),
    )
    assert r.status_code == 200, r.text
    # 60 days old (the live age limit is 30 days), logged in Tokyo time without offsets: bin 1 holds the two
    # hand-worked cycles, bin 2 only a minute of calls, its end + grace never reached by the log's own time
    t0 = (datetime.now(UTC) - timedelta(days=60)).replace(second=0, microsecond=0)
    t0 -= timedelta(minutes=t0.minute % 15)
    shift = round(t0.timestamp() * 1000) - BASE
    events = [*two_cycles(), *[(BASE + 900_000 + k * 10_000, 43, 4) for k in range(6)]]
    tokyo = ZoneInfo("Asia/Tokyo")
    lines = ["Timestamp,SignalID,EventCode,EventParam"]
    for t, code, param in events:
        local = datetime.fromtimestamp((t + shift) / 1000, UTC).astimezone(tokyo).replace(tzinfo=None)
        lines.append(f"{local.isoformat(sep=' ', timespec='milliseconds')},{cid},{code},{param}")
    path = tmp_path / "old.csv"
    path.write_text("\n".join(lines) + "\n")

    # final ends a backfill: alone it is a clear 422
    r = await client.post(
        "/v1/events",
        params={"final": "true"},
        json={
            "items": [{"timestamp": t0.isoformat(), "controller_id": cid, "event_code": 1, "parameter": 2}]
        },
        headers=auth(admin),
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter", r.text
    # live ingest refuses history older than the limit, and says why
    live = await replay_file(path, "http://ioc.test", admin, tz="Asia/Tokyo", client=client)
    assert (live.accepted, live.reasons) == (0, {"too_old": len(events)})
    # as a backfill it is accepted whole
    report = await replay_file(
        path, "http://ioc.test", admin, tz="Asia/Tokyo", client=client, backfill=True, batch_size=20
    )
    assert (report.sent, report.accepted, report.rejected) == (len(events), len(events), 0), report

    processor_cls = type("TrafficBackfillUnderTest", (TrafficSignalProcessor,), {"name": uid("traffic-bf")})
    async with ProcessorRuntime(processor_cls(), kafka_settings).running() as rt:
        await rt.drain(timeout=30)

    phase_type = "ioc.traffic.phase_measures.computed.v1"
    measures = await read_topic(
        kafka_settings,
        MEASURES_TOPIC.name,
        where=lambda e: e.key == iid and e.type == phase_type,
        expect=4,
    )
    by_bin = {(e.data["bin_start"], e.data["phase"]): e.data for e in measures}
    first, last = t0.isoformat().replace("+00:00", "Z"), (t0 + timedelta(minutes=15)).isoformat()
    p2 = by_bin[(first, 2)]
    assert (p2["arrivals"], p2["arrivals_on_green"], p2["split_failures"], p2["split_failure_cycles"]) == (
        7,
        3,
        1,
        2,
    )
    # the last bin (a minute of data, no event past its end) is out without any wall-clock wait
    assert by_bin[(last.replace("+00:00", "Z"), 4)]["events"] == 6
    # and stored: the export shows both bins
    params = {"from": t0.isoformat(), "to": (t0 + timedelta(hours=1)).isoformat()}
    body = None
    for _ in range(100):
        r = await client.get(f"/v1/intersections/{iid}/measures", params=params, headers=auth(admin))
        assert r.status_code == 200, r.text
        body = r.json()
        if len(body["measures"]) == 4 and len(body["intersection_measures"]) == 2:
            break
        await asyncio.sleep(0.2)
    assert sorted({m["bin_start"][:16] for m in body["measures"]}) == [first[:16], last[:16]]
    r = await client.get(
        f"/v1/intersections/{iid}/measures",
        params={**params, "format": "csv", "kind": "detectors"},
        headers=auth(admin),
    )
    assert r.status_code == 200 and r.text.splitlines()[0].startswith("intersection_id,bin_start")
    # the same log backfilled again is accepted again (the first backfill's final request ended it): its bins
    # are recomputed and replace the stored ones
    again = await replay_file(
        path, "http://ioc.test", admin, tz="Asia/Tokyo", client=client, backfill=True, batch_size=20
    )
    assert (again.accepted, again.duplicates) == (len(events), 0)


@pytest.mark.integration
async def test_detector_import_maps_every_layout_and_refuses_with_422_and_the_line(client):
    pool = client.app.state.ctx.pool
    _, admin = await issue_test_key(pool, ["traffic:admin", "traffic:read"], kind="admin")
    cid = uid("C")
    r = await client.post(
        "/v1/intersections",
        json={
            "items": [
                {
                    "intersection_id": uid("I"),
                    "name": "Láng",
                    "district": area("DD"),
                    "lat": 21.02,
                    "lon": 105.81,
                    "controller_id": cid,
                    "phases": [2, 4, 6, 8],
                }
            ]
        },
        headers=auth(admin),
    )
    assert r.status_code == 200, r.text
    udot = (
        "SignalID,DetChannel,ProtectedPhaseNumber,DetectionTypes,DistanceFromStopBar,MPH\n"
        f'{cid},1,2,"Advanced Count, Advanced Speed",400,35\n'
        f"{cid},2,2,Stop Bar Presence,,\n"
        f'{cid},3,2,"Lane-by-lane with Speed Restriction, Stop Bar Presence",,\n'
        f"{cid},4,4,Lane-by-lane Count,,\n"
        f"{cid},5,4,Advanced Presence,,\n"
        f"{cid},6,6,Yellow_Red,,\n"
        f"{cid},7,6,stop bar count,,\n"
        f"{cid},8,8,2,,\n"  # a DetectionTypeId: 2 = Advanced Count
    )
    r = await client.post("/v1/detectors/import", content=udot, headers=auth(admin))
    assert r.status_code == 200 and r.json()["accepted"] == 8, r.text
    r = await client.get("/v1/intersections", headers=auth(admin))
    (row,) = [x for x in r.json()["items"] if x["controller_id"] == cid]
    dets = {d["channel"]: d for d in row["detectors"]}
    assert {ch: (d["function"], d.get("additional_functions", [])) for ch, d in dets.items()} == {
        1: ("advance", []),
        2: ("presence", []),
        3: ("presence", ["yellow_red"]),
        4: ("count", []),
        5: ("advance", []),
        6: ("yellow_red", []),
        7: ("count", []),
        8: ("advance", []),
    }
    # UDOT's feet and mph: 400 ft = 121.92 m, 35 mph = 56.327 km/h
    assert dets[1]["distance_m"] == pytest.approx(121.92) and dets[1]["speed_kmh"] == pytest.approx(56.327)

    # one row it cannot understand: 422, nothing applied, the row and its CSV line named
    bad = (
        "DeviceId,Phase,Parameter,Function\n"
        f"{cid},2,1,Advance\n"
        f"{cid},2,2,radar\n"  # line 3
        f"{cid},x,3,Presence\n"  # line 4
    )
    r = await client.post("/v1/detectors/import", content=bad, headers=auth(admin))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["accepted"] == 0 and body["status"] == "rejected"
    assert [(e["index"], e["field"]) for e in body["rejected"]] == [(1, "Function"), (2, "Parameter")]
    assert body["rejected"][0]["reason"].startswith("line 3: detection type 'radar'")
    assert body["rejected"][1]["reason"].startswith("line 4: ")
    r = await client.get("/v1/intersections", headers=auth(admin))
    (row,) = [x for x in r.json()["items"] if x["controller_id"] == cid]
    assert len(row["detectors"]) == 8  # unchanged


def test_ioc_replay_prints_counts_by_reason_and_fails_when_nothing_was_accepted(monkeypatch, tmp_path):
    import ioc.cli as cli

    calls = []

    def fake_replay(path, url, key, *, speed=None, tz="Asia/Ho_Chi_Minh", backfill=False):
        calls.append({"speed": speed, "tz": tz, "backfill": backfill})
        accepted = 0 if "old" in str(path) else 5
        return ReplayReport(
            sent=8, accepted=accepted, rejected=8 - accepted, requests=1, reasons={"too_old": 8 - accepted}
        )

    monkeypatch.setattr(cli.registry, "available", lambda _: True)
    monkeypatch.setattr(cli.registry, "load", lambda _: fake_replay)
    runner = CliRunner()
    r = runner.invoke(cli.app, ["replay", str(tmp_path / "old.csv"), "--tz", "Europe/Paris", "--live"])
    assert r.exit_code == 1
    assert "accepted 0" in r.output and "too_old 8" in r.output
    r = runner.invoke(cli.app, ["replay", str(tmp_path / "new.csv")])
    assert r.exit_code == 0 and "accepted 5" in r.output and "too_old 3" in r.output
    r = runner.invoke(cli.app, ["replay", str(tmp_path / "new.csv"), "--speed", "10"])
    assert calls == [
        {"speed": None, "tz": "Europe/Paris", "backfill": False},
        {"speed": None, "tz": "Asia/Ho_Chi_Minh", "backfill": True},  # as fast as possible: history
        {"speed": 10.0, "tz": "Asia/Ho_Chi_Minh", "backfill": False},  # paced: live
    ]
