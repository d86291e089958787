"""End to end through the real broker and database: domain KPI partials in → the city processor in a
ProcessorRuntime → merged city KPIs and a breach alarm out → stored by the city service → API."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.city.alarming import load_rules
from services.city.app import create_app
from services.city.processors import CityKpiProcessor
from services.city.settings import CitySettings
from shared.contracts import TOPICS
from shared.contracts.cloudevents import encode
from shared.contracts.common import kpi_key
from shared.kafka import EventPublisher
from shared.kafka.admin import ensure_topics
from shared.stream.runtime import ProcessorRuntime
from shared.testing import auth, issue_test_key, read_topic, running_app
from tests.areas import area

from .conftest import KPI_FILE

pytestmark = pytest.mark.integration


async def test_partials_merge_into_city_kpis_stored_and_served(
    test_domain, definitions, kafka_settings, db_settings, topics_ready
):
    kpi_et, alarm_et = test_domain
    now = datetime.now(UTC)
    # a complete window that has settled (alarms judge those only; see services/city/alarming.py)
    window = now.replace(minute=now.minute // 15 * 15, second=0, microsecond=0) - timedelta(minutes=45)

    def partial(kpi, level, code, n, d, partition):
        return encode(
            kpi_et,
            {
                "kpi": kpi,
                "scope_level": level,
                "scope_code": code,
                "window_start": window.isoformat(),
                "window_seconds": 900,
                "value": n / d if d else n,
                "numerator": n,
                "denominator": d,
                "unit": "x",
                "partition": partition,
                # emitted two minutes ago: the window is quiet, so the city judges it at once
                "observed_at": (now - timedelta(seconds=125 - partition)).isoformat(),
                "key": kpi_key(kpi, level, code),
            },
            source="/ioc/citytest",
        )

    # The test domain's topics are registered by the module fixture ``test_domain``, after the session-wide
    # ``topics_ready`` ran (a wider-scoped fixture runs first), so they may not exist yet: publishing would let the
    # broker auto-create the topic with its own default partition count (4), not the catalogue's (3), and the
    # processor would refuse to start (PartitionCountMismatch with its 3-partition changelog).
    await ensure_topics(kafka_settings, [TOPICS[kpi_et.topic], TOPICS[alarm_et.topic]])
    pub = EventPublisher(kafka_settings, client_id="city-pipeline-test")
    await pub.publish(
        [
            partial("citytest.availability", "district", area("DD"), 45.0, 50.0, 0),
            partial("citytest.availability", "district", area("DD"), 40.0, 50.0, 1),
            partial("citytest.energy_kwh", "city", "HN", 120.0, None, 0),
            partial("citytest.energy_kwh", "city", "HN", 80.5, None, 2),
        ]
    )
    # raise on the first bad window (the default waits for a second one: test_processors.py works that out)
    rules = {k: replace(r, on_delay_seconds=0) for k, r in load_rules(definitions, None).items()}
    processor = CityKpiProcessor(definitions, topics=[kpi_et.topic], rules=rules)
    processor.name = f"city-kpi-test-{uuid.uuid4().hex[:6]}"
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-pipe-{uuid.uuid4().hex[:8]}",
    )
    app = create_app(settings)
    async with running_app(app) as client, ProcessorRuntime(processor, kafka_settings).running() as rt:
        await rt.drain(timeout=40)
        ws = window.isoformat()

        def mine(e):
            return (
                e.data["window_start"].replace("Z", "+00:00") == ws
                and e.data["scope_code"] in (area("DD"), "HN")
                and e.data["kpi"] in ("citytest.availability", "citytest.energy_kwh")
            )

        out = await read_topic(kafka_settings, "ioc.city.kpis", where=mine, expect=2)
        latest = {(e.data["kpi"], e.data["scope_code"]): e.data for e in out}
        avail = latest[("citytest.availability", area("DD"))]
        assert avail["value"] == pytest.approx(0.85) and avail["status"] == "critical"  # 85/100 < 0.90
        assert (avail["partitions"], avail["numerator"], avail["denominator"]) == (2, 85.0, 100.0)
        assert latest[("citytest.energy_kwh", "HN")]["value"] == pytest.approx(200.5)

        breach_id = f"city:kpi_breach:citytest.availability:district:{area('DD')}"
        alarms = await read_topic(
            kafka_settings, "ioc.city.alarms", where=lambda e: e.data["alarm_id"] == breach_id, expect=1
        )
        assert alarms[-1].data["state"] == "raised" and alarms[-1].data["severity"] == "critical"

        _, key = await issue_test_key(
            app.state.ctx.pool, ["city:read"], kind="operator", attributes={"role": "supervisor"}
        )
        for _ in range(100):
            r = await client.get(
                "/v1/kpis", params={"kpi": "citytest.availability", "district": area("DD")}, headers=auth(key)
            )
            items = r.json()["items"]
            if items and items[0]["window_start"].startswith(window.isoformat()[:16]):
                break
            await asyncio.sleep(0.2)
        assert items[0]["value"] == pytest.approx(0.85) and items[0]["status"] == "critical"
        hist = (
            await client.get(
                "/v1/kpis/citytest.energy_kwh/history",
                headers=auth(key),
                params={
                    "from": (window - timedelta(hours=1)).isoformat(),
                    "to": (window + timedelta(hours=1)).isoformat(),
                },
            )
        ).json()
        assert hist["step"] == "raw" and hist["window_seconds"] == 900
        assert [p["value"] for p in hist["points"]][-1] == pytest.approx(200.5)
        for _ in range(100):
            r = await client.get(
                "/v1/alarms", params={"district": area("DD"), "domain": "city"}, headers=auth(key)
            )
            found = [a for a in r.json()["items"] if a["alarm_id"] == breach_id]
            if found:
                break
            await asyncio.sleep(0.2)
        assert found[0]["severity"] == "critical" and found[0]["state"] == "active"
        assert found[0]["incident_id"] is not None
    await pub.stop()
