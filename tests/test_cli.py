"""The `ioc` command against the real broker: the catalogue, and a live tail that decodes and filters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import encode
from shared.contracts.platform import AuditRecorded
from shared.kafka import EventPublisher

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


def _ioc(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ioc", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_topics_prints_the_catalogue_with_layout_and_types():
    r = _ioc("topics", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["topic"]: row for row in json.loads(r.stdout)}
    assert {
        "ioc.meter.readings",
        "ioc.traffic.events",
        "ioc.kiosk.heartbeats",
        "ioc.dossier.lifecycle",
        "ioc.city.kpis",
        "ioc.deadletter",
    } <= set(rows)
    assert rows["ioc.meter.readings"]["key"] == "meter_id"
    assert "ioc.meter.reading.recorded.v1" in rows["ioc.meter.readings"]["types"]


async def test_tail_decodes_and_filters_events(kafka_settings, topics_ready):
    target = f"cli-{uuid.uuid4().hex[:8]}"
    pub = EventPublisher(kafka_settings, client_id="cli-test")
    et = event_type_of(AuditRecorded)
    await pub.publish(
        [
            encode(
                et,
                AuditRecorded(principal="p", action=a, target=t, at=datetime.now(UTC), service="test"),
                source="/ioc/test",
            )
            for a, t in (("noise", "other"), ("wanted", target))
        ]
    )
    await pub.stop()
    r = _ioc(
        "tail",
        "ioc.platform.audit",
        "--from-beginning",
        "--grep",
        target,
        "-n",
        "1",
        "--json",
        env={"IOC_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers},
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["type"] == "ioc.platform.audit.recorded.v1" and doc["data"]["target"] == target
    assert doc["data"]["action"] == "wanted"
