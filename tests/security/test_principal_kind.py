"""Principals keep their kind: re-issuing a key never silently turns an agency into something that sees more.

Finding 2 of issue #40: ``ioc keys issue <agency> --scopes dossier:read,dossier:write`` without ``--kind`` made the
agency a gateway, and both its old and new keys then read every agency's dossiers.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from typer.testing import CliRunner

from shared.testing import auth
from tests.security.conftest import present_service_names

pytestmark = pytest.mark.integration
SERVICES = present_service_names()


async def cli(*args: str):
    from ioc.cli import app

    # The CLI runs its own event loop: keep it off this test's loop.
    return await asyncio.to_thread(CliRunner().invoke, app, list(args))


async def test_reissuing_a_key_never_changes_the_principals_kind_or_scopes(key_pool, infra):
    principal = f"sec-agency-{uuid.uuid4().hex[:8]}"
    first = await cli(
        "keys",
        "issue",
        principal,
        "--scopes",
        "dossier:read,dossier:write",
        "--kind",
        "agency",
        "--attributes",
        '{"agency": "AG1"}',
    )
    assert first.exit_code == 0, first.output
    # The mistake of the finding: same scopes, no --kind (it used to default to gateway and overwrite).
    again = await cli("keys", "issue", principal, "--scopes", "dossier:read,dossier:write")
    assert again.exit_code == 0, again.output
    row = await key_pool.fetchrow(
        "SELECT kind, scopes, attributes FROM platform.principals WHERE id=$1", principal
    )
    assert row["kind"] == "agency"
    assert dict(row["attributes"]) == {"agency": "AG1"}
    # A real change of kind or scopes is refused without the explicit flag, and nothing changes.
    for change in (["--kind", "gateway"], ["--scopes", "*"], ["--attributes", "{}"]):
        refused = await cli("keys", "issue", principal, *change)
        assert refused.exit_code == 2, (change, refused.output)
        assert "--change-principal" in refused.output
    row = await key_pool.fetchrow(
        "SELECT kind, scopes, attributes FROM platform.principals WHERE id=$1", principal
    )
    assert (row["kind"], sorted(row["scopes"]), dict(row["attributes"])) == (
        "agency",
        ["dossier:read", "dossier:write"],
        {"agency": "AG1"},
    )
    # With the flag the change is made and audited with before and after.
    changed = await cli("keys", "issue", principal, "--scopes", "dossier:read", "--change-principal")
    assert changed.exit_code == 0, changed.output
    audit = await key_pool.fetch(
        "SELECT action, detail FROM platform.audit_log WHERE target=$1 ORDER BY id", principal
    )
    changes = [dict(r["detail"]) for r in audit if r["action"] == "principal.changed"]
    assert changes == [
        {"before": {"scopes": ["dossier:read", "dossier:write"]}, "after": {"scopes": ["dossier:read"]}}
    ]
    assert [r["action"] for r in audit].count("key.issued") == 3


async def test_a_new_principal_needs_scopes(key_pool, infra):
    r = await cli("keys", "issue", f"sec-none-{uuid.uuid4().hex[:8]}")
    assert r.exit_code == 2
    assert "--scopes" in r.output


@pytest.mark.skipif("dossier" not in SERVICES, reason="dossier service absent")
async def test_an_agency_attribute_confines_the_principal_whatever_its_kind(farm, issue):
    from tests.security.dossier_data import create_dossier, seed_reference

    svc = await farm.get("dossier")
    _, admin = await issue(["dossier:admin"], kind="admin")
    proc, agency_a, agency_b = await seed_reference(svc.client, auth(admin))
    _, key_a = await issue(["dossier:read", "dossier:write"], kind="agency", attributes={"agency": agency_a})
    _, key_b = await issue(["dossier:read", "dossier:write"], kind="agency", attributes={"agency": agency_b})
    code_b = await create_dossier(svc.client, auth(key_b), proc, agency_b)
    # Agency A's principal, its kind changed (by a mistake like the one above) but its agency kept.
    _, widened = await issue(
        ["dossier:read", "dossier:write"], kind="gateway", attributes={"agency": agency_a}
    )
    r = await svc.client.get(f"/v1/dossiers/{code_b}", headers=auth(widened))
    assert r.status_code == 404, r.text
    r = await svc.client.get("/v1/dossiers", params={"agency": agency_b}, headers=auth(widened))
    assert r.status_code == 403, r.text
    r = await svc.client.get("/v1/dossiers", headers=auth(widened))
    assert r.status_code == 200
    assert all(d["agency_code"] == agency_a for d in r.json()["items"])
    assert (await svc.client.get(f"/v1/dossiers/{code_b}", headers=auth(key_a))).status_code == 404
