"""The operations console in a real browser (Debian's Chromium driven by Playwright) against the running city
service, with real events on the topics: tiles update live, an alarm appears and is acknowledged, drill-down."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
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


UNTRANSLATED = r"""
(lang) => {
  const {I18N, DOMAINS, ALARM_TYPES} = window.IOC_I18N;
  const other = lang === "vi" ? "en" : "vi";
  const names = (l) => [...Object.values(I18N[l]), ...Object.values(DOMAINS[l]), ...Object.values(ALARM_TYPES[l]),
    ...[...document.querySelectorAll("#history-kpi option")].map(() => "")];
  const mine = new Set(names(lang));
  // (plus the chart library's own default legend word, which the console must replace)
  const foreign = [...names(other).filter((s) => s.length >= 4 && !mine.has(s)), ...(lang === "vi" ? ["Time"] : [])];
  const parts = [...document.querySelectorAll("header, #message, #tiles-section, .columns:first-of-type, #history-section")];
  const text = parts.map((e) => e.innerText).join("\n");
  return {
    foreign: foreign.filter((s) => text.includes(s)),
    codes: text.match(/\b[a-z]+_[a-z_]+\b/g) || [],
    broken: text.match(/undefined|NaN|\bnull\b|\[object/g) || [],
    stuck: text.match(/\d[.,]\d{5,}/g) || [],
  };
}
"""


def _window(now: datetime, back: int = 0) -> datetime:
    return now.replace(minute=now.minute // 15 * 15, second=0, microsecond=0) - timedelta(minutes=15 * back)


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
    complete, running = _window(now, 1), _window(now)
    # Updates newer than any other test's of the same windows (tests share the database).
    later = [now + timedelta(days=1)]

    def kpi(kpi_id, level, code, value, status, unit="ratio", at=None):
        later[0] += timedelta(seconds=1)
        return publishing.kpi_updated(
            kpi=kpi_id,
            domain="citytest",
            scope_level=level,
            scope_code=code,
            # the live path carries window starts as "+07:00" here on purpose: the page compares instants
            window_start=(at or complete).astimezone(timezone(timedelta(hours=7))).isoformat(),
            window_seconds=900,
            value=value,
            numerator=value,
            denominator=1.0,
            unit=unit,
            status=status,
            target=0.98,
            partitions=3,
            now=later[0],
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
            # the restart below breaks the open event stream: the browser logs that, it is no script error
            page.on(
                "console",
                lambda m: (
                    errors.append(m.text)
                    if m.type == "error" and "Failed to load resource" not in m.text
                    else None
                ),
            )
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
                            at=_window(now, i),
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

                # A KPI changes through the pipeline (broker → store → SSE): the tile follows within seconds.
                # The complete window is what the tile shows; the running one is its labelled second line.
                await pub.publish(
                    [
                        kpi("citytest.availability", "city", "HN", 0.9345, "warning"),
                        kpi("citytest.availability", "city", "HN", 0.5, "critical", at=running),
                        kpi("citytest.availability", "district", "CG", 0.85, "critical"),
                        alarm,
                    ]
                )
                await expect(tile.locator(".value")).to_have_text("93,5%", timeout=20000)
                await expect(tile).to_have_attribute("data-status", "warning")
                await expect(tile.locator(".running")).to_contain_text("50%")
                await expect(tile.locator(".window")).to_contain_text("15 phút")
                row = page.locator(f'#alarms tr[data-alarm="{alarm_id}"]')
                await expect(row).to_be_visible(timeout=20000)
                await expect(row).to_contain_text("Ki-ốt mất kết nối")
                await expect(page.locator('.district[data-code="CG"]')).to_have_attribute(
                    "data-status", "critical"
                )

                await row.locator("button.ack").click()
                await expect(row).to_have_attribute("data-state", "acknowledged", timeout=10000)

                await page.click('.district[data-code="CG"]')
                detail = page.locator("#district-detail")
                await expect(detail).to_be_visible()
                await expect(detail.locator(f'tr[data-alarm="{alarm_id}"]')).to_contain_text(source)
                await expect(detail.locator('tr[data-kpi="citytest.availability"]')).to_contain_text("85%")
                await page.click("#history-load")
                await expect(page.locator("#chart canvas")).to_have_count(1)
                await page.screenshot(path=str(artifacts_dir / "city-console-vi.png"), full_page=True)
                found = await page.evaluate(UNTRANSLATED, "vi")
                assert found == {"foreign": [], "codes": [], "broken": [], "stuck": []}

            # The server restarts; what happened meanwhile reaches the page when EventSource reconnects
            # with Last-Event-ID.
            await expect(conn).not_to_have_class("conn conn-on", timeout=10000)
            await pub.publish([kpi("citytest.availability", "city", "HN", 0.9612, "ok")])
            # (a fresh consumer group: the embedded broker makes a rejoin of the old one wait for its session
            # timeout; the new group replays the topics, which must not stream anything twice)
            app = create_app(settings.model_copy(update={"consumer_group": settings.consumer_group + "-2"}))
            async with serve(app, port):
                await expect(tile.locator(".value")).to_have_text("96,1%", timeout=25000)
                await expect(conn).to_have_class("conn conn-on")

                await page.click("#lang")
                await expect(page.locator("h1")).to_have_text("Hanoi Intelligent Operations Center")
                await expect(page.locator("#alarms th").first).to_have_text("Severity")
                await expect(tile.locator(".value")).to_have_text("96.1%")
                await page.select_option("#history-kpi", "citytest.availability")
                await page.click("#history-load")
                await expect(page.locator("#chart canvas")).to_have_count(1)
                await expect(page.locator("#chart")).not_to_have_attribute("data-points", "0")
                await page.click('.district[data-code="CG"]')
                await expect(page.locator("#district-detail")).to_be_visible()
                await page.wait_for_timeout(500)
                await page.screenshot(path=str(artifacts_dir / "city-console-en.png"), full_page=True)
                found = await page.evaluate(UNTRANSLATED, "en")
                assert found == {"foreign": [], "codes": [], "broken": [], "stuck": []}
            assert errors == []
        finally:
            await browser.close()

    await pub.stop()
