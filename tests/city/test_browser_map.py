"""The console map in a real browser (Debian's Chromium through Playwright), offline: every request to anything
but the local service is refused, so the map must draw the boundaries alone. An area whose KPI breaches is drawn
in the alarm colour, and a click on it opens its drill-down (docs/console-map.md)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest

from services.city.app import create_app
from services.city.settings import CitySettings
from shared.contracts.cloudevents import encode
from shared.embedded import free_port
from shared.kafka import EventPublisher

from .auth_helpers import make_operator, sign_in_page
from .conftest import KPI_FILE, serve
from .test_api import kpi_event

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

# the smallest valid PNG (1x1, transparent): what the test's "tile server" answers
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c63000100000500010d0a2db40000000049454e44ae426082"
)
AREA_FILL = "(code) => document.querySelector(`#map path[data-code='${code}']`)?.getAttribute('fill')"
LABEL_POINT = """(code) => {
  const M = window.IOC_MAP, [lat, lon] = M.labels[code], p = M.map.latLngToContainerPoint([lat, lon]);
  const box = document.getElementById("map").getBoundingClientRect();
  return [box.left + p.x, box.top + p.y];
}"""


async def test_the_map_colours_areas_by_kpi_status_offline_and_a_click_drills_down(
    test_domain, kafka_settings, db_settings, topics_ready, artifacts_dir, monkeypatch
):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.async_api import async_playwright, expect

    monkeypatch.setenv("IOC_ADMIN_HIERARCHY", "hanoi-2025")
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-map-ui-{uuid.uuid4().hex[:8]}",
    )
    app = create_app(settings)
    pub = EventPublisher(kafka_settings, client_id="city-map-ui-test")
    now = datetime.now(UTC)
    done = now.replace(minute=now.minute // 15 * 15, second=0, microsecond=0) - timedelta(minutes=30)
    later = now + timedelta(days=3)
    breaching, healthy = "00097", "00103"  # Hồng Hà ward, Tây Hồ ward

    _, alarm_et = test_domain
    source = f"KS-{uuid.uuid4().hex[:6]}"
    alarm = {
        "alarm_id": f"kiosk:kiosk_offline:{source}",
        "domain": "kiosk",
        "alarm_type": "kiosk_offline",
        "state": "raised",
        "severity": "major",
        "source_id": source,
        "district": "00004",
        "commune": "00004",
        "at": now.isoformat(),
        "message": "kiosk silent for 3 heartbeats",
    }

    port = free_port()
    blocked: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        try:
            page = await browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: print("console:", m.type, m.text))  # shown when the test fails

            async def offline(route):
                if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
                    await route.continue_()
                else:
                    blocked.append(route.request.url)
                    await route.abort()

            await page.route("**/*", offline)
            async with serve(app, port) as base:
                username, password = await make_operator(app.state.ctx.pool, "operator")
                await pub.publish(
                    [
                        kpi_event(
                            "citytest.availability",
                            "district",
                            breaching,
                            done,
                            0.8,
                            status="critical",
                            at=later,
                        ),
                        kpi_event(
                            "citytest.availability", "district", healthy, done, 0.99, status="ok", at=later
                        ),
                    ]
                )
                await page.goto(base + "/")
                await sign_in_page(page, username, password)
                await expect(page.locator("#map[data-ready='true']")).to_be_visible(timeout=20000)
                await expect(page.locator("#map path.map-area")).to_have_count(126)
                assert await page.locator("#map").get_attribute("data-tiles") == "off"
                # the boundaries' licence (ODbL) asks for the credit even without a tile layer
                await expect(page.locator("#map .leaflet-control-attribution")).to_contain_text(
                    "© OpenStreetMap contributors"
                )
                await expect(page.locator("#districts-section h2")).to_have_text("Xã, phường")

                # select the KPI: the breaching ward turns to the alarm colour, the healthy one to ok
                await expect(page.locator("#map-kpi option[value='citytest.availability']")).to_have_count(
                    1, timeout=15000
                )
                await page.select_option("#map-kpi", "citytest.availability")
                area = page.locator(f"#map path[data-code='{breaching}']")
                await expect(area).to_have_attribute("data-status", "critical", timeout=20000)
                await expect(page.locator(f"#map path[data-code='{healthy}']")).to_have_attribute(
                    "data-status", "ok"
                )
                critical = await page.evaluate(
                    "getComputedStyle(document.documentElement).getPropertyValue('--critical').trim()"
                )
                assert await page.evaluate(AREA_FILL, breaching) == critical == "#d64545"
                assert await page.evaluate(AREA_FILL, healthy) == "#2e9d5b"  # --ok

                # an asset in alarm in another ward: a marker there, and the incident it opened
                await pub.publish([encode(alarm_et, alarm, source="/ioc/test")])
                # (other tests' alarms may share the database: find ours among the clustered markers)
                await page.wait_for_function(
                    "(s) => window.IOC_MAP.markers.getLayers().some((m) => m.options.title === s)",
                    arg=source,
                    timeout=20000,
                )
                await expect(page.locator("#map .map-asset, #map .marker-cluster").first).to_be_visible()
                await expect(page.locator("#map .map-incident").first).to_be_visible(timeout=10000)

                await page.locator("#map").scroll_into_view_if_needed()
                await page.screenshot(path=str(artifacts_dir / "console-map-1600x1000.png"))
                await page.set_viewport_size({"width": 1280, "height": 800})
                await page.wait_for_timeout(300)
                await page.evaluate("window.IOC_MAP.map.invalidateSize()")
                await page.locator("#map").scroll_into_view_if_needed()
                await page.screenshot(path=str(artifacts_dir / "console-map-1280x800.png"))

                # a click inside the ward drills down: its page opens, the hook event and hash announce it
                await page.evaluate(
                    "document.addEventListener('ioc:select-area', (e) => { window.selected = e.detail; })"
                )
                # (zoomed in, as a user would: at the city-wide zoom the centre's small wards lie under the
                # markers of their neighbours, e.g. Ba Đình's incident covers Hồng Hà's label point)
                await page.evaluate(
                    "(c) => window.IOC_MAP.map.setView(window.IOC_MAP.labels[c], 14, {animate: false})",
                    breaching,
                )
                await page.wait_for_timeout(300)
                x, y = await page.evaluate(LABEL_POINT, breaching)
                await page.mouse.click(x, y)
                # (the area's page: its KPIs, assets in alarm and incidents; docs/console-assets.md)
                detail = page.locator(f'#view[data-page="area"][data-code="{breaching}"]')
                await expect(detail).to_be_visible(timeout=10000)
                await expect(detail).to_contain_text("Hồng Hà")
                await expect(page.locator('#area-kpis tr[data-kpi="citytest.availability"]')).to_contain_text(
                    "80%"
                )
                assert await page.evaluate("window.selected") == {
                    "code": breaching,
                    "name": "Hồng Hà",
                    "level": "commune",
                }
                assert await page.evaluate("location.hash") == f"#area/{breaching}"
                await page.screenshot(path=str(artifacts_dir / "console-map-drilldown-1280x800.png"))

                # a deployment with a tile server: the map draws its tiles under the areas, with its credit
                # (served here by the test itself: still nothing leaves the machine)
                app.state.ctx.settings.map_tile_url = base + "/test-tiles/{z}/{x}/{y}.png"
                app.state.ctx.settings.map_tile_attribution = "© test tiles"
                tiles: list[str] = []

                async def tile(route):
                    tiles.append(route.request.url)
                    await route.fulfill(status=200, content_type="image/png", body=PNG_1X1)

                await page.route("**/test-tiles/**", tile)
                await page.goto(base + "/")  # the overview again (a reload would reopen the area's page)
                await expect(page.locator("#map[data-ready='true']")).to_be_visible(timeout=20000)
                assert await page.locator("#map").get_attribute("data-tiles") == "on"
                await expect(page.locator("#map .leaflet-tile").first).to_be_attached()
                await expect(page.locator("#map .leaflet-control-attribution")).to_contain_text(
                    "© test tiles"
                )
                await expect(page.locator("#map path.map-area")).to_have_count(126)
                assert tiles and all("/test-tiles/" in u for u in tiles)
            assert errors == []
            assert blocked == [], "the map asked for something outside the service"
        finally:
            await browser.close()
            await pub.stop()
