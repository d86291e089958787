"""Dossier codes are scoped per agency (issue #40 finding 6, guarantee SG12).

Before: codes were unique across the city, so agency B creating a code agency A already used got 409 "exists
already": B learnt that the code existed and could squat A's future codes. Now a dossier is (agency, code): two
agencies may use the same code, neither sees the other's dossier, and every answer an agency gets about a code
of another agency is exactly the answer for a code that never existed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.testing import auth
from tests.security.conftest import present_service_names
from tests.security.dossier_data import create_dossier, seed_reference, uid

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif("dossier" not in present_service_names(), reason="dossier service absent"),
]

APPLICANT_A = {
    "name": "Nguyễn Văn A",
    "id_number": "001099000011",
    "address": "Hà Nội",
    "phone": "0900000011",
}
APPLICANT_B = {"name": "Lê Thị B", "id_number": "001099000022", "address": "Hà Đông", "phone": "0900000022"}

# every endpoint that names one dossier, with a body valid for a received dossier
PER_DOSSIER = (
    ("GET", "", None),
    ("POST", "/transitions", {"action": "start_processing"}),
    ("POST", "/handovers", {"step_name": "thẩm định"}),
    ("POST", "/apologies", {"new_due_date": "2030-01-01"}),
    ("POST", "/feedback", {"rating": "satisfied"}),
    ("POST", "/portal-syncs", {"synced_status": 2, "status_at": "2025-01-02T02:00:00Z"}),
)


async def _agencies(farm, issue):
    svc = await farm.get("dossier")
    _, admin = await issue(["*"], kind="admin")
    proc, agency_a, agency_b = await seed_reference(svc.client, auth(admin))
    _, key_a = await issue(["dossier:read", "dossier:write"], kind="agency", attributes={"agency": agency_a})
    _, key_b = await issue(["dossier:read", "dossier:write"], kind="agency", attributes={"agency": agency_b})
    return svc, admin, proc, agency_a, agency_b, key_a, key_b


async def test_two_agencies_may_use_the_same_code_and_neither_sees_the_other(farm, issue):
    svc, _, proc, agency_a, agency_b, key_a, key_b = await _agencies(farm, issue)
    code = await create_dossier(svc.client, auth(key_a), proc, agency_a, APPLICANT_A)
    # The old service answered 409 "exists already" here.
    assert await create_dossier(svc.client, auth(key_b), proc, agency_b, APPLICANT_B, code=code) == code

    a = (await svc.client.get(f"/v1/dossiers/{code}", headers=auth(key_a))).json()
    b = (await svc.client.get(f"/v1/dossiers/{code}", headers=auth(key_b))).json()
    assert (a["agency_code"], a["applicant"]) == (agency_a, APPLICANT_A)
    assert (b["agency_code"], b["applicant"]) == (agency_b, APPLICANT_B)
    # B's transition changes B's dossier only; each history holds its own dossier's lines only.
    r = await svc.client.post(
        f"/v1/dossiers/{code}/transitions", json={"action": "start_processing"}, headers=auth(key_b)
    )
    assert r.status_code == 200 and r.json()["status"] == 4, r.text
    a = (await svc.client.get(f"/v1/dossiers/{code}", headers=auth(key_a))).json()
    b = (await svc.client.get(f"/v1/dossiers/{code}", headers=auth(key_b))).json()
    assert a["status"] == 2 and [h["action"] for h in a["history"]] == ["receive"]
    assert b["status"] == 4 and [h["action"] for h in b["history"]] == ["receive", "start_processing"]
    for key, agency in ((key_a, agency_a), (key_b, agency_b)):
        listed = (await svc.client.get("/v1/dossiers", headers=auth(key))).json()["items"]
        assert [(d["code"], d["agency_code"]) for d in listed if d["code"] == code] == [(code, agency)]
    # A duplicate within one agency is still refused (it only tells the agency about its own codes).
    r = await svc.client.post(
        "/v1/dossiers",
        json={
            "code": code,
            "procedure_code": proc,
            "agency_code": agency_b,
            "channel": "online",
            "applicant": APPLICANT_B,
        },
        headers=auth(key_b),
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "duplicate", r.text


async def test_another_agencys_code_answers_exactly_like_a_code_that_never_existed(farm, issue):
    svc, _, proc, agency_a, agency_b, key_a, key_b = await _agencies(farm, issue)
    taken = await create_dossier(svc.client, auth(key_a), proc, agency_a, APPLICANT_A)
    never = f"HS-SEC-{uid()}"

    async def answer(code: str, suffix: str, method: str, body, params=None):
        r = await svc.client.request(
            method, f"/v1/dossiers/{code}{suffix}", json=body, params=params, headers=auth(key_b)
        )
        return r.status_code, r.text.replace(code, "<code>")

    for suffix_method_body in PER_DOSSIER:
        suffix, method, body = suffix_method_body[1], suffix_method_body[0], suffix_method_body[2]
        got_taken = await answer(taken, suffix, method, body)
        got_never = await answer(never, suffix, method, body)
        assert got_taken == got_never and got_taken[0] == 404, (method, suffix, got_taken, got_never)
        # naming the other agency explicitly changes nothing
        named = await answer(taken, suffix, method, body, {"agency": agency_a})
        assert named == got_never, (method, suffix, named)
    # Nothing was squatted: B can now record the very code A uses (old service: 409 "exists already").
    assert await create_dossier(svc.client, auth(key_b), proc, agency_b, APPLICANT_B, code=taken) == taken
    a = (await svc.client.get(f"/v1/dossiers/{taken}", headers=auth(key_a))).json()
    assert a["applicant"] == APPLICANT_A and a["status"] == 2  # B's probes changed nothing of A's


async def test_an_admin_names_the_agency_when_a_code_is_ambiguous(farm, issue):
    svc, admin, proc, agency_a, agency_b, key_a, key_b = await _agencies(farm, issue)
    code = await create_dossier(svc.client, auth(key_a), proc, agency_a, APPLICANT_A)
    only_a = await svc.client.get(f"/v1/dossiers/{code}", headers=auth(admin))
    assert (
        only_a.status_code == 200 and only_a.json()["agency_code"] == agency_a
    )  # one owner: no need to name it
    await create_dossier(svc.client, auth(key_b), proc, agency_b, APPLICANT_B, code=code)
    r = await svc.client.get(f"/v1/dossiers/{code}", headers=auth(admin))
    assert r.status_code == 409 and r.json()["error"]["code"] == "ambiguous_code", r.text
    assert r.json()["error"]["details"][0]["field"] == "agency"
    r = await svc.client.post(
        f"/v1/dossiers/{code}/transitions",
        params={"agency": agency_b},
        json={"action": "start_processing"},
        headers=auth(admin),
    )
    assert r.status_code == 200 and r.json()["agency_code"] == agency_b, r.text
    for agency, status in ((agency_a, 2), (agency_b, 4)):
        r = await svc.client.get(f"/v1/dossiers/{code}", params={"agency": agency}, headers=auth(admin))
        assert (r.json()["agency_code"], r.json()["status"]) == (agency, status)
    # The admin's list pages through both (paged by code, then agency).
    seen, after, after_agency = [], None, None
    while True:
        params = {"limit": 1, **({"after": after, "after_agency": after_agency} if after else {})}
        page = (await svc.client.get("/v1/dossiers", params=params, headers=auth(admin))).json()
        seen += [(d["code"], d["agency_code"]) for d in page["items"] if d["code"] == code]
        after, after_agency = page["next_after"], page["next_after_agency"]
        if after is None or after > code:
            break
    assert seen == [(code, agency_a), (code, agency_b)]
    # Decision 766: each agency (whose only dossier is this code) has its own scorecard.
    month = datetime.now(timezone(timedelta(hours=7))).strftime("%Y-%m")
    for key, agency in ((key_a, agency_a), (key_b, agency_b)):
        r = await svc.client.get("/v1/index766", params={"period": month}, headers=auth(key))
        assert r.status_code == 200, r.text
        cards = {(c["scope_level"], c["scope_code"]): c for c in r.json()["items"]}
        assert ("agency", agency) in cards, sorted(cards)


async def test_overdue_notices_stay_per_dossier(farm, issue, platform_pool):
    from services.dossier import watcher

    svc, _, proc, agency_a, agency_b, key_a, key_b = await _agencies(farm, issue)
    code = f"HS-SEC-{uid()}"
    long_ago = (datetime.now(UTC) - timedelta(days=40)).isoformat()
    for key, agency, person in ((key_a, agency_a, APPLICANT_A), (key_b, agency_b, APPLICANT_B)):
        r = await svc.client.post(
            "/v1/dossiers",
            json={
                "code": code,
                "procedure_code": proc,
                "agency_code": agency,
                "channel": "online",
                "applicant": person,
                "at": long_ago,
            },
            headers=auth(key),
        )
        assert r.status_code == 201, r.text
    service = svc.app.state.dossier_service
    await watcher.scan_once(service, 3)
    await watcher.scan_once(service, 3)  # once per dossier and due date
    rows = await platform_pool.fetch(
        "SELECT key, headers FROM dossier.outbox WHERE key = ANY($1::bytea[])",
        [f"{agency_a}:{code}".encode(), f"{agency_b}:{code}".encode()],
    )
    missed = sorted(
        bytes(r["key"]).decode()
        for r in rows
        if ["ce_type", "ioc.dossier.deadline.missed.v1"] in [list(h) for h in r["headers"]]
    )
    assert missed == [f"{agency_a}:{code}", f"{agency_b}:{code}"]
