"""Traffic benchmark path: hi-res controller events through ``POST /v1/events`` of the traffic service."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import httpx
import orjson

from bench.domain_common import bearer, issue_key, measure_ingest, start_service
from shared.config import KafkaSettings

PHASES = (2, 4, 6, 8)
# Indiana hi-res codes: 1 phase begin green, 8 begin yellow, 10 begin red clearance, 82/81 detector on/off.
GREEN, YELLOW, RED, DET_ON, DET_OFF = 1, 8, 10, 82, 81
#: event-time pace of :func:`controller_log`: hi-res events per second of one controller (7 per 25-s phase)
EVENTS_PER_S = 7 / 25


def intersections(prefix: str, count: int, gateway: str | None = None) -> list[dict]:
    """``count`` intersections, one controller each, phases 2/4/6/8 with one presence detector per phase, reported
    for by the principal ``gateway``."""
    from bench.domain_meter import district_codes

    districts = district_codes()
    return [
        {
            "intersection_id": f"{prefix}I{i:05d}",
            "name": f"Bench {i}",
            "district": districts[i % len(districts)],
            "lat": 21.0 + i * 1e-4,
            "lon": 105.8 + i * 1e-4,
            "controller_id": f"{prefix}C{i:05d}",
            "phases": list(PHASES),
            "detectors": [{"channel": p, "phase": p, "function": "presence"} for p in PHASES],
            "gateway": gateway,
        }
        for i in range(count)
    ]


def controller_log(start_ms: int, cycles: int) -> list[tuple[int, int, int]]:
    """One controller's (t_ms, code, param) over ``cycles`` 100-second cycles: each phase 20 s green, 3 s
    yellow, 2 s red clearance, two vehicles detected during its green."""
    out = []
    t = start_ms
    for _ in range(cycles):
        for p in PHASES:
            out += [
                (t, GREEN, p),
                (t + 2000, DET_ON, p),
                (t + 2500, DET_OFF, p),
                (t + 9000, DET_ON, p),
                (t + 9400, DET_OFF, p),
                (t + 20000, YELLOW, p),
                (t + 23000, RED, p),
            ]
            t += 25000
    return out


def event_batches(
    prefix: str, controllers: int, n: int, batch: int, start_ms: int, lanes: int
) -> list[list[bytes]]:
    """Request bodies of about ``batch`` events in ``lanes`` lanes: each lane owns a share of the controllers and
    posts time slices across them in order (as one gateway polls its controllers)."""
    per_controller = max(1, n // controllers)
    cycles = per_controller // (7 * len(PHASES)) + 1
    out: list[list[bytes]] = []
    for lane in range(lanes):
        mine = range(lane, controllers, lanes)
        logs = {c: controller_log(start_ms + c * 100, cycles)[:per_controller] for c in mine}
        merged = sorted((t, c, code, param) for c, log in logs.items() for t, code, param in log)
        items = [
            {
                "timestamp": datetime.fromtimestamp(t / 1000, UTC).isoformat().replace("+00:00", "Z"),
                "controller_id": f"{prefix}C{c:05d}",
                "event_code": code,
                "parameter": param,
            }
            for t, c, code, param in merged
        ]
        out.append([orjson.dumps({"items": items[i : i + batch]}) for i in range(0, len(items), batch)])
    return out


async def ingest(
    kafka: KafkaSettings,
    database_url: str,
    n: int,
    batch: int = 10_000,
    concurrency: int = 4,
    controllers: int = 500,
) -> dict:
    """Hi-res events/s of one traffic service process (``batch`` events a request)."""
    svc = await start_service("traffic", kafka.bootstrap_servers, database_url)
    try:
        _, admin = await issue_key(database_url, ["traffic:admin"])
        gateway, key = await issue_key(database_url, ["traffic:ingest"])
        prefix = f"B{uuid.uuid4().hex[:5]}"
        # An hour ago, so that nothing is in the future and the whole log fits before now.
        start_ms = (int(time.time()) - 3600) * 1000
        bodies = event_batches(prefix, controllers, n, batch, start_ms, concurrency)
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=120) as client:
            regs = intersections(prefix, controllers, gateway)  # the ingest key reports for them all
            for i in range(0, len(regs), 1000):
                r = await client.post(
                    "/v1/intersections",
                    content=orjson.dumps({"items": regs[i : i + 1000]}),
                    headers=bearer(admin),
                )
                r.raise_for_status()
        # One lane per gateway: a controller's events arrive in order (the service rejects disorder > 5 s).
        out = await measure_ingest(
            svc, "/v1/events", bodies, bearer(key), concurrency=concurrency, unit="hi-res events"
        )
        # The processor's workload is what this published: one record per controller per request. Its
        # records/s times this are hi-res events/s.
        records = sum(
            len({item["controller_id"] for item in orjson.loads(body)["items"]})
            for lane in bodies
            for body in lane
        )
        events = sum(len(orjson.loads(body)["items"]) for lane in bodies for body in lane)
        out.update(
            {
                "batch": batch,
                "controllers": controllers,
                "hires_records": records,
                "events_per_record": round(events / records, 1),
            }
        )
        return out
    finally:
        svc.stop()
