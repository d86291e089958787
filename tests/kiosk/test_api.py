"""The kiosk HTTP API against the real broker and PostgreSQL: registry, ingest, auth, per-item errors."""

from __future__ import annotations

import gc
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.kiosk import publishing, repository
from services.kiosk.app import create_app
from services.kiosk.settings import KioskSettings
from shared.db import create_pool
from shared.gc_tuning import GEN0_THRESHOLD
from shared.outbox import Outbox
from shared.testing import auth, issue_test_key, read_topic, running_app
from tests.areas import BA_DINH, BA_DINH_UNIT

pytestmark = pytest.mark.integration

HOURS = [{"days": [1, 2, 3, 4, 5, 6, 7], "open": "07:00", "close": "21:00"}]


def kid() -> str:
    return f"KT-{uuid.uuid4().hex[:10]}"


def now_iso(delta_s: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat()


def entry(**kw) -> dict:
    body = {
        "building": "Tòa nhà Keangnam",
        "address": "Phạm Hùng, Nam Từ Liêm",
        "district": BA_DINH,
        "commune": BA_DINH_UNIT,
        "opening_hours": HOURS,
        "peripherals": ["touchscreen", "printer", "id_scanner"],
        "software_version": "3.2.1",
    }
    body.update(kw)
    return body


@pytest.fixture(scope="module")
async def client(kafka_settings, db_settings, topics_ready, platform_pool):
    settings = KioskSettings(kafka=kafka_settings, database=db_settings, registry_republish_seconds=0.3)
    async with running_app(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
async def admin(platform_pool) -> dict:
    # kiosk:admin lets an ingest principal report for any kiosk
    _, key = await issue_test_key(platform_pool, ["kiosk:admin", "kiosk:ingest"], kind="admin")
    return auth(key)


async def test_a_started_service_collects_garbage_less_often(client):
    # ingest batches allocate many short-lived objects: the lifespan tunes the collector (shared.gc_tuning)
    assert gc.get_threshold()[0] == GEN0_THRESHOLD


async def register(client, admin, kiosk_id: str, **kw) -> dict:
    r = await client.put(f"/v1/kiosks/{kiosk_id}", json=entry(**kw), headers=admin)
    assert r.status_code == 200, r.text
    return r.json()


async def test_registry_entry_is_stored_and_published(client, admin, kafka_settings):
    k = kid()
    first = await register(client, admin, k)
    assert first["published"] is True and first["kiosk"]["version"] == 1
    second = await register(client, admin, k, software_version="3.3.0")
    assert second["kiosk"]["version"] == 2
    r = await client.get(f"/v1/kiosks/{k}", headers=admin)
    assert r.json()["software_version"] == "3.3.0"
    events = await read_topic(kafka_settings, "ioc.kiosk.registry", where=lambda e: e.key == k, expect=2)
    assert [(e.data["version"], e.data["software_version"]) for e in events] == [(1, "3.2.1"), (2, "3.3.0")]
    assert events[0].type == "ioc.kiosk.registration.updated.v1"


async def test_registry_change_stored_but_not_published_is_republished(client, db_settings, kafka_settings):
    # As if the process had died right after the commit: the row and its registry event are stored (the outbox,
    # same transaction) with nothing on the topic; the running service's relay publishes it.
    k = kid()
    pool = await create_pool(db_settings, schema="kiosk")
    try:
        async with pool.acquire() as conn, conn.transaction():
            rows = await repository.upsert_kiosks(conn, [{"kiosk_id": k, **entry()}])
            await Outbox.add(conn, publishing.registration_events(rows, "/ioc/kiosk"))
    finally:
        await pool.close()
    events = await read_topic(
        kafka_settings, "ioc.kiosk.registry", where=lambda e: e.key == k, expect=1, timeout=10
    )
    assert [e.data["version"] for e in events] == [1]


async def test_registry_changes_stored_before_the_outbox_are_handed_to_it_at_start(
    db_settings, kafka_settings, topics_ready
):
    # Upgrade: a change the old republisher had not published yet (published_version behind version) is not
    # lost: the next start hands it to the outbox.
    k = kid()
    pool = await create_pool(db_settings, schema="kiosk")
    try:
        async with pool.acquire() as conn, conn.transaction():
            await repository.upsert_kiosks(conn, [{"kiosk_id": k, **entry()}])
            await conn.execute("UPDATE kiosks SET published_version = 0 WHERE kiosk_id = $1", k)
    finally:
        await pool.close()
    settings = KioskSettings(kafka=kafka_settings, database=db_settings, registry_republish_seconds=0.3)
    async with running_app(create_app(settings)):
        events = await read_topic(
            kafka_settings, "ioc.kiosk.registry", where=lambda e: e.key == k, expect=1, timeout=10
        )
    assert [e.data["version"] for e in events] == [1]


async def test_registry_rejects_unknown_areas_and_needs_admin(client, admin, make_key):
    r = await client.put(f"/v1/kiosks/{kid()}", json=entry(district="XX", commune=None), headers=admin)
    assert r.status_code == 422
    assert r.json()["error"]["details"][0]["field"] == "district"
    _, ingest_key = await make_key(["kiosk:ingest"])
    r = await client.put(f"/v1/kiosks/{kid()}", json=entry(), headers=auth(ingest_key))
    assert r.status_code == 403


async def test_bulk_import_reports_each_bad_item(client, admin):
    good, bad = kid(), kid()
    r = await client.post(
        "/v1/kiosks/import",
        headers=admin,
        json={
            "items": [
                {"kiosk_id": good, **entry()},
                {"kiosk_id": bad, **entry(peripherals=["printer", "fax"])},
                {"kiosk_id": good, **entry()},
            ]
        },
    )
    body = r.json()
    assert r.status_code == 200 and body["status"] == "partial" and body["accepted"] == 1
    assert [(e["index"], e["id"], e["field"], e["code"]) for e in body["rejected"]] == [
        (1, bad, "peripherals", "invalid"),
        (2, good, "kiosk_id", "duplicate"),
    ]


async def test_ingest_without_a_key_is_401(client):
    hb = {"kiosk_id": "K1", "at": now_iso(), "app_version": "3.2.1"}
    r = await client.post("/v1/heartbeats", json={"items": [hb]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"
    r = await client.post("/v1/heartbeats", json={"items": [hb]}, headers=auth("ioc_nope_nope"))
    assert r.status_code == 401


async def test_kiosk_principal_may_only_report_for_its_own_kiosks(client, admin, make_key, kafka_settings):
    mine, other, via_registry = kid(), kid(), kid()
    await register(client, admin, mine)
    await register(client, admin, other)
    pid, key = await make_key(["kiosk:ingest"], kind="gateway", attributes={"kiosks": [mine]})
    await register(client, admin, via_registry, gateway=pid)  # the registry names this principal its gateway

    r = await client.post(
        "/v1/heartbeats",
        headers=auth(key),
        json={
            "items": [
                {"kiosk_id": mine, "at": now_iso(), "app_version": "3.2.1"},
                {"kiosk_id": other, "at": now_iso(), "app_version": "3.2.1"},
            ]
        },
    )
    assert r.status_code == 403
    err = r.json()["error"]
    assert other in err["message"] and mine not in err["message"]
    assert err["details"] == [
        {
            "item": 1,
            "id": other,
            "field": "kiosk_id",
            "reason": "this principal may not report for this kiosk",
        }
    ]

    r = await client.post(
        "/v1/heartbeats",
        headers=auth(key),
        json={
            "items": [
                {
                    "kiosk_id": mine,
                    "at": now_iso(),
                    "app_version": "3.2.1",
                    "network": "wired",
                    "uptime_seconds": 3600,
                },
                {"kiosk_id": via_registry, "at": now_iso(), "app_version": "3.2.1"},
            ]
        },
    )
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    events = await read_topic(
        kafka_settings, "ioc.kiosk.heartbeats", where=lambda e: e.key in (mine, other, via_registry), expect=2
    )
    assert sorted(e.key for e in events) == sorted([mine, via_registry])  # nothing of the refused batch
    seen = await read_topic(kafka_settings, "ioc.kiosk.lastseen", where=lambda e: e.key == mine, expect=1)
    assert seen[0].data["app_version"] == "3.2.1"


async def test_bad_telemetry_items_are_named_and_the_rest_accepted(client, admin, kafka_settings):
    k = kid()
    await register(client, admin, k)
    r = await client.post(
        "/v1/peripherals",
        headers=admin,
        json={
            "items": [
                {"kiosk_id": k, "peripheral": "printer", "state": "online", "paper": "out", "at": now_iso()},
                {"kiosk_id": k, "peripheral": "printer", "state": "melted", "at": now_iso()},
                {"kiosk_id": k, "peripheral": "payment_terminal", "state": "online", "at": now_iso()},
                {"kiosk_id": k, "peripheral": "camera", "state": "online", "paper": "low", "at": now_iso()},
                {"kiosk_id": "KT-unknown-kiosk", "peripheral": "printer", "state": "online", "at": now_iso()},
                {"kiosk_id": k, "peripheral": "printer", "state": "online", "at": now_iso(3600)},
            ]
        },
    )
    body = r.json()
    assert r.status_code == 200 and body["accepted"] == 1
    assert [(e["index"], e["field"], e["code"]) for e in body["rejected"]] == [
        (1, "state", "invalid"),
        (2, "peripheral", "not_fitted"),
        (3, None, "invalid"),
        (4, "kiosk_id", "unknown_entity"),
        (5, "at", "invalid_time"),
    ]
    events = await read_topic(kafka_settings, "ioc.kiosk.peripherals", where=lambda e: e.key == k, expect=1)
    assert events[0].data["paper"] == "out"


async def test_sessions_are_published_without_personal_data(client, admin, kafka_settings):
    k = kid()
    await register(client, admin, k)
    base = {"kiosk_id": k, "journey": "submit_dossier", "started_at": now_iso(-300), "ended_at": now_iso(-10)}
    headers = {**admin, "Idempotency-Key": uuid.uuid4().hex}
    r = await client.post(
        "/v1/sessions",
        headers=headers,
        json=(
            batch := {
                "items": [
                    {
                        **base,
                        "session_id": "s-1",
                        "outcome": "completed",
                        "dossier_code": "000.00.01.H26-240506-0001",
                        "rating": 5,
                    },
                    {**base, "session_id": "s-2", "outcome": "failed"},
                    {**base, "session_id": "s-3", "outcome": "abandoned", "rating": 6},
                    {**base, "session_id": "s-4", "outcome": "completed", "citizen_name": "Nguyễn Văn A"},
                    {**base, "session_id": "s-5", "outcome": "abandoned", "failure_reason": "timeout"},
                ]
            }
        ),
    )
    body = r.json()
    assert r.status_code == 200 and body["accepted"] == 2
    rejected = {e["index"]: e for e in body["rejected"]}
    assert rejected[2]["field"] == "rating" and rejected[3]["field"] == "citizen_name"
    assert "failure_reason" in rejected[1]["reason"]
    assert "Nguyễn" not in r.text  # reasons never echo input values
    events = await read_topic(kafka_settings, "ioc.kiosk.sessions", where=lambda e: e.key == k, expect=2)
    assert sorted(e.data["session_id"] for e in events) == ["s-1", "s-5"]
    assert {e.id for e in events} == {f"ses:{k}:s-1", f"ses:{k}:s-5"}  # retries publish the same ids
    # A gateway retry with the same Idempotency-Key gets the first answer back, nothing is published again.
    again = await client.post("/v1/sessions", headers=headers, json=batch)
    assert again.json() == body and again.headers.get("idempotent-replayed") == "true"
    events = await read_topic(kafka_settings, "ioc.kiosk.sessions", where=lambda e: e.key == k)
    assert len(events) == 2
