"""End to end through the real broker: telemetry in over HTTP, the KPI processor in a ProcessorRuntime,
offline detected from silence, alarms and KPI observations out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.kiosk.app import create_app
from services.kiosk.domain import window_start
from services.kiosk.processors import KioskKpiProcessor
from services.kiosk.settings import KioskSettings
from shared.db import create_pool
from shared.stream.runtime import ProcessorRuntime
from shared.testing import auth, issue_test_key, read_topic, running_app
from tests.areas import area, unit

pytestmark = pytest.mark.integration

DISTRICT = area("HM")  # no other test uses Hoàng Mai, so its KPIs come from this test's kiosk only


def iso(t: datetime) -> str:
    return t.isoformat()


@pytest.fixture(scope="module")
async def keys(db_settings, platform_pool):
    pool = await create_pool(db_settings)
    _, admin = await issue_test_key(pool, ["kiosk:admin", "kiosk:ingest"], kind="admin")
    yield admin, pool
    await pool.close()


async def test_telemetry_in_offline_from_silence_alarms_and_kpis_out(
    kafka_settings, db_settings, topics_ready, keys
):
    admin_key, pool = keys
    kiosk = f"KP-{uuid.uuid4().hex[:10]}"
    _, gateway_key = await issue_test_key(pool, ["kiosk:ingest"], attributes={"kiosks": [kiosk]})
    gw = auth(gateway_key)
    now = datetime.now(UTC)
    settings = KioskSettings(kafka=kafka_settings, database=db_settings)
    async with running_app(create_app(settings)) as client:
        r = await client.put(
            f"/v1/kiosks/{kiosk}",
            headers=auth(admin_key),
            json={
                "building": "Tòa nhà Lotte",
                "address": "54 Liễu Giai",
                "district": DISTRICT,
                "commune": unit("HM-02"),
                "opening_hours": [{"days": [1, 2, 3, 4, 5, 6, 7], "open": "00:00", "close": "24:00"}],
                "peripherals": ["touchscreen", "printer"],
                "software_version": "3.2.1",
                "in_service_since": iso(now - timedelta(hours=1)),
            },
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            "/v1/heartbeats",
            headers=gw,
            json={
                "items": [
                    {"kiosk_id": kiosk, "at": iso(now - timedelta(seconds=s)), "app_version": "3.2.1"}
                    for s in (4, 2, 0)
                ]
            },
        )
        assert r.json()["accepted"] == 3, r.text
        started = now - timedelta(seconds=60)
        sessions = [("completed", 4), ("completed", 5), ("completed", None), ("abandoned", None)]
        r = await client.post(
            "/v1/sessions",
            headers=gw,
            json={
                "items": [
                    {
                        "session_id": f"s{i}",
                        "kiosk_id": kiosk,
                        "journey": "print_result",
                        "started_at": iso(started),
                        "ended_at": iso(started + timedelta(seconds=30)),
                        "outcome": outcome,
                        "rating": rating,
                    }
                    for i, (outcome, rating) in enumerate(sessions)
                ]
            },
        )
        assert r.json()["accepted"] == 4, r.text
        r = await client.post(
            "/v1/peripherals",
            headers=gw,
            json={
                "items": [
                    {
                        "kiosk_id": kiosk,
                        "peripheral": "printer",
                        "state": "online",
                        "paper": "out",
                        "at": iso(now),
                    }
                ]
            },
        )
        assert r.json()["accepted"] == 1, r.text

        proc = KioskKpiProcessor(
            heartbeat_timeout_s=2,
            kpi_interval_s=0.5,
            tick_seconds=0.2,
            name=f"kiosk-kpi-test-{uuid.uuid4().hex[:6]}",
        )
        async with ProcessorRuntime(proc, kafka_settings).running() as rt:
            await rt.drain(timeout=40)

            # Silent for more than the 2 s timeout: declared offline, and alarmed (the kiosk is open 24/7).
            mine = lambda e: e.data.get("kiosk_id", e.data.get("source_id")) == kiosk  # noqa: E731
            offline = await read_topic(
                kafka_settings,
                "ioc.kiosk.state",
                where=lambda e: mine(e) and e.data["state"] == "offline",
                expect=1,
            )
            assert (
                offline[0].data["reason"] == "heartbeat_timeout" and offline[0].data["district"] == DISTRICT
            )
            alarms = await read_topic(kafka_settings, "ioc.kiosk.alarms", where=mine, expect=2)
            assert sorted((a.data["alarm_type"], a.data["state"]) for a in alarms) == [
                ("kiosk_offline", "raised"),
                ("paper_out", "raised"),
            ]

            # Heartbeats return: back online and the offline alarm is cleared.
            r = await client.post(
                "/v1/heartbeats",
                headers=gw,
                json={"items": [{"kiosk_id": kiosk, "at": iso(datetime.now(UTC)), "app_version": "3.2.1"}]},
            )
            assert r.json()["accepted"] == 1
            back = await read_topic(
                kafka_settings,
                "ioc.kiosk.state",
                where=lambda e: mine(e) and e.data["state"] == "online",
                expect=1,
            )
            assert back[0].data["reason"] == "heartbeats_resumed"
            cleared = await read_topic(
                kafka_settings,
                "ioc.kiosk.alarms",
                where=lambda e: mine(e) and e.data["state"] == "cleared",
                expect=1,
            )
            assert cleared[0].data["alarm_type"] == "kiosk_offline"
            await rt.drain(timeout=20)

    # KPI observations for the district: the latest per window is what this partition saw.
    day = datetime.fromtimestamp(window_start(started.timestamp(), 86400), UTC)

    def latest(kpi: str) -> dict:
        obs = [e.data for e in kpis if e.data["kpi"] == kpi]
        assert obs, kpi
        return obs[-1]

    kpis = await read_topic(
        kafka_settings,
        "ioc.kiosk.kpis",
        where=lambda e: (
            e.data["scope_code"] == DISTRICT
            and e.data["window_seconds"] == 86400
            and datetime.fromisoformat(e.data["window_start"]) == day
        ),
    )
    success = latest("kiosk.session_success_rate")
    assert (success["numerator"], success["denominator"], success["value"]) == (3.0, 4.0, 75.0)
    assert latest("kiosk.abandonment_rate")["value"] == 25.0
    assert latest("kiosk.satisfaction_score")["value"] == 4.5
    assert latest("kiosk.mttr_seconds.kiosk_offline")["denominator"] == 1.0
    availability = latest("kiosk.technical_availability")
    # In service for the last hour, heard from only in the last few seconds of it. Day windows are local
    # (Vietnam) days: within an hour after local midnight (17:00 UTC) only part of that hour is in this window.
    in_window = min(day + timedelta(days=1), now) - max(day, now - timedelta(hours=1))
    assert 0 < availability["numerator"] < availability["denominator"]
    assert availability["denominator"] >= in_window.total_seconds()
    assert all(kiosk not in str(e.data) for e in kpis)
