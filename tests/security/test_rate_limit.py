"""Per-principal rate limiting (shared.auth.RateLimiter, moving window): 429 with Retry-After, per principal."""

from __future__ import annotations

import pytest

from shared.auth import ApiError, RateLimiter
from shared.testing import auth
from tests.security.conftest import endpoints, present_service_names

pytestmark = pytest.mark.integration

SERVICES = present_service_names()
LIMIT = 5


@pytest.mark.parametrize("service", SERVICES)
async def test_over_the_limit_a_principal_gets_429_with_retry_after_and_others_do_not(service, farm, issue):
    svc = await farm.get(service)
    ep = next(e for e in endpoints(svc.app) if e.scope and not e.streaming)
    saved = svc.ctx.rate_limiter
    svc.ctx.rate_limiter = RateLimiter(f"{LIMIT}/minute")
    try:
        _, noisy = await issue([ep.scope], kind="operator", attributes={"role": "operator"})
        _, quiet = await issue([ep.scope], kind="operator", attributes={"role": "operator"})
        body = {} if ep.writes else None
        statuses = [
            (await svc.client.request(ep.method, ep.concrete_path(), json=body, headers=auth(noisy)))
            for _ in range(LIMIT + 2)
        ]
        assert all(r.status_code != 429 for r in statuses[:LIMIT]), [r.status_code for r in statuses]
        for r in statuses[LIMIT:]:
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(r.headers["retry-after"]) <= 61
        # The limit is per principal: another caller is unaffected.
        other = await svc.client.request(ep.method, ep.concrete_path(), json=body, headers=auth(quiet))
        assert other.status_code != 429
        # Unauthenticated floods are refused before they can consume anyone's budget.
        anon = await svc.client.request(ep.method, ep.concrete_path(), json=body)
        assert anon.status_code == 401
    finally:
        svc.ctx.rate_limiter = saved


async def test_retry_after_counts_down_to_the_window_reset():
    limiter = RateLimiter("2/minute")
    await limiter.check("p")
    await limiter.check("p")
    with pytest.raises(ApiError) as refused:
        await limiter.check("p")
    assert refused.value.status == 429
    assert 59 <= int(refused.value.headers["Retry-After"]) <= 61
    await limiter.check("another-principal")  # separate budget
