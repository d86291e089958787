"""The operations console in a real browser (Debian's Chromium driven by Playwright) against the running city
service, with real events on the topics: tiles update live, an alarm appears and is acknowledged, drill-down."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from services.city import publishing
from services.city.app import create_app
from services.city.settings import CitySettings
from shared.areas import hierarchy_name
from shared.contracts.cloudevents import encode
from shared.embedded import free_port
from shared.kafka import EventPublisher
from shared.testing import issue_test_key
from tests.areas import CAU_GIAY

from .auth_helpers import make_operator, sign_in_page
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
    # The test's "running" window must still be running at its end (about two minutes on a slow machine):
    # close to a quarter-hour boundary, start in the next quarter hour instead.
    now = datetime.now(UTC)
    to_boundary = (_window(now) + timedelta(minutes=15) - now).total_seconds()
    if to_boundary < 180:
        await asyncio.sleep(to_boundary + 1)
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
            "district": CAU_GIAY,
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
                username, password = await make_operator(app.state.ctx.pool, "operator")
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
                await sign_in_page(page, username, password)
                tile = page.locator('.tile[data-kpi="citytest.availability"]')
                await expect(tile).to_be_visible()
                # every top area of the loaded hierarchy: 126 communes and wards (2025), 30 districts (2019)
                await expect(page.locator(".district")).to_have_count(
                    {"hanoi-2025": 126, "hanoi-2019": 30}[hierarchy_name()]
                )
                conn = page.locator("#conn")
                await expect(conn).to_have_class("conn conn-on", timeout=15000)

                # A KPI changes through the pipeline (broker → store → SSE): the tile follows within seconds.
                # The complete window is what the tile shows; the running one is its labelled second line.
                await pub.publish(
                    [
                        kpi("citytest.availability", "city", "HN", 0.9345, "warning"),
                        kpi("citytest.availability", "city", "HN", 0.5, "critical", at=running),
                        kpi("citytest.availability", "district", CAU_GIAY, 0.85, "critical"),
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
                await expect(page.locator(f'.district[data-code="{CAU_GIAY}"]')).to_have_attribute(
                    "data-status", "critical"
                )

                await row.locator("button.ack").click()
                await expect(row).to_have_attribute("data-state", "acknowledged", timeout=10000)

                await page.click(f'.district[data-code="{CAU_GIAY}"]')
                detail = page.locator("#district-detail")
                await expect(detail).to_be_visible()
                # assets in alarm, each a link to its page (assets.js)
                await expect(detail.locator(f'tr[data-asset="{source}"] a')).to_have_text(source)
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
                await page.click(f'.district[data-code="{CAU_GIAY}"]')
                await expect(page.locator("#district-detail")).to_be_visible()
                await page.wait_for_timeout(500)
                await page.screenshot(path=str(artifacts_dir / "city-console-en.png"), full_page=True)
                found = await page.evaluate(UNTRANSLATED, "en")
                assert found == {"foreign": [], "codes": [], "broken": [], "stuck": []}
            assert errors == []
        finally:
            await browser.close()

    await pub.stop()


def _csv_rows(data: bytes) -> list[dict[str, str]]:
    import csv
    import io

    text = data.decode("utf-8")
    assert text.startswith("\ufeff") and text.endswith("\r\n")  # BOM for spreadsheets, RFC 4180 line ends
    return list(csv.DictReader(io.StringIO(text[1:], newline="")))


def _js_string(v) -> str:
    """A JSON value as the console's CSV writes it (JavaScript's String(): 1.0 is "1", null is "")."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


async def test_console_exports_its_chart_as_csv_and_downloads_archive_extracts(
    test_domain, kafka_settings, db_settings, topics_ready, tmp_path
):
    """The history chart's export equals the API's points; the archive extract the console downloads (through
    the city's same-origin proxy, key in a header) equals the archive API's own answer, byte for byte; no key
    ever appears in a URL."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    import httpx
    from playwright.async_api import async_playwright, expect

    from services.archive.app import create_app as create_archive_app
    from services.archive.settings import ArchiveSettings
    from services.archive.store import ArchiveStore
    from services.archive.worker import write_records
    from tests.archive.helpers import as_records, readings

    day = datetime(2026, 10, 5, tzinfo=UTC)
    # 4 meters x 96 quarter-hours in HN-BD and the same in HN-HK, archived as the archiver would
    events = readings(384, day, meters=4, district="HN-BD") + readings(384, day, meters=4, district="HN-HK")
    write_records(ArchiveStore(str(tmp_path)), "t", "e1", as_records(events))
    archive_port, port = free_port(), free_port()
    archive_app = create_archive_app(ArchiveSettings(root=str(tmp_path), database=db_settings))
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-export-{uuid.uuid4().hex[:8]}",
        archive_url=f"http://127.0.0.1:{archive_port}",
    )
    app = create_app(settings)
    pub = EventPublisher(kafka_settings, client_id="city-export-test")
    now = datetime.now(UTC)
    later = now + timedelta(days=2)
    history = [
        publishing.kpi_updated(
            kpi="citytest.availability",
            domain="citytest",
            scope_level="city",
            scope_code="HN",
            window_start=_window(now, i).isoformat(),
            window_seconds=900,
            value=0.9 + 0.01 * i,
            numerator=0.9 + 0.01 * i,
            denominator=1.0,
            unit="ratio",
            status="ok",
            target=0.98,
            partitions=3,
            now=later + timedelta(seconds=i),
        )
        for i in range(1, 9)
    ]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1300}, accept_downloads=True)
            urls: list[str] = []
            page.on("request", lambda r: urls.append(r.url))
            async with serve(archive_app, archive_port) as archive_base, serve(app, port) as base:
                # the page signs in as a supervisor (archive:read); the direct comparison uses a key
                username, password = await make_operator(app.state.ctx.pool, "supervisor")
                _, key = await issue_test_key(
                    app.state.ctx.pool,
                    ["city:read", "archive:read"],
                    kind="operator",
                    attributes={"role": "operator"},
                )
                await pub.publish(history)
                await page.goto(base + "/")
                await sign_in_page(page, username, password)
                await expect(page.locator('.tile[data-kpi="citytest.availability"]')).to_be_visible(
                    timeout=20000
                )

                # the chart's CSV is the points the API gave the chart
                await page.select_option("#history-kpi", "citytest.availability")
                for _ in range(40):  # until the store has the eight windows
                    async with page.expect_response(lambda r: "/history?" in r.url) as answer:
                        await page.click("#history-load")
                    points = (await (await answer.value).json())["points"]
                    if len(points) >= 8:
                        break
                    await page.wait_for_timeout(500)
                assert len(points) >= 8
                async with page.expect_download() as dl:
                    await page.click("#export-history")
                download = await dl.value
                assert download.suggested_filename.startswith("ioc-history-citytest.availability-HN-")
                rows = _csv_rows(Path(await download.path()).read_bytes())
                assert rows == [{k: _js_string(v) for k, v in p.items()} for p in points]

                # an archive extract: HN-BD's readings of 07:00-13:00 Hanoi time (00:00-06:00 UTC) as CSV
                await expect(page.locator("#archive-topic option[value='ioc.meter.readings']")).to_have_count(
                    1
                )
                await page.select_option("#archive-topic", "ioc.meter.readings")
                await page.fill("#archive-from", "2026-10-05T07:00")
                await page.fill("#archive-to", "2026-10-05T13:00")
                await page.fill("#archive-area", "HN-BD")
                async with page.expect_download() as dl:
                    await page.click("#archive-download")
                download = await dl.value
                got = Path(await download.path()).read_bytes()
                async with httpx.AsyncClient() as client:
                    direct = await client.get(
                        archive_base + "/v1/archive/extract",
                        params={
                            "topic": "ioc.meter.readings",
                            "from": "2026-10-05T00:00:00+00:00",
                            "to": "2026-10-05T06:00:00+00:00",
                            "area": "HN-BD",
                        },
                        headers={"Authorization": f"Bearer {key}"},
                    )
                # the helper stamps every event at the day's start: all 384 of HN-BD, none of HN-HK
                assert direct.status_code == 200 and direct.headers["x-row-count"] == "384"
                assert got == direct.content
                assert download.suggested_filename.endswith(".csv")
                await expect(page.locator("#archive-status")).to_contain_text("384")

                # a key without archive:read: the city forwards, the archive refuses, the page says why
                _, city_only = await issue_test_key(
                    app.state.ctx.pool, ["city:read"], kind="operator", attributes={"role": "operator"}
                )
                async with httpx.AsyncClient() as client:
                    r = await client.get(
                        base + "/v1/exports/archive",
                        params={
                            "topic": "ioc.meter.readings",
                            "from": "2026-10-05T00:00:00Z",
                            "to": "2026-10-05T06:00:00Z",
                        },
                        headers={"Authorization": f"Bearer {city_only}"},
                    )
                    assert r.status_code == 403
                    r = await client.get(
                        base + "/v1/exports/archive",
                        params={
                            "topic": "ioc.meter.readings",
                            "from": "2026-10-05T00:00:00Z",
                            "to": "2026-10-05T06:00:00Z",
                        },
                    )
                    assert r.status_code == 401
            assert not [u for u in urls if key in u]
        finally:
            await browser.close()
    await pub.stop()
