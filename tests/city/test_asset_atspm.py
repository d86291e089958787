"""The intersection page's ATSPM charts equal the traffic service's own measures of a small hand-checked controller
log, fetched over HTTP (the city never imports the traffic service's code).

The log is the traffic tests' golden ``two_cycles`` (tests/traffic/test_domain.py, worked by hand there) plus
two end-red-clearance events (code 11), so that each cycle has a split. Through the real path: the traffic API
(backfill, final), the broker, the traffic processor, the traffic service's store and its measures API, then the
city's ``GET /v1/assets/intersection/{id}/atspm``.

Worked by hand from the Indiana enumerations (1 begin green, 4 gap-out, 5 max-out, 8 begin yellow, 10 begin red
clearance, 11 end red clearance) and the Purdue / atspm definitions (docs/traffic-measures.md):
- phase 2: red clearance 0 s, green 30, gap-out + yellow 60, red clearance 64, end red clearance 66, green 94,
  max-out + yellow 124, red clearance 128, end red clearance 131, green 150;
- red-to-red cycles (coordination diagram): 0→64 (green offset 30 s, yellow offset 60 s, length 64 s) and
  64→128 (green 94−64 = 30, yellow 124−64 = 60, length 64);
- splits (begin green → end red clearance): 66−30 = 36 s and 131−94 = 37 s: mean 36.5, max 37;
- terminations in the bin: one gap-out (60 s), one max-out (124 s), no force-off: max-or-force share 1/2;
- arrivals (test_domain: 3 on green, 1 on yellow, 3 on red over the bin's 2 cycles): per cycle 3/2 on green and
  3/2 on red; mean cycle 128/2 = 64 s, mean green (begin green → begin yellow) 60/2 = 30 s.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from services.city.app import create_app as create_city_app
from services.city.settings import CitySettings
from services.traffic.app import create_app as create_traffic_app
from services.traffic.settings import TrafficSettings
from shared.embedded import free_port
from shared.testing import auth, issue_test_key, running_app
from tests.areas import BA_DINH
from tests.traffic.test_domain import BASE, two_cycles

from .conftest import KPI_FILE, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a processor run and two services: ~15 s

DETECTORS = [
    {"channel": 1, "phase": 2, "function": "advance", "distance_m": 50.0, "speed_kmh": 36.0},
    {"channel": 2, "phase": 2, "function": "presence"},
    {"channel": 3, "phase": 2, "function": "presence"},
    {"channel": 9, "phase": 4, "function": "count"},
]


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def backfill_two_cycles(tc: httpx.AsyncClient, key: str, kafka_settings, t0: datetime) -> str:
    """Register an intersection in the area Ba Đình at the traffic service ``tc``, backfill the golden log there from
    ``t0``, run the traffic processor over it and wait until the traffic service stored the bin; its id."""
    from services.traffic.processors import TrafficSignalProcessor
    from shared.stream.runtime import ProcessorRuntime

    iid, cid = uid("I"), uid("C")
    shift = round(t0.timestamp() * 1000) - BASE
    events = [*two_cycles(), (BASE + 66_000, 11, 2), (BASE + 131_000, 11, 2)]
    items = [
        {
            "timestamp": datetime.fromtimestamp((t + shift) / 1000, UTC).isoformat(),
            "controller_id": cid,
            "event_code": code,
            "parameter": param,
        }
        for t, code, param in sorted(events)
    ]
    r = await tc.post(
        "/v1/intersections",
        json={
            "items": [
                {
                    "intersection_id": iid,
                    "name": "Kim Mã - Giảng Võ",
                    "district": BA_DINH,
                    "lat": 21.031,
                    "lon": 105.821,
                    "controller_id": cid,
                    "phases": [2, 4],
                    "detectors": DETECTORS,
                }
            ]
        },
        headers=auth(key),
    )
    assert r.status_code == 200, r.text
    r = await tc.post(
        "/v1/events", params={"backfill": "true", "final": "true"}, json={"items": items}, headers=auth(key)
    )
    assert r.status_code == 200 and r.json()["accepted"] == len(items), r.text
    processor_cls = type("TrafficForCityAtspm", (TrafficSignalProcessor,), {"name": uid("traffic-atspm")})
    async with ProcessorRuntime(processor_cls(), kafka_settings).running() as rt:
        await rt.drain(timeout=30)
    params = {"from": t0.isoformat(), "to": (t0 + timedelta(hours=1)).isoformat()}
    for _ in range(100):  # until the traffic service stored the bin
        measures = (
            await tc.get(f"/v1/intersections/{iid}/measures", params=params, headers=auth(key))
        ).json()
        if measures["measures"] and measures["intersection_measures"]:
            return iid
        await asyncio.sleep(0.1)
    raise AssertionError("the traffic service did not store the measures")


async def test_atspm_charts_equal_the_traffic_services_measures_of_a_hand_checked_log(
    kafka_settings, db_settings, topics_ready
):
    traffic_port = free_port()
    traffic = create_traffic_app(
        TrafficSettings(kafka=kafka_settings, database=db_settings, measures_store_group=uid("traffic-store"))
    )
    t0 = (datetime.now(UTC) - timedelta(days=2)).replace(second=0, microsecond=0)
    t0 -= timedelta(minutes=t0.minute % 15)
    async with serve(traffic, traffic_port) as traffic_base, httpx.AsyncClient(base_url=traffic_base) as tc:
        pool = traffic.state.ctx.pool
        _, key = await issue_test_key(
            pool, ["traffic:admin", "traffic:read", "traffic:ingest", "city:read"], kind="operator"
        )
        _, city_only = await issue_test_key(pool, ["city:read"], kind="operator")
        iid = await backfill_two_cycles(tc, key, kafka_settings, t0)
        params = {"from": t0.isoformat(), "to": (t0 + timedelta(hours=1)).isoformat()}
        measures = (
            await tc.get(f"/v1/intersections/{iid}/measures", params=params, headers=auth(key))
        ).json()
        p2_measures = next(m for m in measures["measures"] if m["phase"] == 2)

        city = create_city_app(
            CitySettings(
                kafka=kafka_settings,
                database=db_settings,
                kpi_definitions_path=str(KPI_FILE),
                consumer_group=uid("city-atspm"),
                traffic_url=traffic_base,
            )
        )
        async with running_app(city) as cc:
            r = await cc.get(f"/v1/assets/intersection/{iid}/atspm", params=params, headers=auth(key))
            assert r.status_code == 200, r.text
            body = r.json()
            # the caller's own key goes to the traffic service: without traffic:read the city gets a 403 back
            r = await cc.get(f"/v1/assets/intersection/{iid}/atspm", params=params, headers=auth(city_only))
            assert r.status_code == 403, r.text
            r = await cc.get(
                f"/v1/assets/intersection/{iid}/atspm",
                params={"from": t0.isoformat(), "to": (t0 + timedelta(days=2)).isoformat()},
                headers=auth(key),
            )
            assert r.status_code == 422 and "1 day" in r.json()["error"]["message"]
            # the asset page names the intersection from the traffic registry
            page = (await cc.get(f"/v1/assets/intersection/{iid}", headers=auth(key))).json()
            assert page["details"]["name"] == "Kim Mã - Giảng Võ" and page["district"] == BA_DINH

    p2 = next(p for p in body["phases"] if p["phase"] == 2)
    at = lambda sec: datetime.fromtimestamp(t0.timestamp() + sec, UTC).isoformat()  # noqa: E731
    # coordination diagram, per red-to-red cycle (hand-worked above)
    assert p2["coordination"]["cycles"] == [
        {"cycle_start": at(0), "green_seconds": 30.0, "yellow_seconds": 60.0, "cycle_seconds": 64.0},
        {"cycle_start": at(64), "green_seconds": 30.0, "yellow_seconds": 60.0, "cycle_seconds": 64.0},
    ]
    (coord,) = p2["coordination"]["bins"]
    assert (
        coord["cycles"],
        coord["arrivals_on_green"],
        coord["arrivals_on_yellow"],
        coord["arrivals_on_red"],
    ) == (
        2,
        3,
        1,
        3,
    )
    assert coord["arrivals_on_green_per_cycle"] == 1.5 and coord["arrivals_on_red_per_cycle"] == 1.5
    assert coord["cycle_seconds_avg"] == pytest.approx(64.0) and coord["green_seconds_avg"] == pytest.approx(
        30.0
    )
    # split monitor: per cycle, and the bin as the traffic service gives it
    assert p2["split_monitor"]["cycles"] == [
        {"cycle_start": at(30), "split_seconds": 36.0},
        {"cycle_start": at(94), "split_seconds": 37.0},
    ]
    (split,) = p2["split_monitor"]["bins"]
    assert (split["splits"], split["split_seconds_avg"], split["split_seconds_max"]) == (2, 36.5, 37.0)
    # terminations
    (term,) = p2["terminations"]["bins"]
    assert (term["gap_outs"], term["max_outs"], term["force_offs"], term["pct_max_or_force"]) == (
        1,
        1,
        0,
        0.5,
    )

    # ... and every figure is the traffic service's own: the per-bin figures are its phase measures, and the
    # per-cycle splits average to its split_seconds_avg
    for field in (
        "cycles",
        "arrivals_on_green",
        "arrivals_on_yellow",
        "arrivals_on_red",
        "pct_arrivals_on_green",
    ):
        assert coord[field] == p2_measures[field]
    assert coord["cycle_seconds_avg"] == p2_measures["cycle_seconds"] / p2_measures["cycles"]
    # the per-cycle timing drawn from the timeline is the same cycles the measures counted: as many, as long,
    # and as green (begin green to begin yellow: 30 + 30 s)
    cycles = p2["coordination"]["cycles"]
    assert len(cycles) == p2_measures["cycles"]
    assert sum(c["cycle_seconds"] for c in cycles) == p2_measures["cycle_seconds"]
    assert sum(c["yellow_seconds"] - c["green_seconds"] for c in cycles) == p2_measures["green_seconds"]
    for field in ("splits", "split_seconds_avg", "split_seconds_max"):
        assert split[field] == p2_measures[field]
    per_cycle = [c["split_seconds"] for c in p2["split_monitor"]["cycles"]]
    assert sum(per_cycle) / len(per_cycle) == p2_measures["split_seconds_avg"]
    for field in ("gap_outs", "max_outs", "force_offs"):
        assert term[field] == p2_measures[field]
    # one dot per vehicle (kind=pcd): the advance actuations at 10, 20, 30, 50, 56, 62, 100 s reach the stop bar
    # 5 s later (50 m at 36 km/h): 15, 25, 35, 55, 61 fall in cycle 0→64 (offsets as they are: 15, 25 before
    # the green at 30 = on red; 35, 55 before the yellow at 60 = on green; 61 on yellow), 67 and 105 in cycle
    # 64→128 (offsets 3 = on red, 41 = on green); the gap-out at 60 s ended the first cycle's green, the max-out
    # at 124 s the second's
    assert [
        (c["cycle_start"], c["arrival_offsets_seconds"], c["termination"])
        for c in p2["coordination"]["vehicles"]
    ] == [
        (at(0), [15.0, 25.0, 35.0, 55.0, 61.0], "gap_out"),
        (at(64), [3.0, 41.0], "max_out"),
    ]
    # the dots add up to the bin's arrivals (3 on red, 3 on green, 1 on yellow)
    assert sum(len(c["arrival_offsets_seconds"]) for c in p2["coordination"]["vehicles"]) == coord["arrivals"]
    # each termination at its time with the cycle (begin green) it ended; as many as the bin counts
    assert p2["terminations"]["cycles"] == [
        {"at": at(60), "termination": "gap_out", "cycle_start": at(30)},
        {"at": at(124), "termination": "max_out", "cycle_start": at(94)},
    ]
    assert len(p2["terminations"]["cycles"]) == term["gap_outs"] + term["max_outs"] + term["force_offs"]
    # the latest phase events: phase 2's last recorded interval is the red from 131 s to the green at 150 s
    assert {"phase": 2, "kind": "red", "start": at(131), "end": at(150)} in body["latest"]
