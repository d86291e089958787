"""Input edges (finding 6 of issue #40): dates outside a sane range and lax booleans are refused with 422.

``to=0001-01-01T00:00:00Z`` answered 500 (``OverflowError``) on the traffic measures and city history endpoints;
a dossier dated year 0001 was accepted and raised an overdue alarm; ``received: "off"`` was read as false.
"""

from __future__ import annotations

import re

import pytest

from shared.ingest import SANE_MAX_YEAR, SANE_MIN_YEAR
from shared.testing import auth
from tests.security.conftest import present_service_names

pytestmark = pytest.mark.integration
SERVICES = present_service_names()
FAR = ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59Z", "1999-12-31T23:59:59Z"]


def date_query_parameters(app) -> list[tuple[str, str, str]]:
    """(path, parameter, format) of every GET query parameter documented as a date or date-time."""
    found = []
    for path, item in app.openapi()["paths"].items():
        op = item.get("get")
        for p in (op or {}).get("parameters", []):
            schemas = [p.get("schema", {}), *p.get("schema", {}).get("anyOf", [])]
            fmt = next((s.get("format") for s in schemas if s.get("format") in ("date", "date-time")), None)
            if p.get("in") == "query" and fmt:
                found.append((path, p["name"], fmt))
    return found


@pytest.mark.parametrize("service", SERVICES)
async def test_every_date_query_parameter_refuses_years_outside_the_sane_range(service, farm, issue):
    svc = await farm.get(service)
    _, admin = await issue(["*"], kind="admin", attributes={"role": "administrator"})
    params = date_query_parameters(svc.app)
    if service in ("city", "traffic"):
        assert params, "the history / measures endpoints document their date-time parameters"
    for path, name, fmt in params:
        concrete = re.sub(r"\{[^}]*\}", "sec1", path)
        for value in FAR:
            value = value[:10] if fmt == "date" else value
            r = await svc.client.get(concrete, params={name: value}, headers=auth(admin))
            assert r.status_code == 422, (path, name, value, r.status_code, r.text[:300])
            assert name in {d["field"] for d in r.json()["error"]["details"]}, r.text


def test_the_range_is_the_documented_one():
    assert (SANE_MIN_YEAR, SANE_MAX_YEAR) == (2000, 2100)


@pytest.mark.skipif("dossier" not in SERVICES, reason="dossier service absent")
async def test_dossiers_refuse_year_0001_and_lax_booleans(farm, issue):
    from tests.security.dossier_data import create_dossier, seed_reference

    svc = await farm.get("dossier")
    _, admin = await issue(["dossier:admin"], kind="admin")
    proc, agency, _ = await seed_reference(svc.client, auth(admin))
    _, key = await issue(["dossier:read", "dossier:write"], kind="agency", attributes={"agency": agency})
    body = {
        "code": "HS-SEC-EDGE",
        "procedure_code": proc,
        "agency_code": agency,
        "channel": "online",
        "applicant": {"name": "A", "id_number": "001199000002", "address": "Hà Nội", "phone": "0900000002"},
    }
    for bad, field in (
        ({"at": "0001-01-01T00:00:00Z"}, "at"),
        ({"at": "9999-01-01T00:00:00Z"}, "at"),
        ({"received": "off"}, "received"),
        ({"received": 0}, "received"),
        ({"received": "false"}, "received"),
    ):
        r = await svc.client.post("/v1/dossiers", json={**body, **bad}, headers=auth(key))
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["details"][0]["field"] == field
    code = await create_dossier(svc.client, auth(key), proc, agency)
    for path, payload, field in (
        ("transitions", {"action": "start_processing", "at": "0001-01-01T00:00:00Z"}, "at"),
        ("transitions", {"action": "pay_fees", "paid_online": "yes"}, "paid_online"),
        ("handovers", {"step_name": "x", "at": "0001-01-01T00:00:00Z"}, "at"),
        ("apologies", {"new_due_date": "0001-01-01"}, "new_due_date"),
    ):
        r = await svc.client.post(f"/v1/dossiers/{code}/{path}", json=payload, headers=auth(key))
        assert r.status_code == 422, (path, payload, r.text)
        assert r.json()["error"]["details"][0]["field"] == field
