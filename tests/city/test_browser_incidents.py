"""The incident workflow in a real browser (Debian's Chromium driven by Playwright) against the running city
service with real alarm events: a supervisor filters and assigns, the operator comments (personal data refused),
ticks the procedure's steps, meets the clear gate, clears, and each step shows in the incident's history."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from services.city.app import create_app
from services.city.service_auth import principal_id_for
from services.city.settings import CitySettings
from shared.contracts.cloudevents import encode
from shared.embedded import free_port
from shared.kafka import EventPublisher
from shared.testing import auth, issue_test_key
from tests.areas import area

from .auth_helpers import make_operator, sign_in_page
from .conftest import KPI_FILE, serve
from .test_api import eventually

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]
DISTRICT = area("HBT")  # a real top area, so that the area filter lists it
BROKEN = re.compile(r"undefined|NaN|\bnull\b|\[object")


CODES = re.compile(r"\b[a-z]+_[a-z_]+\b")  # a raw code (feeder_outage, incident.sop_step) instead of a name


async def _no_broken_text(page) -> None:
    text = await page.locator("#workflow-section").inner_text()
    assert BROKEN.findall(text) == []
    assert CODES.findall(text) == []


async def test_an_incident_goes_assign_comment_sop_clear_in_the_console_with_each_step_in_its_history(
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
        consumer_group=f"city-inc-ui-{uuid.uuid4().hex[:8]}",
    )
    app = create_app(settings)
    pub = EventPublisher(kafka_settings, client_id="city-inc-ui-test")
    tag = uuid.uuid4().hex[:6]
    alarm = encode(
        alarm_et,
        {
            "alarm_id": f"meter:feeder_outage:F-{tag}",
            "domain": "meter",
            "alarm_type": "feeder_outage",
            "state": "raised",
            "severity": "critical",
            "source_id": f"F-{tag}",
            "district": DISTRICT,
            "commune": None,
            "at": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
            "message": "feeder lost supply",
        },
        source="/ioc/test",
    )
    port = free_port()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1600, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # refused actions (403/409/422) are logged by the browser as failed resources: no script error
            page.on(
                "console",
                lambda m: (
                    errors.append(m.text)
                    if m.type == "error" and "Failed to load resource" not in m.text
                    else None
                ),
            )
            async with serve(app, port) as base:
                pool = app.state.ctx.pool
                # people sign in to the console; the test's own API reads use a machine key
                sup_user, sup_password = await make_operator(pool, "supervisor")
                op_user, op_password = await make_operator(pool, "operator")
                sup_id, op_id = principal_id_for(sup_user), principal_id_for(op_user)
                _, sup = await issue_test_key(
                    pool,
                    ["city:read", "city:operate", "city:supervise"],
                    kind="operator",
                    attributes={"role": "supervisor"},
                )
                await pub.publish([alarm])

                async def incident_id():
                    async with httpx.AsyncClient(base_url=base) as client:
                        r = await client.get(
                            "/v1/incidents", params={"area": DISTRICT, "domain": "meter"}, headers=auth(sup)
                        )
                    ids = [
                        i["incident_id"]
                        for i in r.json()["items"]
                        if f"meter:feeder_outage:F-{tag}" in {a["alarm_id"] for a in i["alarms"]}
                    ]
                    return ids[0] if ids else None

                iid = await eventually(incident_id)

                # the supervisor filters the list down and assigns the incident to the operator
                await page.goto(base + "/")
                await sign_in_page(page, sup_user, sup_password)
                await expect(page.locator("#inc-area option")).not_to_have_count(1)
                await page.select_option("#inc-domain", "meter")
                await page.select_option("#inc-severity", "critical")
                await page.select_option("#inc-area", DISTRICT)
                row = page.locator(f'#inc-list tr[data-incident="{iid}"]')
                await expect(row).to_be_visible(timeout=20000)
                await page.select_option("#inc-severity", "minor")
                await expect(row).to_have_count(0)
                await page.select_option("#inc-severity", "critical")
                await row.click()
                detail = page.locator("#inc-detail")
                await expect(detail).to_be_visible()
                await expect(page.locator("#inc-procedure")).to_contain_text("Mất điện lưới")
                await page.select_option("#inc-assign-to", op_id)
                # a refresh of the open panel (an alarm arriving) keeps the supervisor's choice
                await page.evaluate("openIncident(IS.selected, false)")
                await expect(page.locator("#inc-assign-to")).to_have_value(op_id)
                await page.click("#inc-assign")
                await expect(page.locator("#inc-assignee-now")).to_contain_text(op_id)
                history = page.locator("#inc-history")
                await expect(history.locator('tr[data-action="incident.assign"]')).to_contain_text(sup_id)
                await expect(row).to_have_attribute("data-assignee", op_id)
                await page.screenshot(
                    path=str(artifacts_dir / "incidents-supervisor-1600.png"), full_page=True
                )
                await _no_broken_text(page)

                # the supervisor signs out, the operator signs in: the same incident stays open in the panel
                await page.click("#sign-out")
                await expect(page.locator("body")).to_have_class(re.compile("signed-out"))
                await sign_in_page(page, op_user, op_password)
                await page.select_option("#inc-assignee", "me")
                await expect(row).to_be_visible()
                await expect(page.locator("#inc-sop li")).to_have_count(5)
                # the operator acknowledges the alarm from the incident's detail
                alarm_row = page.locator(f'#inc-alarms tr[data-alarm="meter:feeder_outage:F-{tag}"]')
                await alarm_row.locator("button.ack").click()
                await expect(alarm_row).to_have_attribute("data-state", "acknowledged")

                # a comment with a phone number is refused with a reason; the page keeps the text to fix
                await page.fill("#inc-comment", "người báo tin 0912 345 678")
                await page.click("#inc-comment-add")
                await expect(page.locator("#message")).to_contain_text("personal data")
                await expect(page.locator("#inc-comments li")).to_have_count(0)
                await page.fill("#inc-comment", "Đội EVN đang đến, dự kiến 20 phút")
                await page.click("#inc-comment-add")
                await expect(page.locator("#inc-comments li")).to_have_count(1)
                await expect(page.locator("#inc-comments li")).to_contain_text(op_id)
                await expect(history.locator('tr[data-action="incident.comment"]')).to_have_count(1)

                # the procedure: two mandatory steps, the clear gate, the last step, then clear
                for step in ("confirm-scope", "notify-evn"):
                    await page.locator(f'#inc-sop li[data-step="{step}"] button').click()
                    await expect(page.locator(f'#inc-sop li[data-step="{step}"]')).to_have_attribute(
                        "data-done", "true"
                    )
                await page.click("#inc-clear")
                await expect(page.locator("#message")).to_contain_text("confirm-restored")
                await expect(row).to_have_attribute("data-state", "open")
                await page.locator('#inc-sop li[data-step="confirm-restored"] button').click()
                await expect(history.locator('tr[data-action="incident.sop_step"]')).to_have_count(3)
                await page.set_viewport_size({"width": 1280, "height": 800})
                await detail.scroll_into_view_if_needed()
                await page.screenshot(path=str(artifacts_dir / "incidents-operator-1280.png"), full_page=True)
                await page.click("#inc-clear")
                await expect(history.locator('tr[data-action="incident.clear"]')).to_have_count(
                    1, timeout=10000
                )
                await expect(page.locator("#inc-clear")).to_have_count(0)  # closed: no more actions

                actions = await history.locator("tr[data-action]").evaluate_all(
                    "(rows) => rows.map((r) => r.dataset.action)"
                )
                assert actions == [
                    "incident.assign",
                    "alarm.acknowledge",
                    "incident.comment",
                    "incident.sop_step",
                    "incident.sop_step",
                    "incident.sop_step",
                    "alarm.clear",
                    "incident.clear",
                ]
                # what the page shows is the audit trail itself
                async with httpx.AsyncClient(base_url=base) as client:
                    r = await client.get(f"/v1/incidents/{iid}/history", headers=auth(sup))
                assert [h["action"] for h in r.json()["items"]] == actions
                await page.click("#lang")
                await expect(history.locator('tr[data-action="incident.assign"]')).to_contain_text(
                    f"Assigned to {op_id}"
                )
                await page.set_viewport_size({"width": 1600, "height": 1000})
                await detail.scroll_into_view_if_needed()
                await page.screenshot(
                    path=str(artifacts_dir / "incidents-closed-en-1600.png"), full_page=True
                )
                await page.set_viewport_size({"width": 1280, "height": 800})
                await page.screenshot(
                    path=str(artifacts_dir / "incidents-closed-en-1280.png"), full_page=True
                )
                await _no_broken_text(page)
            assert errors == []
        finally:
            await browser.close()
    await pub.stop()
