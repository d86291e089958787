"""The operations console in a real browser (Debian's Chromium driven by Playwright) against the running city
service, with real events on the topics: tiles update live, an alarm appears and is acknowledged, drill-down."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from services.city import publishing
from services.city.app import create_app
from services.city.settings import CitySettings
from shared.contracts.cloudevents import encode
from shared.embedded import free_port
from shared.kafka import EventPublisher
from shared.testing import issue_test_key

from .conftest import KPI_FILE, serve

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.integration, pytest.mark.browser]


async def test_console_updates_live_acknowledges_alarms_and_drills_down(
    test_domain, kafka_settings, db_settings, topics_ready, artifacts_dir
):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.async_api import async_playwright, expect

    _, alarm_et = test_domain
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-ui-{uuid.uuid4().hex[:8]}",
    )
    app = create_app(settings)
    pub = EventPublisher(kafka_settings, client_id="city-ui-test")
    now = datetime.now(UTC)
    # a window newer than any other test's, so it is the tile's current value
    window = now.replace(minute=now.minute // 15 * 15, second=0, microsecond=0) + timedelta(days=1)

    def kpi(kpi_id, level, code, value, status, unit="ratio", at=None):
        return publishing.kpi_updated(
            kpi=kpi_id,
            domain="citytest",
            scope_level=level,
            scope_code=code,
            window_start=(at or window).isoformat(),
            window_seconds=900,
            value=value,
            numerator=value,
            denominator=1.0,
            unit=unit,
            status=status,
            target=0.98,
            partitions=3,
            now=datetime.now(UTC),
        )

    source = f"K-{uuid.uuid4().hex[:6]}"
    alarm_id = f"kiosk:kiosk_offline:{source}"
    alarm = encode(
        alarm_et,
        {
            "alarm_id": alarm_id,
            "domain": "kiosk",
            "alarm_type": "kiosk_offline",
            "state": "raised",
            "severity": "major",
            "source_id": source,
            "district": "CG",
            "commune": None,
            "at": now.isoformat(),
            "message": "kiosk silent for 3 heartbeats",
        },
        source="/ioc/test",
    )

    port = free_port()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1300})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            async with serve(app, port) as base:
                _, key = await issue_test_key(
                    app.state.ctx.pool,
                    ["city:read", "city:operate"],
                    kind="operator",
                    attributes={"role": "operator"},
                )
                # some history for the chart: the last hours of city-wide availability
                await pub.publish(
                    [
                        kpi(
                            "citytest.availability",
                            "city",
                            "HN",
                            0.97 - 0.01 * (i % 4),
                            "ok",
                            at=window - timedelta(days=1, minutes=15 * i),
                        )
                        for i in range(1, 16)
                    ]
                )
                await page.goto(base + "/")
                await expect(page.locator("h1")).to_have_text("Trung tâm điều hành thông minh Hà Nội")
                await page.fill("#api-key", key)
                await page.click("#key-form button")
                tile = page.locator('.tile[data-kpi="citytest.availability"]')
                await expect(tile).to_be_visible()
                await expect(page.locator(".district")).to_have_count(30)
                conn = page.locator("#conn")
                await expect(conn).to_have_class("conn conn-on", timeout=15000)

                # Real events on the topics; the page must update without reloading.
                await pub.publish(
                    [
                        kpi("citytest.availability", "city", "HN", 0.9345, "warning"),
                        kpi("citytest.availability", "district", "CG", 0.85, "critical"),
                        alarm,
                    ]
                )
                await expect(tile.locator(".value")).to_have_text("93.5%", timeout=20000)
                await expect(tile).to_have_attribute("data-status", "warning")
                row = page.locator(f'#alarms tr[data-alarm="{alarm_id}"]')
                await expect(row).to_be_visible(timeout=20000)
                await expect(page.locator('.district[data-code="CG"]')).to_have_attribute(
                    "data-status", "critical"
                )

                await row.locator("button.ack").click()
                await expect(row).to_have_attribute("data-state", "acknowledged", timeout=10000)

                await page.click('.district[data-code="CG"]')
                detail = page.locator("#district-detail")
                await expect(detail).to_be_visible()
                await expect(detail.locator(f'tr[data-alarm="{alarm_id}"]')).to_contain_text(source)
                await expect(detail.locator('tr[data-kpi="citytest.availability"]')).to_contain_text("85.0%")

            # The server restarts; what happened meanwhile reaches the page when EventSource reconnects
            # with Last-Event-ID.
            await expect(conn).not_to_have_class("conn conn-on", timeout=10000)
            await pub.publish([kpi("citytest.availability", "city", "HN", 0.9612, "ok")])
            # (a fresh consumer group: the embedded broker makes a rejoin of the old one wait for its session
            # timeout; the new group replays the topics, which must not stream anything twice)
            app = create_app(settings.model_copy(update={"consumer_group": settings.consumer_group + "-2"}))
            async with serve(app, port):
                await expect(tile.locator(".value")).to_have_text("96.1%", timeout=25000)
                await expect(conn).to_have_class("conn conn-on")

                await page.click("#lang")
                await expect(page.locator("h1")).to_have_text("Hanoi Intelligent Operations Center")
                await expect(page.locator("#alarms th").first).to_have_text("Severity")
                await page.click("#history-load")
                await expect(page.locator("#chart canvas")).to_have_count(1)
                await expect(page.locator("#chart")).not_to_have_attribute("data-points", "0")
                await page.screenshot(path=str(artifacts_dir / "city-console.png"), full_page=True)
            assert errors == []
        finally:
            await browser.close()

    await pub.stop()
