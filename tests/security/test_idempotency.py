"""Idempotency keys are bound to the request and expire (finding 4 of issue #40).

The same key and body sent to a *different* dossier used to return the first dossier's stored answer while the
second dossier was silently left unchanged; rows were never purged.
"""

from __future__ import annotations

import uuid

import pytest

from shared.testing import auth
from tests.security.conftest import present_service_names

pytestmark = pytest.mark.integration
SERVICES = present_service_names()


@pytest.mark.skipif("dossier" not in SERVICES, reason="dossier service absent")
async def test_a_key_reused_for_another_dossier_is_422_and_changes_nothing(farm, issue):
    from tests.security.dossier_data import create_dossier, seed_reference

    svc = await farm.get("dossier")
    _, admin = await issue(["dossier:admin"], kind="admin")
    proc, agency, _ = await seed_reference(svc.client, auth(admin))
    _, key = await issue(["dossier:read", "dossier:write"], kind="agency", attributes={"agency": agency})
    first = await create_dossier(svc.client, auth(key), proc, agency)
    second = await create_dossier(svc.client, auth(key), proc, agency)
    before = (await svc.client.get(f"/v1/dossiers/{second}", headers=auth(key))).json()
    headers = {**auth(key), "Idempotency-Key": f"idem-{uuid.uuid4().hex}"}
    body = {"action": "start_processing"}
    r = await svc.client.post(f"/v1/dossiers/{first}/transitions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] != before["status"]
    # A true retry replays the stored answer.
    again = await svc.client.post(f"/v1/dossiers/{first}/transitions", json=body, headers=headers)
    assert again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    # The same key and body on another path: a different request, refused, and the dossier is unchanged.
    other = await svc.client.post(f"/v1/dossiers/{second}/transitions", json=body, headers=headers)
    assert other.status_code == 422, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    after = (await svc.client.get(f"/v1/dossiers/{second}", headers=auth(key))).json()
    assert after == before


async def test_idempotency_binding_covers_method_path_query_and_body():
    from shared.http import request_hash

    base = request_hash("POST", "/v1/dossiers/A/transitions", b"{}")
    assert base == request_hash("post", "/v1/dossiers/A/transitions", b"{}")
    assert base != request_hash("PUT", "/v1/dossiers/A/transitions", b"{}")
    assert base != request_hash("POST", "/v1/dossiers/B/transitions", b"{}")
    assert base != request_hash("POST", "/v1/dossiers/A/transitions?x=1", b"{}")
    assert base != request_hash("POST", "/v1/dossiers/A/transitions", b"{ }")


async def test_expired_idempotency_rows_are_purged_and_the_key_is_free_again(key_pool):
    from shared.http import IDEMPOTENCY_TTL_SECONDS, purge_idempotency_keys

    principal = f"sec-idem-{uuid.uuid4().hex[:8]}"
    for key, age in (("old", IDEMPOTENCY_TTL_SECONDS + 60), ("fresh", 60)):
        await key_pool.execute(
            "INSERT INTO platform.idempotency_keys(principal_id, scope, key, request_hash, status_code, response, "
            "created_at) VALUES ($1, 'x:y', $2, '\\x00', 200, '{}', now() - make_interval(secs => $3))",
            principal,
            key,
            float(age),
        )
    await purge_idempotency_keys(key_pool)
    left = await key_pool.fetch("SELECT key FROM platform.idempotency_keys WHERE principal_id=$1", principal)
    assert [r["key"] for r in left] == ["fresh"]
    # The documented period is a day (docs/guarantees.md).
    assert IDEMPOTENCY_TTL_SECONDS == 24 * 3600
