"""Authorization of every endpoint of every service, enumerated from the running apps' routes.

For each endpoint: no credential → 401, a malformed or unknown key → 401, a revoked key → 401, a principal
holding every *other* scope of the domain → 403, and (control) the right scope passes the auth gate. Then the
entity rules: another gateway's kiosk, another agency's dossier, a leader's alarm acknowledgement.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from shared.auth import KeyStore
from shared.testing import auth
from tests.areas import area
from tests.security.conftest import Endpoint, documented_operations, endpoints, present_service_names

pytestmark = pytest.mark.integration

SERVICES = present_service_names()
# Roles the city demands on top of the scope for operator actions.
OPERATOR = {"role": "operator"}
# Deliberately public: the console's HTML shell (its data comes from the authenticated API), and signing in and
# out (tests/city/test_auth.py, test_oidc.py: they take a password or the provider's answer, never a key).
PUBLIC = {
    ("city", "GET", "/"),
    ("city", "POST", "/v1/session"),
    ("city", "DELETE", "/v1/session"),
    ("city", "GET", "/v1/session/providers"),
    ("city", "GET", "/v1/session/oidc"),
    ("city", "GET", "/v1/session/oidc/callback"),
}


async def call(client, ep: Endpoint, headers: dict[str, str]):
    body = {} if ep.writes else None
    return await client.request(ep.method, ep.concrete_path(), json=body, headers=headers)


def key_id(api_key: str) -> str:
    return api_key.split("_")[1]


@pytest.mark.parametrize("service", SERVICES)
async def test_every_endpoint_requires_a_scope(service, farm):
    svc = await farm.get(service)
    eps = list(endpoints(svc.app))
    assert eps, f"{service} exposes no endpoint"
    public = [
        f"{e.method} {e.path}" for e in eps if e.scope is None and (service, e.method, e.path) not in PUBLIC
    ]
    assert public == [], f"{service}: endpoints without an auth dependency: {public}"
    # The route walk sees everything the OpenAPI document offers (so nothing escapes these tests).
    seen = {(e.method, e.path.replace(":path}", "}")) for e in eps}
    assert documented_operations(svc.app) - seen == set()
    writes = [e for e in eps if e.writes]
    assert writes, f"{service} has no write endpoint to protect"


@pytest.mark.parametrize("service", SERVICES)
async def test_missing_malformed_or_unknown_credentials_are_401(service, farm):
    svc = await farm.get(service)
    bad_headers = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not-an-ioc-key"},
        {"Authorization": f"Bearer ioc_{uuid.uuid4().hex[:12]}_{uuid.uuid4().hex}"},
        {"X-API-Key": "ioc_x_" + "A" * 400},
    ]
    failures = []
    for ep in (e for e in endpoints(svc.app) if e.scope):
        for headers in bad_headers:
            r = await call(svc.client, ep, headers)
            if r.status_code != 401 or r.json()["error"]["code"] != "unauthenticated":
                failures.append(f"{ep.method} {ep.path} {list(headers) or 'no header'} → {r.status_code}")
            elif r.headers.get("www-authenticate") != "Bearer":
                failures.append(f"{ep.method} {ep.path}: 401 without WWW-Authenticate")
    assert failures == []


@pytest.mark.parametrize("service", SERVICES)
async def test_wrong_scope_is_403_and_right_scope_passes_the_gate(service, farm, issue):
    svc = await farm.get(service)
    eps = [e for e in endpoints(svc.app) if e.scope]
    domain_scopes = sorted({s for e in eps for s in e.scopes})
    failures = []
    for ep in eps:
        # Everything of the domain but the scopes it accepts (and another domain's wildcard): a narrow scope
        # (dossier:stats, kiosk:read) opens no route of a wider one.
        others = [s for s in domain_scopes if s not in ep.scopes] + ["elsewhere:*"]
        _, wrong = await issue(others, kind="operator", attributes=OPERATOR)
        r = await call(svc.client, ep, auth(wrong))
        if r.status_code != 403 or r.json()["error"]["code"] != "forbidden":
            failures.append(f"{ep.method} {ep.path} with {others} → {r.status_code} (want 403)")
        if ep.streaming:
            continue  # a granted SSE request would stream forever through the in-process transport
        _, right = await issue([ep.scope], kind="operator", attributes=OPERATOR)
        r = await call(svc.client, ep, auth(right))
        if r.status_code in (401, 403):
            failures.append(f"{ep.method} {ep.path} with {ep.scope} → {r.status_code} (control)")
    assert failures == []


@pytest.mark.parametrize("service", SERVICES)
async def test_revoked_key_is_401_on_every_write(service, farm, issue, key_pool):
    svc = await farm.get(service)
    eps = [e for e in endpoints(svc.app) if e.scope and e.writes]
    scopes = sorted({e.scope for e in eps})
    _, key = await issue(scopes, kind="operator", attributes=OPERATOR)
    first = await call(svc.client, eps[0], auth(key))
    assert first.status_code not in (401, 403), first.text
    # Revoked from outside the service (as `ioc keys revoke` does).
    assert await KeyStore(key_pool, cache_seconds=0).revoke_key(key_id(key))
    failures = []
    for ep in eps:
        r = await call(svc.client, ep, auth(key))
        if r.status_code != 401:
            failures.append(f"{ep.method} {ep.path} → {r.status_code}")
    assert failures == []


async def test_revocation_takes_effect_within_the_auth_cache_period(farm, issue, key_pool):
    svc = await farm.get(SERVICES[0])
    ep = next(e for e in endpoints(svc.app) if e.scope and not e.streaming)
    store = svc.ctx.keys
    store.cache_seconds = 2.0
    try:
        _, key = await issue([ep.scope], kind="operator", attributes=OPERATOR)
        assert (await call(svc.client, ep, auth(key))).status_code not in (401, 403)
        await KeyStore(key_pool, cache_seconds=0).revoke_key(key_id(key))
        await asyncio.sleep(2.2)
        r = await call(svc.client, ep, auth(key))
        assert r.status_code == 401, r.text
    finally:
        store.cache_seconds = 0


async def test_disabled_principal_is_401(farm, issue, key_pool):
    svc = await farm.get(SERVICES[0])
    ep = next(e for e in endpoints(svc.app) if e.scope and not e.streaming)
    pid, key = await issue([ep.scope], kind="operator", attributes=OPERATOR)
    assert (await call(svc.client, ep, auth(key))).status_code not in (401, 403)
    await key_pool.execute("UPDATE platform.principals SET disabled_at = now() WHERE id = $1", pid)
    assert (await call(svc.client, ep, auth(key))).status_code == 401


# Entity ownership -------------------------------------------------------------------------------------------
KIOSK_ENTRY = {
    "building": "UBND phường",
    "address": "1 Tràng Tiền",
    "district": area("HK"),
    "opening_hours": [{"days": [1, 2, 3, 4, 5], "open": "08:00", "close": "17:00"}],
    "peripherals": ["touchscreen", "printer"],
    "software_version": "1.0.0",
}


@pytest.mark.skipif("kiosk" not in SERVICES, reason="kiosk service absent")
async def test_a_gateway_cannot_report_for_another_gateways_kiosk(farm, issue):
    svc = await farm.get("kiosk")
    _, admin = await issue(["kiosk:admin"], kind="admin")
    gw_a, key_a = await issue(["kiosk:ingest"])
    gw_b, _ = await issue(["kiosk:ingest"])
    kiosk_a, kiosk_b = f"SEC-{uuid.uuid4().hex[:8]}", f"SEC-{uuid.uuid4().hex[:8]}"
    for kiosk, gw in ((kiosk_a, gw_a), (kiosk_b, gw_b)):
        r = await svc.client.put(
            f"/v1/kiosks/{kiosk}", json={**KIOSK_ENTRY, "gateway": gw}, headers=auth(admin)
        )
        assert r.status_code == 200, r.text
    now = datetime.now(UTC).isoformat()
    beat = {"at": now, "app_version": "1.0.0", "uptime_seconds": 60, "network": "wired"}

    mine = await svc.client.post(
        "/v1/heartbeats", json={"items": [{**beat, "kiosk_id": kiosk_a}]}, headers=auth(key_a)
    )
    assert mine.status_code == 200 and mine.json()["accepted"] == 1, mine.text
    # One foreign kiosk in the batch: 403 naming it, and nothing of the batch is accepted.
    mixed = await svc.client.post(
        "/v1/heartbeats",
        json={"items": [{**beat, "kiosk_id": kiosk_a}, {**beat, "kiosk_id": kiosk_b}]},
        headers=auth(key_a),
    )
    assert mixed.status_code == 403, mixed.text
    err = mixed.json()["error"]
    assert err["code"] == "forbidden" and kiosk_b in err["message"]
    assert err["details"] == [
        {
            "item": 1,
            "id": kiosk_b,
            "field": "kiosk_id",
            "reason": "this principal may not report for this kiosk",
        }
    ]
    # Sessions and peripherals are guarded the same way.
    for path, item in (
        (
            "/v1/sessions",
            {
                "session_id": uuid.uuid4().hex,
                "kiosk_id": kiosk_b,
                "journey": "lookup_procedure",
                "started_at": now,
                "ended_at": now,
                "outcome": "completed",
            },
        ),
        ("/v1/peripherals", {"kiosk_id": kiosk_b, "peripheral": "printer", "state": "online", "at": now}),
    ):
        r = await svc.client.post(path, json={"items": [item]}, headers=auth(key_a))
        assert r.status_code == 403, (path, r.text)
    # The registry is admin-only: a gateway cannot re-assign a kiosk to itself.
    r = await svc.client.put(
        f"/v1/kiosks/{kiosk_b}", json={**KIOSK_ENTRY, "gateway": gw_a}, headers=auth(key_a)
    )
    assert r.status_code == 403


@pytest.mark.skipif("dossier" not in SERVICES, reason="dossier service absent")
async def test_an_agency_cannot_see_or_change_another_agencys_dossier(farm, issue):
    from tests.security.dossier_data import create_dossier, seed_reference

    svc = await farm.get("dossier")
    _, admin = await issue(["dossier:admin"], kind="admin")
    proc, agency_a, agency_b = await seed_reference(svc.client, auth(admin))
    _, key_a = await issue(["dossier:read", "dossier:write"], kind="agency", attributes={"agency": agency_a})
    _, key_b = await issue(["dossier:read", "dossier:write"], kind="agency", attributes={"agency": agency_b})
    code = await create_dossier(svc.client, auth(key_a), proc, agency_a)

    assert (await svc.client.get(f"/v1/dossiers/{code}", headers=auth(key_a))).status_code == 200
    # Another agency: the dossier does not exist for it (404, not 403, so codes cannot be probed).
    r = await svc.client.get(f"/v1/dossiers/{code}", headers=auth(key_b))
    assert r.status_code == 404, r.text
    for path, body in (
        (f"/v1/dossiers/{code}/transitions", {"action": "start_processing"}),
        (f"/v1/dossiers/{code}/handovers", {"step_name": "thẩm định"}),
        (f"/v1/dossiers/{code}/apologies", {"new_due_date": "2030-01-01"}),
    ):
        r = await svc.client.post(path, json=body, headers=auth(key_b))
        assert r.status_code == 404, (path, r.text)
    listed = await svc.client.get("/v1/dossiers", params={"agency": agency_a}, headers=auth(key_b))
    assert listed.status_code == 403
    own = await svc.client.get("/v1/dossiers", headers=auth(key_b))
    assert own.status_code == 200 and code not in [d["code"] for d in own.json()["items"]]
    # Recording a dossier in another agency's name is refused outright.
    r = await svc.client.post(
        "/v1/dossiers",
        json={
            "code": f"SEC-{uuid.uuid4().hex[:10]}",
            "procedure_code": proc,
            "agency_code": agency_a,
            "channel": "online",
            "applicant": {
                "name": "Nguyễn Văn A",
                "id_number": "001099000001",
                "address": "Hà Nội",
                "phone": "0900000001",
            },
        },
        headers=auth(key_b),
    )
    assert r.status_code == 403
    # The owner still can change it (the 404s above were not a broken endpoint).
    r = await svc.client.post(
        f"/v1/dossiers/{code}/handovers", json={"step_name": "thẩm định"}, headers=auth(key_a)
    )
    assert r.status_code == 200, r.text


@pytest.mark.skipif("city" not in SERVICES, reason="city service absent")
async def test_a_leader_may_watch_but_not_acknowledge_alarms(farm, issue):
    svc = await farm.get("city")
    _, leader = await issue(["city:read", "city:operate"], kind="operator", attributes={"role": "leader"})
    assert (await svc.client.get("/v1/alarms", headers=auth(leader))).status_code == 200
    for action in ("acknowledge", "clear"):
        r = await svc.client.post(f"/v1/alarms/sec-{uuid.uuid4().hex[:8]}/{action}", headers=auth(leader))
        assert r.status_code == 403 and "leader" in r.json()["error"]["message"], r.text
        r = await svc.client.post(f"/v1/incidents/sec-{uuid.uuid4().hex[:8]}/{action}", headers=auth(leader))
        assert r.status_code == 403, r.text
