"""Dossier benchmark path: dossiers/s through ``POST /v1/dossiers`` (one dossier a request, one PostgreSQL
transaction each: state, history, outbox, audit; the outbox relay publishes)."""

from __future__ import annotations

import uuid

import httpx
import orjson

from bench.domain_common import bearer, issue_key, measure_ingest, start_service
from shared.config import KafkaSettings


async def ingest(kafka: KafkaSettings, database_url: str, n: int, concurrency: int = 16) -> dict:
    """Dossier creations/s of one dossier service process (``concurrency`` requests in flight)."""
    from bench.domain_meter import district_codes

    svc = await start_service("dossier", kafka.bootstrap_servers, database_url)
    try:
        _, admin = await issue_key(database_url, ["dossier:admin"])
        _, key = await issue_key(database_url, ["dossier:write"])
        prefix = f"B{uuid.uuid4().hex[:5]}"
        districts = district_codes()[:10]
        procedures = [
            {
                "code": f"{prefix}P{i}",
                "name": f"Procedure {i}",
                "online_level": "fully_online",
                "processing_days": 5 + i,
                "has_fees": i % 2 == 0,
                "pauses_clock": True,
            }
            for i in range(20)
        ]
        agencies = [
            {
                "code": f"{prefix}A-{d}",
                "name": f"People's Committee {d}",
                "level": "district",
                "admin_unit": d,
            }
            for d in districts
        ]
        async with httpx.AsyncClient(base_url=svc.base_url, timeout=60) as client:
            for path, items in (("/v1/procedures", procedures), ("/v1/agencies", agencies)):
                r = await client.put(path, content=orjson.dumps({"items": items}), headers=bearer(admin))
                r.raise_for_status()
        # The applicant is synthetic (the service stores it for the agency and never publishes it).
        bodies = [
            orjson.dumps(
                {
                    "code": f"{prefix}-{i:07d}",
                    "procedure_code": f"{prefix}P{i % 20}",
                    "agency_code": agencies[i % len(agencies)]["code"],
                    "channel": ("online", "in_person", "postal")[i % 3],
                    "applicant": {
                        "name": "Bench Applicant",
                        "id_number": "001200000000",
                        "address": "1 Bench street",
                        "phone": "0900000000",
                    },
                }
            )
            for i in range(n)
        ]
        out = await measure_ingest(
            svc,
            "/v1/dossiers",
            bodies,
            bearer(key),
            concurrency=concurrency,
            unit="dossiers",
            count=lambda r: 1 if r.status_code == 201 else 0,
        )
        return out
    finally:
        svc.stop()
