"""OIDC sign-in (authorization code flow with PKCE) against a tiny in-test provider (tests/city/oidc_provider.py,
a test double of the deployment's Keycloak): the session it starts, the role claim mapped to IOC roles, and
each refusal (replayed or foreign callback, no role, wrong nonce); the client secret never in a URL."""

from __future__ import annotations

import base64
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from services.city.app import create_app
from services.city.roles import ROLE_SCOPES
from services.city.service_oidc import check_id_token, pkce_challenge, role_from_claims
from services.city.settings import CitySettings
from shared.auth import SESSION_COOKIE
from shared.embedded import free_port
from shared.testing import running_app

from .conftest import KPI_FILE, serve
from .oidc_provider import Provider

pytestmark = pytest.mark.integration
CITY = "http://city.test"
SECRET = "s3cret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
async def setup(test_domain, kafka_settings, db_settings, topics_ready):
    port = free_port()
    issuer = f"http://127.0.0.1:{port}/realms/ioc"
    provider = Provider(issuer, "ioc-console", SECRET, CITY + "/v1/session/oidc/callback")
    root = provider.app()
    from fastapi import FastAPI

    host = FastAPI()
    host.mount("/realms/ioc", root)
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-oidc-{uuid.uuid4().hex[:8]}",
        oidc_issuer=issuer,
        oidc_client_id="ioc-console",
        oidc_client_secret=SECRET,
        oidc_role_claim="realm_access.roles",
        auth_failure_limit="",
    )
    app = create_app(settings)
    async with serve(host, port), running_app(app):
        yield app, provider


async def through_provider(
    app, provider_client: httpx.AsyncClient, browser: httpx.AsyncClient
) -> httpx.Response:
    """Start at the city, let the provider sign the user in, come back: the callback's answer."""
    r = await browser.get("/v1/session/oidc")
    assert r.status_code == 303
    authorize = r.headers["location"]
    r = await provider_client.get(authorize)
    assert r.status_code == 302, r.text
    back = urlsplit(r.headers["location"])
    assert back.netloc == "city.test"
    return await browser.get(f"{back.path}?{back.query}")


def browser_for(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=CITY)


async def test_an_oidc_sign_in_starts_a_session_with_the_role_the_provider_grants(setup):
    app, provider = setup
    sub = uuid.uuid4().hex
    provider.user = {
        "sub": sub,
        "preferred_username": f"lan-{sub[:6]}",
        "realm_access": {"roles": ["ioc-supervisor", "offline_access"]},
    }
    async with browser_for(app) as browser, httpx.AsyncClient() as idp:
        r = await browser.get("/v1/session/oidc")
        authorize = urlsplit(r.headers["location"])
        q = parse_qs(authorize.query)
        # what goes to the provider in the URL: nothing secret (the PKCE challenge is a hash of the verifier)
        assert set(q) == {
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
        }
        assert SECRET not in r.headers["location"] and q["code_challenge_method"] == ["S256"]
        binding = r.headers["set-cookie"].lower()
        assert "httponly" in binding and "samesite=lax" in binding and "path=/v1/session/oidc" in binding

        r = await idp.get(r.headers["location"])
        back = urlsplit(r.headers["location"])
        r = await browser.get(f"{back.path}?{back.query}")
        assert r.status_code == 303 and r.headers["location"] == "/"
        assert SESSION_COOKIE in browser.cookies
        me = (await browser.get("/v1/session")).json()
        assert me["role"] == "supervisor" and me["scopes"] == sorted(ROLE_SCOPES["supervisor"])
        assert me["username"] == f"lan-{sub[:6]}" and me["via"] == "session"
        assert (await browser.get("/v1/kpis")).status_code == 200
        # the secret went to the token endpoint in the Basic header only
        assert (
            provider.token_requests[-1]["basic"].startswith("Basic ")
            and SECRET not in provider.token_requests[-1]["url"]
        )

        # the callback replayed (same code and state): the sign-in is used up
        again = await browser.get(f"{back.path}?{back.query}")
        assert again.status_code == 400 and again.json()["error"]["code"] == "oidc_state_invalid"

    # the role follows the provider at the next sign-in
    provider.user = {**provider.user, "realm_access": {"roles": ["leader"]}}
    async with browser_for(app) as browser, httpx.AsyncClient() as idp:
        assert (await through_provider(app, idp, browser)).status_code == 303
        assert (await browser.get("/v1/session")).json()["role"] == "leader"


async def test_a_callback_in_another_browser_is_refused(setup):
    app, provider = setup
    provider.user = {"sub": uuid.uuid4().hex, "realm_access": {"roles": ["operator"]}}
    async with browser_for(app) as victim, browser_for(app) as attacker, httpx.AsyncClient() as idp:
        r = await attacker.get("/v1/session/oidc")
        r = await idp.get(r.headers["location"])
        back = urlsplit(r.headers["location"])
        # (login CSRF: the attacker's callback URL opened in the victim's browser)
        r = await victim.get(f"{back.path}?{back.query}")
        assert r.status_code == 400 and r.json()["error"]["code"] == "oidc_state_invalid"
        assert SESSION_COOKIE not in victim.cookies


async def test_a_user_without_an_ioc_role_gets_no_session(setup):
    app, provider = setup
    provider.user = {"sub": uuid.uuid4().hex, "realm_access": {"roles": ["offline_access"]}}
    async with browser_for(app) as browser, httpx.AsyncClient() as idp:
        r = await through_provider(app, idp, browser)
        assert r.status_code == 403 and r.json()["error"]["code"] == "no_role"
        assert "realm_access.roles" in r.json()["error"]["message"]
        assert SESSION_COOKIE not in browser.cookies


async def test_an_id_token_for_another_sign_in_is_refused(setup):
    app, provider = setup
    provider.user = {"sub": uuid.uuid4().hex, "realm_access": {"roles": ["operator"]}}
    provider.wrong_nonce = True
    try:
        async with browser_for(app) as browser, httpx.AsyncClient() as idp:
            r = await through_provider(app, idp, browser)
            assert r.status_code == 401
            assert r.json()["error"]["details"] == [{"claim": "nonce", "reason": "missing or wrong"}]
            assert SESSION_COOKIE not in browser.cookies
    finally:
        provider.wrong_nonce = False


async def test_without_a_provider_configured_oidc_is_off(
    test_domain, kafka_settings, db_settings, topics_ready
):
    app = create_app(
        CitySettings(kafka=kafka_settings, database=db_settings, consumer_group=f"c-{uuid.uuid4().hex[:6]}")
    )
    async with running_app(app) as client:
        assert (await client.get("/v1/session/providers")).json()["oidc"]["enabled"] is False
        r = await client.get("/v1/session/oidc")
        assert r.status_code == 404 and "IOC_CITY_OIDC_ISSUER" in r.json()["error"]["message"]


def test_pkce_challenge_is_rfc7636_appendix_b():
    # RFC 7636 Appendix B: the 32 octets below, base64url-encoded, are the verifier; its S256 challenge is given
    octets = bytes(
        [116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186,
         22, 212, 37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121]
    )  # fmt: skip
    verifier = base64.urlsafe_b64encode(octets).rstrip(b"=").decode()
    assert verifier == "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_id_token_checks_of_oidc_core_3_1_3_7():
    good = {
        "iss": "https://id.example/realms/ioc",
        "aud": "ioc",
        "sub": "u1",
        "exp": 1000,
        "iat": 900,
        "nonce": "n",
    }
    kw = {"issuer": "https://id.example/realms/ioc", "client_id": "ioc", "nonce": "n", "now": 950.0}
    check_id_token(good, **kw)
    for bad, named in (
        ({"iss": "https://other.example"}, "iss"),
        ({"aud": "someone-else"}, "aud"),
        ({"aud": ["ioc", "other"]}, "aud"),  # several audiences: azp must be this client (3.1.3.7 item 4, 5)
        ({"exp": 950 - 121}, "exp"),  # expired beyond the 120 s clock skew allowed
        ({"iat": 950 + 121}, "iat"),
        ({"nonce": "m"}, "nonce"),
    ):
        with pytest.raises(Exception) as refused:
            check_id_token({**good, **bad}, **kw)
        assert [d["claim"] for d in refused.value.details] == [named]
    check_id_token({**good, "aud": ["ioc", "other"], "azp": "ioc"}, **kw)


def test_role_claims_map_to_the_ioc_role_that_may_do_most():
    assert role_from_claims({"roles": ["leader", "operator"]}, "roles", {}) == "operator"
    assert (
        role_from_claims({"realm_access": {"roles": ["ioc-administrator", "x"]}}, "realm_access.roles", {})
        == "administrator"
    )
    assert role_from_claims({"groups": "/ioc/watch"}, "groups", {"/ioc/watch": "leader"}) == "leader"
    assert role_from_claims({"roles": ["boss"]}, "roles", {}) is None
    assert role_from_claims({}, "realm_access.roles", {}) is None
