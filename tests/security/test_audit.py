"""The audit trail: who did what to which dossier, alarm or credential, and when; append-only."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from shared.auth import record_audit
from shared.testing import auth
from tests.areas import area
from tests.security.conftest import present_service_names

pytestmark = pytest.mark.integration

SERVICES = present_service_names()


async def audit_rows(pool, target: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT principal, service, action, target, detail, at FROM platform.audit_log "
        "WHERE target = $1 ORDER BY id",
        target,
    )


def recent(at: datetime) -> bool:
    return abs(datetime.now(UTC) - at) < timedelta(minutes=1)


async def test_audit_rows_cannot_be_updated_or_deleted(key_pool):
    target = f"sec-{uuid.uuid4().hex[:8]}"
    await record_audit(key_pool, principal="sec-test", service="security", action="probe", target=target)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await key_pool.execute(
            "UPDATE platform.audit_log SET principal = 'someone-else' WHERE target = $1", target
        )
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await key_pool.execute("DELETE FROM platform.audit_log WHERE target = $1", target)
    rows = await audit_rows(key_pool, target)
    assert [(r["principal"], r["action"]) for r in rows] == [("sec-test", "probe")]


async def test_audit_log_cannot_be_truncated(key_pool):
    async with key_pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            # Rolled back whatever happens: other tests' audit rows must survive this probe.
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute("TRUNCATE platform.audit_log")
        finally:
            await tx.rollback()


async def test_key_issue_and_revoke_through_the_cli_are_audited(key_pool, infra):
    from typer.testing import CliRunner

    from ioc.cli import app

    principal = f"sec-cli-{uuid.uuid4().hex[:8]}"
    runner = CliRunner()
    # The CLI runs its own event loop: keep it off this test's loop.
    issued = await asyncio.to_thread(
        runner.invoke, app, ["keys", "issue", principal, "--scopes", "kiosk:ingest"]
    )
    assert issued.exit_code == 0, issued.output
    key = issued.output.strip().splitlines()[-1]
    assert key.startswith("ioc_")
    key_id = key.split("_")[1]
    revoked = await asyncio.to_thread(runner.invoke, app, ["keys", "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output

    issued_rows = await audit_rows(key_pool, principal)
    assert [(r["service"], r["action"]) for r in issued_rows] == [("cli", "key.issued")]
    revoked_rows = await audit_rows(key_pool, key_id)
    assert [(r["service"], r["action"]) for r in revoked_rows] == [("cli", "key.revoked")]
    assert all(recent(r["at"]) for r in issued_rows + revoked_rows)
    # The secret itself is never written to the trail.
    secret = key.split("_", 2)[2]
    everything = await key_pool.fetch(
        "SELECT detail::text AS d, target, principal FROM platform.audit_log WHERE target IN ($1, $2)",
        principal,
        key_id,
    )
    assert not any(secret in (r["d"] + r["target"] + r["principal"]) for r in everything)


@pytest.mark.skipif("dossier" not in SERVICES, reason="dossier service absent")
async def test_dossier_lifecycle_changes_are_audited_with_who_what_and_when(farm, issue, key_pool):
    from tests.security.dossier_data import create_dossier, seed_reference

    svc = await farm.get("dossier")
    _, admin = await issue(["dossier:admin"], kind="admin")
    proc, agency, _ = await seed_reference(svc.client, auth(admin))
    officer, key = await issue(
        ["dossier:read", "dossier:write"], kind="agency", attributes={"agency": agency}
    )
    code = await create_dossier(svc.client, auth(key), proc, agency)
    r = await svc.client.post(
        f"/v1/dossiers/{code}/transitions", json={"action": "start_processing"}, headers=auth(key)
    )
    assert r.status_code == 200, r.text
    r = await svc.client.post(
        f"/v1/dossiers/{code}/handovers", json={"step_name": "phê duyệt"}, headers=auth(key)
    )
    assert r.status_code == 200, r.text

    rows = await audit_rows(key_pool, code)
    assert [(r["principal"], r["service"], r["action"]) for r in rows] == [
        (officer, "dossier", "dossier.receive"),
        (officer, "dossier", "dossier.start_processing"),
        (officer, "dossier", "dossier.hand_over"),
    ]
    assert rows[1]["detail"]["from"] == 2 and rows[1]["detail"]["to"] == 4
    assert all(recent(r["at"]) for r in rows)
    # A refused change leaves no trail entry claiming it happened.
    r = await svc.client.post(
        f"/v1/dossiers/{code}/transitions", json={"action": "receive"}, headers=auth(key)
    )
    assert r.status_code in (409, 422), r.text
    assert len(await audit_rows(key_pool, code)) == 3


@pytest.mark.skipif("city" not in SERVICES, reason="city service absent")
async def test_alarm_acknowledge_and_clear_are_audited(farm, issue, key_pool):
    from shared.contracts.common import AlarmChanged

    svc = await farm.get("city")
    alarm_id = f"kiosk:kiosk_offline:SEC-{uuid.uuid4().hex[:8]}"
    change = AlarmChanged(
        alarm_id=alarm_id,
        domain="kiosk",
        alarm_type="kiosk_offline",
        state="raised",
        severity="major",
        source_id=alarm_id.rsplit(":", 1)[1],
        district=area("HK"),
        at=datetime.now(UTC),
        message="kiosk silent for 5 minutes",
    )
    # Straight into the city store, as its consumer would (the broker path is the city tests' business).
    await svc.app.state.city_service.apply_alarm_changes([change.model_dump(mode="json")])
    operator, key = await issue(
        ["city:read", "city:operate"], kind="operator", attributes={"role": "operator"}
    )
    r = await svc.client.post(f"/v1/alarms/{alarm_id}/acknowledge", headers=auth(key))
    assert r.status_code == 200, r.text
    # the incident's last alarm: its procedure's mandatory steps come first (docs/console.md)
    for step in ("remote-check", "notify-ward", "confirm-service"):
        s = await svc.client.post(f"/v1/incidents/{r.json()['incident_id']}/steps/{step}", headers=auth(key))
        assert s.status_code == 200, s.text
    r = await svc.client.post(f"/v1/alarms/{alarm_id}/clear", headers=auth(key))
    assert r.status_code == 200, r.text
    rows = await audit_rows(key_pool, alarm_id)
    assert [(r["principal"], r["service"], r["action"]) for r in rows] == [
        (operator, "city", "alarm.acknowledge"),
        (operator, "city", "alarm.clear"),
    ]
    assert all(recent(r["at"]) for r in rows)


@pytest.mark.skipif("kiosk" not in SERVICES, reason="kiosk service absent")
async def test_kiosk_registry_changes_are_audited(farm, issue, key_pool):
    svc = await farm.get("kiosk")
    admin_id, admin = await issue(["kiosk:admin"], kind="admin")
    kiosk_id = f"SEC-{uuid.uuid4().hex[:8]}"
    r = await svc.client.put(
        f"/v1/kiosks/{kiosk_id}",
        headers=auth(admin),
        json={
            "building": "UBND",
            "address": "Hà Nội",
            "district": area("HK"),
            "opening_hours": [],
            "peripherals": ["touchscreen"],
            "software_version": "1.0.0",
        },
    )
    assert r.status_code == 200, r.text
    gateway, _ = await issue(["kiosk:ingest"])
    r = await svc.client.post(
        "/v1/kiosks/import",
        headers=auth(admin),
        json={
            "items": [
                {
                    "kiosk_id": kiosk_id,
                    "building": "UBND",
                    "address": "Hà Nội",
                    "district": area("HK"),
                    "opening_hours": [],
                    "peripherals": ["touchscreen"],
                    "software_version": "1.0.1",
                    "gateway": gateway,
                }
            ]
        },
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    rows = await audit_rows(key_pool, kiosk_id)
    assert [(r["principal"], r["service"], r["action"]) for r in rows] == [
        (admin_id, "kiosk", "kiosk.registered"),
        (admin_id, "kiosk", "kiosk.imported"),
    ]
    # Who may report for the kiosk is part of the trail.
    assert [(r["detail"]["version"], r["detail"]["gateway"]) for r in rows] == [(1, None), (2, gateway)]
    assert all(recent(r["at"]) for r in rows)
