"""Console sign-in against the real database: session lifecycle, idle and absolute expiry, CSRF, roles refused
server-side, and API keys of machine clients still accepted by the same authentication dependency."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from contextlib import asynccontextmanager

import httpx
import pytest

from services.city.app import create_app
from services.city.roles import ROLE_SCOPES, ROLES
from services.city.settings import CitySettings
from shared.auth import CSRF_HEADER, SESSION_COOKIE
from shared.testing import auth, issue_test_key, running_app

from .auth_helpers import make_operator
from .conftest import KPI_FILE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def city(test_domain, kafka_settings, db_settings, topics_ready):
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-auth-{uuid.uuid4().hex[:8]}",
        auth_failure_limit="",  # the refusal tests sign in wrongly on purpose
    )
    app = create_app(settings)
    async with running_app(app):
        yield app


@asynccontextmanager
async def browser_like(app, base: str = "http://ioc.test"):
    """A client with its own cookie jar, like one browser."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as client:
        yield client


async def signed_in(client: httpx.AsyncClient, username: str, password: str) -> dict:
    r = await client.post("/v1/session", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return r.json()


def pool(app):
    return app.state.ctx.pool


async def test_session_lifecycle_cookie_csrf_and_sign_out(city):
    username, password = await make_operator(pool(city), "operator")
    async with browser_like(city) as browser:
        r = await browser.post("/v1/session", json={"username": username, "password": password})
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
        assert {"httponly", "path", "max-age"} <= attrs and "samesite=strict" in cookie.lower()
        assert "secure" not in attrs  # plain http here (see the https test)
        session_id = browser.cookies[SESSION_COOKIE]
        body = r.json()
        assert session_id not in r.text  # the id travels only in the cookie
        assert body["principal_id"] == f"op-{username}" and body["role"] == "operator"
        assert body["scopes"] == sorted(ROLE_SCOPES["operator"]) and body["via"] == "session"
        csrf = body["csrf_token"]
        assert csrf and csrf != session_id

        # only a hash of the id is stored
        stored = await pool(city).fetchval(
            "SELECT count(*) FROM platform.sessions WHERE id_hash = $1",
            hashlib.sha256(session_id.encode()).digest(),
        )
        assert stored == 1
        assert not await pool(city).fetchval(
            "SELECT count(*) FROM platform.sessions WHERE encode(id_hash, 'escape') LIKE '%' || $1 || '%'",
            session_id,
        )

        me = (await browser.get("/v1/session")).json()
        assert me["csrf_token"] == csrf and me["principal_id"] == f"op-{username}"
        assert (await browser.get("/v1/kpis")).status_code == 200
        assert (await browser.get("/v1/districts")).status_code == 200

        # sign-out is state-changing: without the token it is refused, with it the session ends
        r = await browser.delete("/v1/session")
        assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_token_missing"
        r = await browser.delete("/v1/session", headers={CSRF_HEADER: csrf})
        assert r.status_code == 204 and "max-age=0" in r.headers["set-cookie"].lower()
    async with browser_like(city) as browser:  # the old cookie replayed after sign-out
        browser.cookies.set(SESSION_COOKIE, session_id)
        r = await browser.get("/v1/kpis")
        assert r.status_code == 401 and r.json()["error"]["code"] == "session_expired"
    actions = [
        r["action"]
        for r in await pool(city).fetch(
            "SELECT action FROM platform.audit_log WHERE target = $1 ORDER BY id", f"op-{username}"
        )
    ]
    assert actions == ["operator.saved", "session.started", "session.ended"]


async def test_a_wrong_password_and_an_unknown_user_get_the_same_refusal(city):
    username, password = await make_operator(pool(city), "leader")
    async with browser_like(city) as browser:
        wrong = await browser.post("/v1/session", json={"username": username, "password": password + "x"})
        unknown = await browser.post(
            "/v1/session", json={"username": "nobody-" + username, "password": password}
        )
        assert wrong.status_code == unknown.status_code == 401
        assert (
            wrong.json()
            == unknown.json()
            == {
                "error": {
                    "code": "sign_in_failed",
                    "message": "unknown user name or wrong password",
                    "details": [],
                }
            }
        )
        assert SESSION_COOKIE not in browser.cookies
        # refusals are audited, but a name that is no account is not written down (it may be a password)
        refused = await pool(city).fetch(
            "SELECT principal, target, detail FROM platform.audit_log WHERE action = 'session.refused' "
            "AND (target = $1 OR principal LIKE '%' || $2 || '%' OR target LIKE '%' || $2 || '%')",
            f"op-{username}",
            "nobody-" + username,
        )
        assert [(r["target"], r["detail"]["reason"]) for r in refused] == [
            (f"op-{username}", "wrong password")
        ]
        missing = await browser.post("/v1/session", json={"username": username})
        assert missing.status_code == 422 and missing.json()["error"]["details"][0]["field"] == "password"


async def test_a_disabled_operator_cannot_sign_in_and_its_sessions_end(city):
    admin, admin_pw = await make_operator(pool(city), "administrator")
    username, password = await make_operator(pool(city), "operator")
    async with browser_like(city) as a, browser_like(city) as o:
        csrf = (await signed_in(a, admin, admin_pw))["csrf_token"]
        await signed_in(o, username, password)
        r = await a.post(f"/v1/operators/op-{username}/disable", headers={CSRF_HEADER: csrf})
        assert r.status_code == 200
        assert (await o.get("/v1/kpis")).status_code == 401
        r = await o.post("/v1/session", json={"username": username, "password": password})
        assert r.status_code == 401


async def test_sign_in_from_another_site_is_refused(city):
    username, password = await make_operator(pool(city), "operator")
    async with browser_like(city) as browser:
        r = await browser.post(
            "/v1/session",
            json={"username": username, "password": password},
            headers={"Origin": "http://evil.example"},
        )
        assert r.status_code == 403 and r.json()["error"]["code"] == "cross_origin"
        r = await browser.post(
            "/v1/session",
            json={"username": username, "password": password},
            headers={"Origin": "http://ioc.test"},
        )
        assert r.status_code == 200


async def test_over_https_the_cookie_is_secure(city):
    username, password = await make_operator(pool(city), "operator")
    async with browser_like(city, "https://ioc.test") as browser:
        r = await browser.post("/v1/session", json={"username": username, "password": password})
        assert r.status_code == 200
        assert "secure" in {a.strip().lower() for a in r.headers["set-cookie"].split(";")}


async def test_idle_and_absolute_expiry(city):
    username, password = await make_operator(pool(city), "operator")
    settings = city.state.ctx.settings
    async with browser_like(city) as browser:
        await signed_in(browser, username, password)
        digest = hashlib.sha256(browser.cookies[SESSION_COOKIE].encode()).digest()
        row = await pool(city).fetchrow(
            "SELECT idle_seconds, expires_at - created_at AS absolute, idle_expires_at, expires_at "
            "FROM platform.sessions WHERE id_hash = $1",
            digest,
        )
        assert row["idle_seconds"] == settings.session_idle_seconds
        assert row["absolute"].total_seconds() == settings.session_absolute_seconds

        # activity moves the idle expiry on...
        await pool(city).execute(
            "UPDATE platform.sessions SET idle_expires_at = now() + interval '5 seconds' WHERE id_hash = $1",
            digest,
        )
        assert (await browser.get("/v1/kpis")).status_code == 200
        moved = await pool(city).fetchval(
            "SELECT idle_expires_at - now() FROM platform.sessions WHERE id_hash = $1", digest
        )
        assert moved.total_seconds() > settings.session_idle_seconds - 60
        # ...but never past the absolute expiry
        await pool(city).execute(
            "UPDATE platform.sessions SET expires_at = now() + interval '10 seconds' WHERE id_hash = $1",
            digest,
        )
        assert (await browser.get("/v1/kpis")).status_code == 200
        assert await pool(city).fetchval(
            "SELECT idle_expires_at <= expires_at FROM platform.sessions WHERE id_hash = $1", digest
        )

        # idle: no request for longer than the idle time
        await pool(city).execute(
            "UPDATE platform.sessions SET idle_expires_at = now() - interval '1 second', "
            "expires_at = now() + interval '1 hour' WHERE id_hash = $1",
            digest,
        )
        r = await browser.get("/v1/kpis")
        assert r.status_code == 401 and r.json()["error"]["code"] == "session_expired"

    async with browser_like(city) as browser:
        await signed_in(browser, username, password)
        digest = hashlib.sha256(browser.cookies[SESSION_COOKIE].encode()).digest()
        # absolute: however active, the session ends at its absolute expiry
        await pool(city).execute(
            "UPDATE platform.sessions SET expires_at = now() - interval '1 second', "
            "idle_expires_at = now() + interval '1 hour' WHERE id_hash = $1",
            digest,
        )
        assert (await browser.get("/v1/kpis")).status_code == 401
        assert (await browser.get("/v1/session")).status_code == 401


async def test_state_changing_calls_need_the_csrf_token(city):
    username, password = await make_operator(pool(city), "operator")
    alarm = f"/v1/alarms/citytest:kpi_breach:{uuid.uuid4().hex[:8]}/acknowledge"
    async with browser_like(city) as browser:
        csrf = (await signed_in(browser, username, password))["csrf_token"]
        r = await browser.post(alarm)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "csrf_token_missing"
        assert CSRF_HEADER in r.json()["error"]["message"]
        r = await browser.post(alarm, headers={CSRF_HEADER: "not-" + csrf})
        assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_token_invalid"
        r = await browser.post(alarm, headers={CSRF_HEADER: csrf})
        assert r.status_code == 404  # signed in and allowed: the alarm does not exist
        # reads need no token
        assert (await browser.get("/v1/alarms")).status_code == 200


async def test_roles_are_enforced_by_the_server(city):
    leader, leader_pw = await make_operator(pool(city), "leader")
    operator, operator_pw = await make_operator(pool(city), "operator")
    admin, admin_pw = await make_operator(pool(city), "administrator")
    alarm = f"/v1/alarms/citytest:kpi_breach:{uuid.uuid4().hex[:8]}/acknowledge"
    new_user = f"new-{uuid.uuid4().hex[:6]}"
    create = {"username": new_user, "role": "operator", "password": "a-long-enough-pw"}
    async with browser_like(city) as lb, browser_like(city) as ob, browser_like(city) as ab:
        lcsrf = (await signed_in(lb, leader, leader_pw))["csrf_token"]
        ocsrf = (await signed_in(ob, operator, operator_pw))["csrf_token"]
        acsrf = (await signed_in(ab, admin, admin_pw))["csrf_token"]

        # a leader watches: no alarm actions
        r = await lb.post(alarm, headers={CSRF_HEADER: lcsrf})
        assert r.status_code == 403 and "city:operate" in r.json()["error"]["message"]
        # an operator works alarms but does not manage accounts (administrators only)
        for r in (
            await ob.get("/v1/operators"),
            await ob.post("/v1/operators", json=create, headers={CSRF_HEADER: ocsrf}),
            await ob.post(f"/v1/operators/op-{leader}/disable", headers={CSRF_HEADER: ocsrf}),
        ):
            assert r.status_code == 403, r.text
            assert r.json()["error"] == {
                "code": "forbidden",
                "message": "this principal lacks the scope 'city:admin'",
                "details": [],
            }
        assert (
            await pool(city).fetchval(
                "SELECT count(*) FROM platform.operator_credentials WHERE username = $1", new_user
            )
            == 0
        )
        # the administrator does
        r = await ab.post("/v1/operators", json=create, headers={CSRF_HEADER: acsrf})
        assert r.status_code == 200, r.text
        listed = {o["username"]: o for o in (await ab.get("/v1/operators")).json()["items"]}
        assert listed[new_user]["role"] == "operator" and listed[operator]["sessions"] == 1
        bad = await ab.post(
            "/v1/operators",
            json={"username": "Bad Name", "role": "boss", "password": "short"},
            headers={CSRF_HEADER: acsrf},
        )
        assert bad.status_code == 422
        assert {d["field"] for d in bad.json()["error"]["details"]} == {"username", "role", "password"}
    async with browser_like(city) as nb:
        await signed_in(nb, new_user, "a-long-enough-pw")


async def test_api_keys_still_work_for_machine_clients(city):
    _, key = await issue_test_key(
        pool(city), ["city:read", "city:operate"], kind="service", attributes={"role": "operator"}
    )
    async with browser_like(city) as client:
        me = (await client.get("/v1/session", headers=auth(key))).json()
        assert me["via"] == "api_key" and "csrf_token" not in me
        # no CSRF token needed with a key in a header: the browser never sends it on its own
        alarm = f"/v1/alarms/citytest:kpi_breach:{uuid.uuid4().hex[:8]}/acknowledge"
        assert (await client.post(alarm, headers=auth(key))).status_code == 404
        # a key in a header wins over a stale cookie
        client.cookies.set(SESSION_COOKIE, "stale")
        assert (await client.get("/v1/kpis", headers=auth(key))).status_code == 200
        r = await client.get("/v1/kpis")
        assert r.status_code == 401 and r.json()["error"]["code"] == "session_expired"
        client.cookies.clear()
        r = await client.get("/v1/kpis")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


def test_the_documented_role_matrix_is_the_one_enforced():
    """docs/console.md's table lists each role's scopes exactly as services/city/roles.py grants them."""
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "console.md").read_text()
    section = doc[doc.index("## Sign-in and roles") :]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].strip("*") in ROLES:
            rows[cells[0].strip("*")] = sorted(s.strip("` ") for s in cells[1].split(",") if s.strip())
    assert rows == {r: sorted(ROLE_SCOPES[r]) for r in ROLES}


async def test_signing_out_ends_the_open_live_stream(test_domain, kafka_settings, db_settings, topics_ready):
    from shared.embedded import free_port

    from .conftest import SseReader, serve

    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-auth-sse-{uuid.uuid4().hex[:8]}",
        sse_session_check_seconds=0.5,
        sse_heartbeat_seconds=0.5,
    )
    app = create_app(settings)
    async with serve(app, free_port()) as base, httpx.AsyncClient(base_url=base, timeout=30) as browser:
        username, password = await make_operator(app.state.ctx.pool, "leader")
        csrf = (await signed_in(browser, username, password))["csrf_token"]
        async with browser.stream("GET", "/v1/stream") as stream:
            assert stream.status_code == 200  # the cookie alone opens it: no ticket, nothing in the URL
            sse = SseReader(stream)
            await sse.until(lambda ev: ev.get("event") == "hello")
            assert (await browser.delete("/v1/session", headers={CSRF_HEADER: csrf})).status_code == 204

            async def read_to_the_end() -> None:
                # live items other tests write to the shared database may come before the end: read past them
                while True:
                    await sse.next_event(timeout=20)

            # the server ends the stream (EOFError); a timeout (the stream still open) fails the test
            with pytest.raises(EOFError):
                await asyncio.wait_for(read_to_the_end(), timeout=20)
