"""Item-level hostile input on the other services' write endpoints: strict types (no ``false`` as a number),
unknown fields, far-off times, control and bidi characters, over-long text. Each bad item is sent alone and
must be refused (nothing accepted) with the offending field named, never with a 5xx.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.testing import auth
from tests.areas import area, unit
from tests.security.conftest import endpoints, present_service_names

pytestmark = pytest.mark.integration

SERVICES = present_service_names()
FAR_FUTURE = "9999-12-31T23:59:59+00:00"
FAR_PAST = "1970-01-01T00:00:00+00:00"


def now_iso(minutes: float = -30) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).replace(second=0, microsecond=0).isoformat()


def uid() -> str:
    return f"SEC-{uuid.uuid4().hex[:8]}"


def reading(**kw) -> dict:
    return {
        "meter_id": uid(),
        "obis": "1-0:1.8.0",
        "interval_end": now_iso().replace("+00:00", "Z"),
        "value": 12.5,
        "unit": "kWh",
        "quality": "measured",
        **kw,
    }


def meter_entry(**kw) -> dict:
    return {
        "meter_id": uid(),
        "customers": 1,
        "district": area("HK"),
        "commune": unit("HK-01"),
        "feeder": "F-1",
        "transformer": "T-1",
        "installed_on": "2020-01-01",
        "interval_seconds": 900,
        **kw,
    }


def hires(**kw) -> dict:
    return {"timestamp": now_iso(), "controller_id": uid(), "event_code": 82, "parameter": 3, **kw}


def intersection(**kw) -> dict:
    return {
        "intersection_id": uid(),
        "name": "Ngã tư Láng Hạ",
        "district": area("DD"),
        "lat": 21.01,
        "lon": 105.81,
        "controller_id": uid(),
        "phases": [2, 4],
        "detectors": [],
        **kw,
    }


def procedure(**kw) -> dict:
    return {
        "code": uid(),
        "name": "Cấp giấy phép",
        "online_level": "fully_online",
        "service_level": 4,
        "processing_days": 5,
        "has_fees": True,
        "pauses_clock": True,
        **kw,
    }


def agency(**kw) -> dict:
    return {"code": uid(), "name": "UBND phường", "level": "commune", "admin_unit": unit("BD-01"), **kw}


# (service, method, path, field, body[, known defect]) — the body holds one bad item.
PROBES = [
    ("meter", "POST", "/v1/readings", "value", {"items": [reading(value=False)]}),
    ("meter", "POST", "/v1/readings", "value", {"items": [reading(value="12.5")]}),
    ("meter", "POST", "/v1/readings", "interval_end", {"items": [reading(interval_end=FAR_FUTURE)]}),
    ("meter", "POST", "/v1/readings", "interval_end", {"items": [reading(interval_end=FAR_PAST)]}),
    ("meter", "POST", "/v1/readings", "meter_id", {"items": [reading(meter_id="M\x00-1")]}),
    ("meter", "POST", "/v1/readings", "meter_id", {"items": [reading(meter_id="\u202eM-1")]}),
    ("meter", "POST", "/v1/readings", "surprise", {"items": [reading(surprise=1)]}),
    ("meter", "POST", "/v1/readings", "unit", {"items": [reading(unit="k" * 100_000)]}),
    ("meter", "POST", "/v1/meters", "customers", {"items": [meter_entry(customers=False)]}),
    ("meter", "POST", "/v1/meters", "customers", {"items": [meter_entry(customers=2**70)]}),
    ("meter", "POST", "/v1/meters", "feeder", {"items": [meter_entry(feeder="F\x00-1")]}),
    ("meter", "POST", "/v1/meters", "feeder", {"items": [meter_entry(feeder="F-1\u202e")]}),
    ("traffic", "POST", "/v1/events", "event_code", {"items": [hires(event_code=False)]}),
    ("traffic", "POST", "/v1/events", "parameter", {"items": [hires(parameter="3")]}),
    ("traffic", "POST", "/v1/events", "timestamp", {"items": [hires(timestamp=FAR_FUTURE)]}),
    ("traffic", "POST", "/v1/events", "timestamp", {"items": [hires(timestamp=FAR_PAST)]}),
    ("traffic", "POST", "/v1/events", "controller_id", {"items": [hires(controller_id="C\x00")]}),
    ("traffic", "POST", "/v1/events", "surprise", {"items": [hires(surprise=1)]}),
    ("traffic", "POST", "/v1/intersections", "lat", {"items": [intersection(lat=False)]}),
    ("traffic", "POST", "/v1/intersections", "name", {"items": [intersection(name="Ngã tư\x00")]}),
    ("traffic", "POST", "/v1/intersections", "name", {"items": [intersection(name="Ngã \u202etư")]}),
    ("traffic", "POST", "/v1/intersections", "name", {"items": [intersection(name="N" * 10_000)]}),
    ("dossier", "PUT", "/v1/procedures", "processing_days", {"items": [procedure(processing_days=False)]}),
    ("dossier", "PUT", "/v1/procedures", "has_fees", {"items": [procedure(has_fees=1)]}),
    ("dossier", "PUT", "/v1/procedures", "pauses_clock", {"items": [procedure(pauses_clock="yes")]}),
    ("dossier", "PUT", "/v1/procedures", "name", {"items": [procedure(name="Thủ tục\x00")]}),
    ("dossier", "PUT", "/v1/procedures", "name", {"items": [procedure(name="Thủ \u202etục")]}),
    ("dossier", "PUT", "/v1/agencies", "name", {"items": [agency(name="UBND\x00")]}),
    ("dossier", "PUT", "/v1/procedures", "surprise", {"items": [procedure(surprise=1)]}),
]


def probe_params():
    for service, method, path, field, body, *defect in PROBES:
        marks = [pytest.mark.skipif(service not in SERVICES, reason=f"{service} absent")]
        if defect:
            # A defect of a service owned by another engineer (reported; the lead fixes it).
            marks.append(pytest.mark.xfail(strict=True, reason=defect[0]))
        yield pytest.param(service, method, path, field, body, marks=marks, id=f"{service}{path}:{field}")


async def register_entities(client, headers: dict[str, str], path: str, body: dict) -> None:
    """Register the meter / controller a reading or controller event names, so only the bad field is wrong."""
    item = body["items"][0]
    if path == "/v1/readings" and str(item.get("meter_id", "")).startswith("SEC-"):
        r = await client.post(
            "/v1/meters", json={"items": [meter_entry(meter_id=item["meter_id"])]}, headers=headers
        )
    elif path == "/v1/events" and str(item.get("controller_id", "")).startswith("SEC-"):
        r = await client.post(
            "/v1/intersections",
            json={"items": [intersection(controller_id=item["controller_id"])]},
            headers=headers,
        )
    else:
        return
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


def named_fields(answer: dict) -> list[str]:
    details = answer.get("rejected") or answer.get("error", {}).get("details", [])
    out = []
    for d in details:
        if d.get("field"):
            out.append(str(d["field"]))
        out += [str(p) for p in d.get("loc", []) if isinstance(p, str)]
    return out


@pytest.mark.parametrize(("service", "method", "path", "field", "body"), list(probe_params()))
async def test_bad_item_is_refused_with_its_field_named(service, method, path, field, body, farm, issue):
    svc = await farm.get(service)
    scopes = sorted({e.scope for e in endpoints(svc.app) if e.scope})
    _, key = await issue(scopes, kind="admin")
    await register_entities(svc.client, auth(key), path, body)
    r = await svc.client.request(method, path, json=body, headers=auth(key))
    assert r.status_code < 500, r.text
    answer = r.json()
    assert r.status_code >= 400 or answer.get("accepted") == 0, f"accepted: {r.text}"
    assert any(f == field or f.endswith("." + field) for f in named_fields(answer)), r.text
