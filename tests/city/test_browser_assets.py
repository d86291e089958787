"""The drill-down pages in a real browser (Debian's Chromium through Playwright) against the running city,
traffic, kiosk and dossier services: a click on an asset in alarm opens its page with live data (an alarm
published while the page is open appears), the intersection's ATSPM charts draw from the traffic service's
measures (the coordination diagram one dot per vehicle, the terminations per cycle), a signed-in operator sees a
kiosk's status and an agency's Decision 766 scorecard, the multi-series chart and the daily report render, and
their CSV exports equal the API's answers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from services.city import publishing
from services.city.app import create_app
from services.city.settings import CitySettings
from services.dossier.app import create_app as create_dossier_app
from services.kiosk.app import create_app as create_kiosk_app
from services.kiosk.settings import KioskSettings
from services.traffic.app import create_app as create_traffic_app
from services.traffic.settings import TrafficSettings
from shared.contracts.cloudevents import encode
from shared.embedded import free_port
from shared.kafka import EventPublisher
from shared.testing import issue_test_key
from tests.areas import BA_DINH, BA_DINH_UNIT, CAU_GIAY
from tests.dossier.test_api import settings as dossier_settings

from .auth_helpers import make_operator, sign_in_page
from .conftest import KPI_FILE, serve
from .test_asset_atspm import backfill_two_cycles
from .test_browser import CHROMIUM, _csv_rows, _js_string

pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]
HANOI = timezone(timedelta(hours=7))
SIZES = [(1600, 1000), (1280, 800)]

FOREIGN = r"""
(lang) => {
  const {I18N, DOMAINS, ALARM_TYPES} = window.IOC_I18N;
  const other = lang === "vi" ? "en" : "vi";
  const names = (l) => [...Object.values(I18N[l]), ...Object.values(DOMAINS[l]), ...Object.values(ALARM_TYPES[l])];
  const mine = new Set(names(lang));
  const text = document.querySelector("#view").innerText;
  return names(other).filter((s) => s.length >= 4 && !mine.has(s) && text.includes(s));
}
"""

BROKEN = r"""
() => {
  const text = document.querySelector("#view").innerText;
  const lines = text.split("\n");
  const bad = /undefined|NaN|\bnull\b|\[object/;
  return {broken: lines.flatMap((l, i) => (bad.test(l) ? [lines.slice(Math.max(0, i - 2), i + 1).join(" | ")] : [])), codes: text.match(/\b[a-z]+_[a-z_]+\b/g) || []};
}
"""


def _alarm(alarm_et, alarm_type, source, severity, at, domain="traffic", district=BA_DINH):
    return encode(
        alarm_et,
        {
            "alarm_id": f"{domain}:{alarm_type}:{source}",
            "domain": domain,
            "alarm_type": alarm_type,
            "state": "raised",
            "severity": severity,
            "source_id": source,
            "district": district,
            "commune": None,
            "at": at.isoformat(),
            "message": f"{alarm_type} at {source}",
        },
        source="/ioc/test",
    )


def _kpi(code, start, value, window=900, status="ok"):
    return publishing.kpi_updated(
        kpi="citytest.availability",
        domain="citytest",
        scope_level="city" if code == "HN" else "district",
        scope_code=code,
        window_start=start.isoformat(),
        window_seconds=window,
        value=value,
        numerator=value,
        denominator=1.0,
        unit="ratio",
        status=status,
        target=0.98,
        partitions=1,
        # (stamped now: the store keeps the latest stamp of a window, and other tests stamp theirs later on purpose)
        now=datetime.now(UTC),
    )


async def _shots(page, artifacts_dir: Path, name: str) -> None:
    for w, h in SIZES:
        await page.set_viewport_size({"width": w, "height": h})
        await page.wait_for_timeout(300)
        await page.screenshot(path=str(artifacts_dir / f"city-{name}-{w}x{h}.png"), full_page=True)


async def _kiosk_and_agency(kiosk_app, kiosk_base, dossier_app, dossier_base, now) -> tuple[str, str]:
    """A kiosk heard now with its printer out of paper and a session today; an agency in Ba Đình."""
    kiosk, agency = f"KB-{uuid.uuid4().hex[:8]}", f"AG{uuid.uuid4().hex[:8]}"
    _, admin = await issue_test_key(kiosk_app.state.ctx.pool, ["*"], kind="admin")
    async with httpx.AsyncClient(base_url=kiosk_base, headers={"Authorization": f"Bearer {admin}"}) as kc:
        r = await kc.put(
            f"/v1/kiosks/{kiosk}",
            json={
                "building": "Trung tâm hành chính công Ba Đình",
                "address": "Số 1 Đội Cấn",
                "district": BA_DINH,
                "opening_hours": [{"days": [1, 2, 3, 4, 5, 6, 7], "open": "00:00", "close": "23:59"}],
                "peripherals": ["touchscreen", "printer", "id_scanner"],
                "software_version": "3.2.1",
                "in_service_since": (now - timedelta(days=2)).isoformat(),
            },
        )
        assert r.status_code == 200, r.text
        for path, item in (
            ("/v1/heartbeats", {"kiosk_id": kiosk, "at": now.isoformat(), "app_version": "3.2.1"}),
            (
                "/v1/peripherals",
                {
                    "kiosk_id": kiosk,
                    "peripheral": "printer",
                    "state": "online",
                    "paper": "out",
                    "at": now.isoformat(),
                },
            ),
            (
                "/v1/sessions",
                {
                    "session_id": f"{kiosk}-s1",
                    "kiosk_id": kiosk,
                    "journey": "check_status",
                    "started_at": (now - timedelta(seconds=30)).isoformat(),
                    "ended_at": now.isoformat(),
                    "outcome": "completed",
                },
            ),
        ):
            r = await kc.post(path, json={"items": [item]})
            assert r.status_code == 200, r.text
    async with httpx.AsyncClient(base_url=dossier_base, headers={"Authorization": f"Bearer {admin}"}) as dc:
        r = await dc.put(
            "/v1/agencies",
            json={
                "items": [
                    {
                        "code": agency,
                        "name": "UBND phường Điện Biên",
                        "level": "commune",
                        "admin_unit": BA_DINH_UNIT,
                    }
                ]
            },
        )
        assert r.status_code == 200, r.text
    return kiosk, agency


async def test_drill_down_to_a_live_asset_page_compare_areas_and_print_the_daily_report(
    test_domain, kafka_settings, db_settings, topics_ready, artifacts_dir
):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.async_api import async_playwright, expect

    _, alarm_et = test_domain
    traffic = create_traffic_app(
        TrafficSettings(
            kafka=kafka_settings, database=db_settings, measures_store_group=f"ts-{uuid.uuid4().hex[:8]}"
        )
    )
    kiosk_app = create_kiosk_app(KioskSettings(kafka=kafka_settings, database=db_settings))
    dossier_app = create_dossier_app(dossier_settings(kafka_settings, db_settings))
    traffic_port, port = free_port(), free_port()
    pub = EventPublisher(kafka_settings, client_id="city-assets-ui")
    now = datetime.now(UTC)
    # the golden log two hours ago: inside the page's six-hour ATSPM range
    t0 = (now - timedelta(hours=2)).replace(second=0, microsecond=0)
    t0 -= timedelta(minutes=t0.minute % 15)
    # KPI history: HN and Cầu Giấy over the last hours; day windows of a report day of their own
    quarter = now.replace(minute=now.minute // 15 * 15, second=0, microsecond=0)
    report_day = (now - timedelta(days=400 + uuid.uuid4().int % 300)).astimezone(HANOI).date()
    midnight = datetime(report_day.year, report_day.month, report_day.day, tzinfo=HANOI)
    history = [_kpi("HN", quarter - timedelta(minutes=15 * i), 0.97 - 0.01 * (i % 3)) for i in range(1, 9)]
    history += [
        _kpi(CAU_GIAY, quarter - timedelta(minutes=15 * i), 0.93 - 0.01 * (i % 2)) for i in range(1, 9)
    ]
    history += [
        _kpi("HN", midnight, 0.97, window=86400),
        _kpi(CAU_GIAY, midnight, 0.86, window=86400, status="critical"),
    ]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on(
                "console",
                lambda m: (
                    errors.append(m.text)
                    if m.type == "error" and "Failed to load resource" not in m.text
                    else None
                ),
            )
            async with (
                serve(traffic, traffic_port) as traffic_base,
                serve(kiosk_app, free_port()) as kiosk_base,
                serve(dossier_app, free_port()) as dossier_base,
            ):
                kiosk, agency = await _kiosk_and_agency(kiosk_app, kiosk_base, dossier_app, dossier_base, now)
                _, key = await issue_test_key(
                    traffic.state.ctx.pool,
                    ["city:read", "traffic:read", "traffic:admin", "traffic:ingest"],
                    kind="operator",
                    attributes={"role": "operator"},
                )
                async with httpx.AsyncClient(base_url=traffic_base) as tc:
                    iid = await backfill_two_cycles(tc, key, kafka_settings, t0)
                city = create_app(
                    CitySettings(
                        kafka=kafka_settings,
                        database=db_settings,
                        kpi_definitions_path=str(KPI_FILE),
                        consumer_group=f"city-assets-ui-{uuid.uuid4().hex[:8]}",
                        traffic_url=traffic_base,
                        kiosk_url=kiosk_base,
                        dossier_url=dossier_base,
                    )
                )
                async with serve(city, port) as base:
                    await pub.publish([*history, _alarm(alarm_et, "controller_flash", iid, "major", now)])
                    await page.goto(base + "/")
                    # an operator signs in: the intersection page fetches from the traffic service with its session
                    username, password = await make_operator(city.state.ctx.pool, "operator")
                    await sign_in_page(page, username, password)
                    await expect(page.locator("#conn")).to_have_class("conn conn-on", timeout=15000)

                    # overview → district → the asset in alarm (a link, not a KPI breach) → its page
                    await page.click(f'.district[data-code="{BA_DINH}"]')
                    asset_row = page.locator(f'#district-alarms tr[data-asset="{iid}"]')
                    await expect(asset_row).to_be_visible(timeout=20000)
                    await asset_row.locator("a.asset-link").click()
                    await expect(page).to_have_url(f"{base}/#asset/intersection/{iid}")
                    view = page.locator("#view")
                    await expect(view.locator(".view-title")).to_contain_text("Kim Mã - Giảng Võ")
                    await expect(view.locator('#asset-alarms tr[data-state="active"]')).to_have_count(1)
                    # the ATSPM charts of phase 2 from the traffic service's measures (phase 4 has no cycle):
                    # the coordination diagram (a dot per vehicle), split monitor, terminations per bin and per cycle
                    await expect(view.locator('.atspm-phase[data-phase="2"] canvas')).to_have_count(
                        4, timeout=15000
                    )
                    await expect(view.locator('.atspm-phase[data-phase="2"]')).to_contain_text(
                        "Xe đến khi đỏ"
                    )
                    await expect(view.locator('.atspm-phase[data-phase="4"]')).to_contain_text(
                        "Không có chu kỳ"
                    )
                    await expect(view.locator('#latest-phases tr[data-phase="2"]')).to_contain_text("đỏ")

                    # live: an alarm of this intersection published now appears on the open page
                    await pub.publish([_alarm(alarm_et, "power_failure", iid, "critical", datetime.now(UTC))])
                    await expect(view.locator('#asset-alarms tr[data-state="active"]')).to_have_count(
                        2, timeout=20000
                    )
                    await expect(view.locator("#asset-alarms")).to_contain_text("Đèn tín hiệu mất điện")
                    assert await page.evaluate(BROKEN) == {"broken": [], "codes": []}
                    assert await page.evaluate(FOREIGN, "vi") == []
                    await _shots(page, artifacts_dir, "asset-intersection")

                    # a kiosk's page: its status from the kiosk service with the operator's session (kiosk:read)
                    await page.goto(f"{base}/#asset/kiosk/{kiosk}")
                    kview = page.locator("#view")
                    await expect(kview.locator("#kiosk-state")).to_be_visible(timeout=15000)
                    await expect(kview.locator('#kiosk-state td[data-online="true"]')).to_have_count(1)
                    await expect(
                        kview.locator('#kiosk-availability tr[data-journey="technical"]')
                    ).to_be_visible()
                    await expect(
                        kview.locator('#kiosk-availability tr[data-journey="print_result"]')
                    ).to_be_visible()
                    await expect(
                        kview.locator('#kiosk-peripherals tr[data-peripheral="printer"]')
                    ).to_contain_text("hết")
                    await expect(kview.locator("#kiosk-sessions-today")).to_contain_text("1")
                    assert await page.evaluate(BROKEN) == {"broken": [], "codes": []}
                    assert await page.evaluate(FOREIGN, "vi") == []
                    await _shots(page, artifacts_dir, "asset-kiosk")
                    # an agency's page: its Decision 766 scorecard with dossier:stats (no dossier:read)
                    await page.goto(f"{base}/#asset/agency/{agency}")
                    await expect(page.locator("#view .view-title")).to_contain_text("UBND phường Điện Biên")
                    await expect(page.locator("#view .details-error")).to_have_count(0)
                    await _shots(page, artifacts_dir, "asset-agency")

                    # the area page (#area/<code>, what the map links to)
                    await page.goto(f"{base}/#area/{BA_DINH}")
                    await expect(page.locator(f'#area-assets tr[data-asset="{iid}"]')).to_be_visible()
                    await _shots(page, artifacts_dir, "area")

                    # several areas on one chart with the threshold bands; its CSV is the API's rows
                    # (reached from an area's KPI: that KPI, the city and that area)
                    await page.goto(f"{base}/#area/{CAU_GIAY}")
                    await page.click('#area-kpis tr[data-kpi="citytest.availability"] a.kpi-link')
                    await expect(page).to_have_url(f"{base}/#history/citytest.availability/{CAU_GIAY}")
                    await expect(page.locator("#cmp-chart canvas")).to_have_count(1)
                    assert await page.eval_on_selector(
                        "#cmp-areas", "s => [...s.selectedOptions].map(o => o.value)"
                    ) == ["HN", CAU_GIAY]
                    await page.check("#cmp-previous")
                    for _ in range(40):  # until the store has the sixteen windows
                        async with page.expect_response(lambda r: "/v1/history?" in r.url) as answer:
                            await page.click("#cmp-show")
                        body = await (await answer.value).json()
                        if len(body["rows"]) >= 16:
                            break
                        await page.wait_for_timeout(500)
                    chart = page.locator("#cmp-chart")
                    await expect(chart.locator("canvas")).to_have_count(1)
                    await expect(chart).to_have_attribute("data-series", "4")
                    assert len(body["rows"]) >= 16
                    await expect(chart.locator(".band-critical")).to_be_visible()
                    async with page.expect_download() as dl:
                        await page.click("#cmp-export")
                    rows = _csv_rows(Path(await (await dl.value).path()).read_bytes())
                    assert rows == [{k: _js_string(v) for k, v in r.items()} for r in body["rows"]]
                    await _shots(page, artifacts_dir, "history-compare")

                    # the daily report of a chosen day, printable; its CSV is the API's KPI rows
                    async with page.expect_response(lambda r: "/v1/reports/daily?" in r.url) as answer:
                        await page.goto(f"{base}/#report/daily/{report_day.isoformat()}")
                    report = await (await answer.value).json()
                    await expect(page.locator("#report-citytest")).to_contain_text("86%")
                    await expect(page.locator(f'#report-worst a[href="#area/{CAU_GIAY}"]')).to_have_count(1)
                    async with page.expect_download() as dl:
                        await page.click("#report-export")
                    rows = _csv_rows(Path(await (await dl.value).path()).read_bytes())
                    assert rows == [{k: _js_string(v) for k, v in r.items()} for r in report["kpis"]]
                    assert await page.evaluate(BROKEN) == {"broken": [], "codes": []}
                    await _shots(page, artifacts_dir, "daily-report")
                    await page.emulate_media(media="print")
                    await expect(page.locator("header")).to_be_hidden()
                    await page.screenshot(
                        path=str(artifacts_dir / "city-daily-report-print.png"), full_page=True
                    )
                    await page.emulate_media(media="screen")

                    # in English: the open page is drawn again in the new language, every word translated
                    await page.click("#lang")
                    await expect(page.locator("#view .view-title")).to_contain_text("Daily report")
                    assert await page.evaluate(FOREIGN, "en") == []
                    await page.goto(f"{base}/#asset/intersection/{iid}")
                    await expect(page.locator('.atspm-phase[data-phase="2"] canvas')).to_have_count(4)
                    await expect(page.locator("#view h3").first).to_have_text("Live state")
                    assert await page.evaluate(FOREIGN, "en") == []
                    assert await page.evaluate(BROKEN) == {"broken": [], "codes": []}
                    await _shots(page, artifacts_dir, "asset-intersection-en")
            assert errors == []
        finally:
            await browser.close()
    await pub.stop()
