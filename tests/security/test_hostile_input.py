"""Hostile input: oversized and malformed bodies on every write endpoint of every service, then item-level
abuse of the kiosk ingest and registry (strict types, unknown fields, far-off times, huge batches, unicode).

Every refusal must be a clear 4xx (code, and which item/field/why), never a 5xx, and nothing refused may be
published.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from shared.testing import auth, read_topic
from tests.areas import area
from tests.security.conftest import MAX_BODY_BYTES, Endpoint, endpoints, present_service_names

pytestmark = pytest.mark.integration

SERVICES = present_service_names()
OPERATOR = {"role": "operator"}


def json_body_endpoints(app) -> list[Endpoint]:
    """Write endpoints whose documented request body is JSON."""
    spec = app.openapi()["paths"]
    out = []
    for ep in endpoints(app):
        if not ep.writes or not ep.scope:
            continue
        op = spec.get(ep.path.replace(":path}", "}"), {}).get(ep.method.lower(), {})
        if "application/json" in op.get("requestBody", {}).get("content", {}):
            out.append(ep)
    return out


async def domain_key(svc, issue) -> str:
    scopes = sorted({e.scope for e in endpoints(svc.app) if e.scope})
    _, key = await issue(scopes, kind="operator", attributes=OPERATOR)
    return key


OVERSIZED = b'{"items": [' + b'{"x": 1},' * (MAX_BODY_BYTES // 8) + b'{"x": 1}]}'


@pytest.mark.parametrize("service", SERVICES)
async def test_oversized_bodies_with_declared_length_are_413(service, farm, issue):
    svc = await farm.get(service)
    headers = {**auth(await domain_key(svc, issue)), "content-type": "application/json"}
    assert len(OVERSIZED) > MAX_BODY_BYTES
    failures = []
    for ep in (e for e in endpoints(svc.app) if e.writes and e.scope):
        r = await svc.client.request(ep.method, ep.concrete_path(), content=OVERSIZED, headers=headers)
        if r.status_code != 413 or r.json()["error"]["code"] != "payload_too_large":
            failures.append(f"{ep.method} {ep.path} → {r.status_code}")
    assert failures == []


@pytest.mark.parametrize("service", SERVICES)
async def test_oversized_streamed_bodies_are_413(service, farm, issue):
    svc = await farm.get(service)
    headers = {**auth(await domain_key(svc, issue)), "content-type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length (chunked upload): the limit must hold while the body streams in.
        for i in range(0, len(OVERSIZED), 16 * 1024):
            yield OVERSIZED[i : i + 16 * 1024]

    eps = json_body_endpoints(svc.app)
    if not eps:
        pytest.skip(f"{service} takes no JSON body")
    failures = []
    for ep in eps:
        r = await svc.client.request(ep.method, ep.concrete_path(), content=chunks(), headers=headers)
        if r.status_code != 413:
            failures.append(f"{ep.method} {ep.path} → {r.status_code}")
    assert failures == []


@pytest.mark.parametrize("service", SERVICES)
async def test_malformed_json_and_wrong_shapes_get_clear_4xx(service, farm, issue):
    svc = await farm.get(service)
    key = await domain_key(svc, issue)
    headers = {**auth(key), "content-type": "application/json"}
    failures = []
    for ep in json_body_endpoints(svc.app):
        path = ep.concrete_path()
        for raw in (b'{"items": [', b"\xff\xfe{}", b'{"items": [1,]}', b"{'items': []}"):
            r = await svc.client.request(ep.method, path, content=raw, headers=headers)
            if r.status_code != 400 or r.json()["error"]["code"] != "malformed_json":
                failures.append(f"{ep.method} {ep.path} {raw[:12]!r} → {r.status_code} {r.text[:120]}")
        for raw in (b"[]", b'"items"', b"42", b"null", b"NaN", b'{"items": [Infinity]}'):
            r = await svc.client.request(ep.method, path, content=raw, headers=headers)
            if r.status_code not in (400, 422) or "error" not in r.json():
                failures.append(f"{ep.method} {ep.path} body {raw!r} → {r.status_code}")
        # Unknown top-level fields are an error, named in the answer (not silently dropped).
        r = await svc.client.request(
            ep.method, path, json={"items": [], "sneaky_extra": 1}, headers=auth(key)
        )
        fields = [d.get("field") for d in r.json().get("error", {}).get("details", [])]
        if r.status_code != 422 or "sneaky_extra" not in fields:
            failures.append(f"{ep.method} {ep.path} unknown field → {r.status_code} fields={fields}")
    assert failures == []


# Kiosk: item-level abuse ----------------------------------------------------------------------------------------
ENTRY = {
    "building": "Trung tâm phục vụ hành chính công",
    "address": "258 Võ Chí Công, Tây Hồ",
    "district": area("TH"),
    "opening_hours": [{"days": [1, 2, 3, 4, 5], "open": "08:00", "close": "17:00"}],
    "peripherals": ["touchscreen", "printer"],
    "software_version": "2.0.0",
}


def iso(delta: timedelta = timedelta(0)) -> str:
    return (datetime.now(UTC) + delta).isoformat()


@pytest.fixture
async def kiosk(farm, issue):
    """The kiosk app, an admin key, and a fresh kiosk reported by a fresh gateway key."""
    if "kiosk" not in SERVICES:
        pytest.skip("kiosk service absent")
    svc = await farm.get("kiosk")
    _, admin = await issue(["kiosk:admin"], kind="admin")
    gw, key = await issue(["kiosk:ingest"])
    kiosk_id = f"SEC-{uuid.uuid4().hex[:8]}"
    r = await svc.client.put(f"/v1/kiosks/{kiosk_id}", json={**ENTRY, "gateway": gw}, headers=auth(admin))
    assert r.status_code == 200, r.text
    return svc, auth(admin), auth(key), kiosk_id


def beat(kiosk_id: str, **kw) -> dict:
    return {
        "kiosk_id": kiosk_id,
        "at": iso(),
        "app_version": "2.0.0",
        "uptime_seconds": 60,
        "network": "wired",
        **kw,
    }


async def test_kiosk_items_with_bad_types_fields_or_times_are_rejected_one_by_one(kiosk, kafka_settings):
    svc, _, gateway, k = kiosk
    bad = [
        ("uptime_seconds", beat(k, uptime_seconds=False)),  # a boolean is not a number
        ("uptime_seconds", beat(k, uptime_seconds="60")),  # nor is a numeric string
        ("uptime_seconds", beat(k, uptime_seconds=60.5)),  # nor a float for an integer
        ("uptime_seconds", beat(k, uptime_seconds=-1)),
        ("uptime_seconds", beat(k, uptime_seconds=2**70)),
        ("surprise", {**beat(k), "surprise": "x"}),  # unknown field
        ("at", beat(k, at="9999-12-31T23:59:59+00:00")),  # far future
        ("at", beat(k, at=iso(timedelta(hours=1)))),  # beyond the allowed clock skew
        ("at", beat(k, at="1970-01-01T00:00:00+00:00")),  # far past
        ("at", beat(k, at="2026-01-01T00:00:00")),  # no UTC offset
        ("at", beat(k, at="not a time")),
        ("kiosk_id", beat(k + "\x00")),  # NUL
        ("kiosk_id", beat("\u202e" + k)),  # RTL override
        ("kiosk_id", beat(k + "😀")),  # 4-byte emoji
        ("kiosk_id", beat("K" * 10_000)),  # very long
        ("app_version", beat(k, app_version="2.0.0\x00")),
        ("app_version", beat(k, app_version="v" * 100_000)),
        ("network", beat(k, network="wired\u202e")),
    ]
    good = beat(k)
    r = await svc.client.post("/v1/heartbeats", json={"items": [b for _, b in bad] + [good]}, headers=gateway)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "partial" and body["accepted"] == 1
    rejected = {e["index"]: e for e in body["rejected"]}
    assert sorted(rejected) == list(range(len(bad)))
    for i, (field, _) in enumerate(bad):
        e = rejected[i]
        assert e["field"] == field and e["reason"], (i, e)
        # Reasons never echo the (possibly hostile) input back.
        assert "\x00" not in e["reason"] and "\u202e" not in e["reason"] and "v" * 100 not in e["reason"]
    published = await read_topic(
        kafka_settings, "ioc.kiosk.heartbeats", where=lambda ev: ev.key == k, expect=1
    )
    # Only the one good heartbeat reached the broker.
    assert [ev.data["kiosk_id"] for ev in published] == [k]


async def test_kiosk_huge_batches_are_refused_with_the_limit_named(kiosk):
    svc, admin, gateway, _ = kiosk
    r = await svc.client.post("/v1/heartbeats", json={"items": [{}] * 5001}, headers=gateway)
    assert r.status_code == 422, r.text
    details = r.json()["error"]["details"]
    assert details[0]["field"] == "items" and "5000" in details[0]["reason"]
    r = await svc.client.post("/v1/heartbeats", json={"items": []}, headers=gateway)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "items"
    r = await svc.client.post("/v1/kiosks/import", json={"items": [{}] * 5001}, headers=admin)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "items"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("building", "Tòa nhà\x00 A"),  # PostgreSQL text cannot hold NUL
        ("address", "Số 1\x07 Tràng Tiền"),  # other C0 control characters
        ("building", "Nhà \u202egnirts"),  # RTL override: spoofs what operators read
        ("address", "Phố \u2066Hàng Bài\u2069"),  # bidi isolates
        ("building", "B" * 201),  # over the field limit
        ("software_version", "3.0\x00"),
        ("district", "TH\x00"),
        ("in_service_since", "9999-12-31T00:00:00+00:00"),
    ],
)
async def test_kiosk_registry_refuses_control_characters_and_over_long_text(kiosk, field, value):
    svc, admin, _, _ = kiosk
    kiosk_id = f"SEC-{uuid.uuid4().hex[:8]}"
    r = await svc.client.put(f"/v1/kiosks/{kiosk_id}", json={**ENTRY, field: value}, headers=admin)
    assert r.status_code == 422, r.text
    assert field in [d.get("field") for d in r.json()["error"]["details"]]
    # The bulk import says which item and which field.
    r = await svc.client.post(
        "/v1/kiosks/import", json={"items": [{**ENTRY, "kiosk_id": kiosk_id, field: value}]}, headers=admin
    )
    assert r.status_code == 422, r.text
    assert r.json()["rejected"][0]["index"] == 0 and r.json()["rejected"][0]["field"] == field
    assert (await svc.client.get(f"/v1/kiosks/{kiosk_id}", headers=admin)).status_code == 404


async def test_kiosk_registry_keeps_legitimate_unicode_intact(kiosk):
    svc, admin, _, _ = kiosk
    kiosk_id = f"SEC-{uuid.uuid4().hex[:8]}"
    building = "Trung tâm Hành chính công Quận Hoàn Kiếm 🏛️ — 𠀀 (CJK ext. B)"
    r = await svc.client.put(f"/v1/kiosks/{kiosk_id}", json={**ENTRY, "building": building}, headers=admin)
    assert r.status_code == 200, r.text
    stored = (await svc.client.get(f"/v1/kiosks/{kiosk_id}", headers=admin)).json()
    assert stored["building"] == building
