"""Kiosk benchmark path: heartbeats and finished sessions through the kiosk service."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import httpx
import orjson

from bench.domain_common import bearer, issue_key, measure_ingest, start_service
from shared.config import KafkaSettings

#: event-time pace of the generated data: a kiosk's heartbeat interval, and the time between two sessions' starts
HEARTBEAT_EVERY = 30
SESSION_EVERY = 0.5
JOURNEYS = ("lookup_procedure", "submit_dossier", "check_status", "pay_fee", "print_result", "queue_ticket")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def kiosks(prefix: str, count: int, gateway: str) -> list[dict]:
    """``count`` kiosks spread over the districts, open Mon-Sat 07:30-17:00, reported by ``gateway``."""
    from bench.domain_meter import district_codes

    districts = district_codes()
    return [
        {
            "kiosk_id": f"{prefix}K{i:05d}",
            "building": f"One-stop centre {i}",
            "address": f"{i} Bench street",
            "district": districts[i % len(districts)],
            "opening_hours": [{"days": [1, 2, 3, 4, 5, 6], "open": "07:30", "close": "17:00"}],
            "peripherals": ["printer", "card_reader", "touchscreen"],
            "software_version": "2.4.1",
            "gateway": gateway,
        }
        for i in range(count)
    ]


def heartbeat_item(prefix: str, count: int, i: int, start: float) -> dict:
    """The ``i``-th heartbeat of ``count`` kiosks each beating every ``HEARTBEAT_EVERY`` s from ``start``, in time
    order."""
    r, k = divmod(i, count)
    return {
        "kiosk_id": f"{prefix}K{k:05d}",
        "at": iso(start + HEARTBEAT_EVERY * r + k % HEARTBEAT_EVERY),
        "app_version": "2.4.1",
        "uptime_seconds": HEARTBEAT_EVERY * r,
        "network": "wired",
    }


def heartbeat_batches(prefix: str, count: int, n: int, batch: int, start: float) -> list[bytes]:
    """Every kiosk's heartbeat every 30 s from ``start``, in time order, ``batch`` a request."""
    items = [heartbeat_item(prefix, count, i, start) for i in range(n)]
    return [orjson.dumps({"items": items[i : i + batch]}) for i in range(0, len(items), batch)]


def session_item(prefix: str, count: int, s: int, start: float) -> dict:
    """The ``s``-th finished session (1-5 minutes) on one of ``count`` kiosks: mostly completed, some
    abandoned or failed."""
    began = start + s * SESSION_EVERY
    outcome = "completed" if s % 10 < 8 else ("abandoned" if s % 10 == 8 else "failed")
    item = {
        "session_id": f"{prefix}S{s:07d}",
        "kiosk_id": f"{prefix}K{s % count:05d}",
        "journey": JOURNEYS[s % len(JOURNEYS)],
        "started_at": iso(began),
        "ended_at": iso(began + 60 + s % 240),
        "outcome": outcome,
    }
    if outcome == "failed":
        item["failure_reason"] = "device_fault"
    return item


def session_batches(prefix: str, count: int, n: int, batch: int, start: float) -> list[bytes]:
    """``n`` finished sessions (:func:`session_item`) in request bodies of ``batch``."""
    items = [session_item(prefix, count, s, start) for s in range(n)]
    return [orjson.dumps({"items": items[i : i + batch]}) for i in range(0, len(items), batch)]


async def ingest(
    kafka: KafkaSettings,
    database_url: str,
    n: int,
    batch: int = 5000,
    concurrency: int = 4,
    kiosk_count: int = 2000,
) -> dict:
    """Heartbeats/s (and sessions/s) of one kiosk service process."""
    svc = await start_service("kiosk", kafka.bootstrap_servers, database_url)
    try:
        _, admin = await issue_key(database_url, ["kiosk:admin"])
        gateway, key = await issue_key(database_url, ["kiosk:ingest"])
        prefix = f"B{uuid.uuid4().hex[:5]}"
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=120) as client:
            regs = kiosks(prefix, kiosk_count, gateway)
            for i in range(0, len(regs), 5000):
                r = await client.post(
                    "/v1/kiosks/import",
                    content=orjson.dumps({"items": regs[i : i + 5000]}),
                    headers=bearer(admin),
                )
                r.raise_for_status()
        start = time.time() - 6 * 3600
        out = await measure_ingest(
            svc,
            "/v1/heartbeats",
            heartbeat_batches(prefix, kiosk_count, n, batch, start),
            bearer(key),
            concurrency=concurrency,
            unit="heartbeats",
        )
        sessions = await measure_ingest(
            svc,
            "/v1/sessions",
            session_batches(prefix, kiosk_count, max(n // 4, batch), batch, start),
            bearer(key),
            concurrency=concurrency,
            unit="sessions",
        )
        out.update({"batch": batch, "kiosks": kiosk_count, "sessions": sessions})
        return out
    finally:
        svc.stop()
