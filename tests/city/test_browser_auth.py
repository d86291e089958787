"""Signing in to the console in a real browser (Debian's Chromium through Playwright): no credential in any
request URL (every URL the page asks for is recorded), nothing secret in Web Storage, the live stream signed in
by the cookie, and roles: what an operator may not do is not offered and the server refuses it anyway."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.city.app import create_app
from services.city.settings import CitySettings
from shared.auth import SESSION_COOKIE
from shared.embedded import free_port
from tests.areas import CAU_GIAY

from .auth_helpers import make_operator, sign_in_page
from .conftest import KPI_FILE, serve

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [pytest.mark.integration, pytest.mark.browser, pytest.mark.slow]

STORAGE = """() => {
  const dump = (s) => Object.fromEntries(Array.from({length: s.length}, (_, i) => [s.key(i), s.getItem(s.key(i))]));
  return {local: dump(localStorage), session: dump(sessionStorage), cookie: document.cookie};
}"""

# What would be a credential in a URL, whoever's: API keys, stream tickets, tokens, passwords, session ids.
CREDENTIAL_IN_URL = re.compile(
    r"ioc_[0-9a-f]+_|iot_|ticket|token|access_token|password|session_id|api_key", re.I
)


async def test_sign_in_keeps_credentials_out_of_urls_and_storage_and_scopes_the_views_by_role(
    test_domain, kafka_settings, db_settings, topics_ready, artifacts_dir
):
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from playwright.async_api import async_playwright, expect

    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-auth-ui-{uuid.uuid4().hex[:8]}",
    )
    app = create_app(settings)
    port = free_port()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            async with serve(app, port) as base:
                pool = app.state.ctx.pool
                admin, admin_pw = await make_operator(pool, "administrator")
                operator, operator_pw = await make_operator(pool, "operator")
                leader, leader_pw = await make_operator(pool, "leader")
                source = f"K-{uuid.uuid4().hex[:6]}"
                alarm_id = f"kiosk:kiosk_offline:{source}"
                await app.state.city_service.apply_alarm_changes(
                    [
                        {
                            "alarm_id": alarm_id,
                            "domain": "kiosk",
                            "alarm_type": "kiosk_offline",
                            "state": "raised",
                            "severity": "major",
                            "source_id": source,
                            "district": CAU_GIAY,
                            "commune": None,
                            "at": datetime.now(UTC).isoformat(),
                            "message": "kiosk silent",
                        }
                    ]
                )

                context = await browser.new_context(viewport={"width": 1600, "height": 1000})
                page = await context.new_page()
                urls: list[str] = []
                page.on("request", lambda r: urls.append(r.url))
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))

                # the sign-in screen, and a wrong password
                await page.goto(base + "/")
                await expect(page.locator("#sign-in-form")).to_be_visible()
                await expect(page.locator("#tiles-section")).to_be_hidden()
                await page.screenshot(path=str(artifacts_dir / "city-sign-in-1600.png"))
                await page.set_viewport_size({"width": 1280, "height": 800})
                await page.screenshot(path=str(artifacts_dir / "city-sign-in-1280.png"))
                await page.fill("#sign-in-user", admin)
                await page.fill("#sign-in-password", "not-the-password")
                await page.click("#sign-in-submit")
                await expect(page.locator("#sign-in-error")).to_have_text("Sai tên đăng nhập hoặc mật khẩu.")

                # an administrator: the live stream connects on the cookie; accounts are offered
                await sign_in_page(page, admin, admin_pw)
                await expect(page.locator("#conn")).to_have_class("conn conn-on", timeout=15000)
                await expect(page.locator("#who-role")).to_have_text("Quản trị viên")
                await expect(page.locator("#operators-section")).to_be_visible()
                await expect(page.locator(f'#operators tr[data-operator="{operator}"]')).to_be_visible()
                await expect(page.locator("#archive-section")).to_be_visible()
                await page.screenshot(
                    path=str(artifacts_dir / "city-signed-in-admin-1280.png"), full_page=True
                )
                await page.set_viewport_size({"width": 1600, "height": 1000})
                await page.screenshot(
                    path=str(artifacts_dir / "city-signed-in-admin-1600.png"), full_page=True
                )
                # the administrator creates an account through the page (POST with the CSRF token)
                created = f"new-{uuid.uuid4().hex[:6]}"
                await page.fill("#operator-username", created)
                await page.select_option("#operator-role", "leader")
                await page.fill("#operator-password", "a-long-enough-password")
                await page.click("#operator-save")
                await expect(page.locator(f'#operators tr[data-operator="{created}"]')).to_be_visible()

                cookies = {c["name"]: c for c in await context.cookies()}
                session_id = cookies[SESSION_COOKIE]["value"]
                assert cookies[SESSION_COOKIE]["httpOnly"] and cookies[SESSION_COOKIE]["sameSite"] == "Strict"
                csrf = await page.evaluate("() => IOC_AUTH.headers('POST')['X-CSRF-Token']")
                secrets = [session_id, csrf, admin_pw, "a-long-enough-password"]
                stored = await page.evaluate(STORAGE)
                assert SESSION_COOKIE not in stored["cookie"]  # HttpOnly: scripts cannot read it
                assert not [s for s in secrets if s in str(stored)], stored
                assert not [k for k in stored["local"] if "key" in k.lower() or "token" in k.lower()]
                assert stored["session"] == {}

                await page.click("#sign-out")
                await expect(page.locator("#sign-in-form")).to_be_visible()
                assert (await context.request.get(base + "/v1/kpis")).status == 401  # the session ended

                # an operator: works alarms, is offered no account management and no archive
                await sign_in_page(page, operator, operator_pw)
                await expect(page.locator("#who-role")).to_have_text("Điều hành viên")
                row = page.locator(f'#alarms tr[data-alarm="{alarm_id}"]')
                await expect(row).to_be_visible(timeout=15000)
                await expect(row.locator("button.ack")).to_be_visible()
                await expect(page.locator("#operators-section")).to_be_hidden()
                await expect(page.locator("#archive-section")).to_be_hidden()
                await expect(page.locator("#conn")).to_have_class("conn conn-on", timeout=15000)
                await page.screenshot(path=str(artifacts_dir / "city-signed-in-operator-1600.png"))
                # ...and the server refuses the administrator's action even when the page is made to ask
                refused = await page.evaluate(
                    """async () => {
                      const r = await fetch("/v1/operators", {method: "POST",
                        headers: {"Content-Type": "application/json", ...IOC_AUTH.headers("POST")},
                        body: JSON.stringify({username: "sneaky", role: "administrator",
                                              password: "a-long-enough-password"})});
                      return {status: r.status, body: await r.json()};
                    }"""
                )
                assert refused["status"] == 403
                assert refused["body"]["error"]["message"] == "this principal lacks the scope 'city:admin'"
                # a state-changing call without the CSRF token (what a foreign page could make the browser send)
                forged = await page.evaluate(
                    f"""async () => (await fetch("/v1/alarms/{alarm_id}/acknowledge",
                                                  {{method: "POST"}})).json()"""
                )
                assert forged["error"]["code"] == "csrf_token_missing"
                await row.locator("button.ack").click()
                await expect(row).to_have_attribute("data-state", "acknowledged", timeout=10000)
                operator_csrf = await page.evaluate("() => IOC_AUTH.headers('POST')['X-CSRF-Token']")
                operator_session = {c["name"]: c for c in await context.cookies()}[SESSION_COOKIE]["value"]
                await page.set_viewport_size({"width": 1280, "height": 800})
                await page.screenshot(path=str(artifacts_dir / "city-signed-in-operator-1280.png"))
                await page.click("#sign-out")

                # a leader watches: no alarm actions offered
                await sign_in_page(page, leader, leader_pw)
                row = page.locator(f'#alarms tr[data-alarm="{alarm_id}"]')
                await expect(row).to_be_visible(timeout=15000)
                for action in ("clear", "shelve"):
                    await expect(row.locator(f"button.{action}")).to_be_hidden()
                await expect(page.locator("#operators-section")).to_be_hidden()

                # no credential in any URL the page asked for
                secrets += [operator_csrf, operator_session, operator_pw, leader_pw]
                assert urls and any("/v1/stream" in u for u in urls)
                leaked = [u for u in urls if CREDENTIAL_IN_URL.search(u) or any(s in u for s in secrets)]
                assert leaked == []
                assert errors == []
                await context.close()
        finally:
            await browser.close()


async def test_oidc_sign_in_in_a_real_browser_across_sites(
    test_domain, kafka_settings, db_settings, topics_ready
):
    """The provider on another site (localhost vs 127.0.0.1): the Lax binding cookie comes back with the
    provider's redirect, the Strict session cookie then signs the console's own calls in."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed at /usr/bin/chromium (apt-get install -y chromium)")
    from fastapi import FastAPI
    from playwright.async_api import async_playwright, expect

    from .oidc_provider import Provider

    city_port, idp_port = free_port(), free_port()
    issuer = f"http://localhost:{idp_port}/realms/ioc"
    secret = "s3cret-" + uuid.uuid4().hex
    provider = Provider(
        issuer, "ioc-console", secret, f"http://127.0.0.1:{city_port}/v1/session/oidc/callback"
    )
    provider.user = {"sub": uuid.uuid4().hex, "preferred_username": "lan.nguyen", "roles": ["ioc-operator"]}
    idp = FastAPI()
    idp.mount("/realms/ioc", provider.app())
    app = create_app(
        CitySettings(
            kafka=kafka_settings,
            database=db_settings,
            kpi_definitions_path=str(KPI_FILE),
            consumer_group=f"city-oidc-ui-{uuid.uuid4().hex[:8]}",
            oidc_issuer=issuer,
            oidc_client_id="ioc-console",
            oidc_client_secret=secret,
            oidc_label="Keycloak",
        )
    )
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
        )
        try:
            async with serve(idp, idp_port), serve(app, city_port) as base:  # (localhost: 127.0.0.1 here)
                page = await browser.new_page(viewport={"width": 1280, "height": 800})
                urls: list[str] = []
                page.on("request", lambda r: urls.append(r.url))
                await page.goto(base + "/")
                oidc = page.locator("#sign-in-oidc")
                await expect(oidc).to_have_text("Đăng nhập qua Keycloak")
                await oidc.click()
                await expect(page.locator("body")).not_to_have_class("signed-out", timeout=15000)
                assert page.url == base + "/"  # the code has left the address bar
                await expect(page.locator("#who-name")).to_have_text("lan.nguyen")
                await expect(page.locator("#who-role")).to_have_text("Điều hành viên")
                await expect(page.locator("#conn")).to_have_class("conn conn-on", timeout=15000)
                session_id = {c["name"]: c["value"] for c in await page.context.cookies()}[SESSION_COOKIE]
                assert not [u for u in urls if secret in u or session_id in u]
                assert any(u.startswith(issuer + "/authorize?") for u in urls)
        finally:
            await browser.close()
