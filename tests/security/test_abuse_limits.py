"""Abuse limits (finding 6 of issue #40): failed authentications throttled per source address, 405 with Allow.

3,000 random keys got 401 with no throttling (legitimate latency 3 → 196 ms meanwhile).
"""

from __future__ import annotations

import httpx
import pytest

from shared.auth import FailedAuthThrottle
from shared.testing import auth
from tests.security.conftest import endpoints, present_service_names

pytestmark = pytest.mark.integration
SERVICES = present_service_names()
LIMIT = 5


@pytest.mark.parametrize("service", SERVICES)
async def test_failed_authentications_are_throttled_per_source_address(service, farm, issue):
    svc = await farm.get(service)
    ep = next(e for e in endpoints(svc.app) if e.scope and not e.streaming and e.method == "GET")
    _, good = await issue([ep.scope], kind="operator", attributes={"role": "operator"})
    saved = svc.ctx.auth_throttle
    svc.ctx.auth_throttle = FailedAuthThrottle(f"{LIMIT}/minute")
    try:
        guesses = [
            await svc.client.get(ep.concrete_path(), headers=auth(f"ioc_guess{i}_{'x' * 20}"))
            for i in range(LIMIT + 2)
        ]
        assert [r.status_code for r in guesses[:LIMIT]] == [401] * LIMIT
        for r in guesses[LIMIT:]:
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "too_many_failed_authentications"
            assert 1 <= int(r.headers["retry-after"]) <= 61
        # The guessing address is refused even with a good key until the window moves on...
        assert (await svc.client.get(ep.concrete_path(), headers=auth(good))).status_code == 429
        # ...while another address is not affected.
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=svc.app, client=("192.0.2.7", 4000)), base_url="http://test"
        )
        async with other:
            r = await other.get(ep.concrete_path(), headers=auth(good))
            assert r.status_code not in (401, 429), r.text
    finally:
        svc.ctx.auth_throttle = saved


async def test_the_default_limit_is_on_in_every_service():
    from shared.config import ServiceSettings

    assert ServiceSettings().auth_failure_limit == "60/minute"


@pytest.mark.parametrize("service", SERVICES)
async def test_a_wrong_method_is_405_with_allow(service, farm):
    svc = await farm.get(service)
    for e in endpoints(svc.app):
        wrong = "DELETE" if e.method != "DELETE" else "PATCH"
        r = await svc.client.request(wrong, e.concrete_path())
        if r.status_code == 405:
            assert e.method in r.headers["allow"], (e.path, r.headers.get("allow"))
    r = await svc.client.post("/healthz")
    assert r.status_code == 405 and "GET" in r.headers["allow"]
