"""Reference data and dossiers for the security tests (through the dossier API, as an agency would)."""

from __future__ import annotations

import uuid

from tests.areas import BA_DINH_UNIT, HOAN_KIEM_UNIT


def uid() -> str:
    return uuid.uuid4().hex[:10].upper()


async def seed_reference(client, admin_headers: dict[str, str]) -> tuple[str, str, str]:
    """A fresh procedure and two agencies; returns (procedure, agency A, agency B)."""
    s = uid()
    proc, agency_a, agency_b = f"PSEC{s}", f"AGA{s}", f"AGB{s}"
    r = await client.put(
        "/v1/procedures",
        headers=admin_headers,
        json={
            "items": [
                {
                    "code": proc,
                    "name": "Cấp giấy phép xây dựng",
                    "online_level": "fully_online",
                    "service_level": 4,
                    "processing_days": 5,
                    "has_fees": True,
                    "pauses_clock": True,
                }
            ]
        },
    )
    assert r.status_code == 200, r.text
    r = await client.put(
        "/v1/agencies",
        headers=admin_headers,
        json={
            "items": [
                {"code": agency_a, "name": "UBND phường A", "level": "commune", "admin_unit": BA_DINH_UNIT},
                {"code": agency_b, "name": "UBND phường B", "level": "commune", "admin_unit": HOAN_KIEM_UNIT},
            ]
        },
    )
    assert r.status_code == 200, r.text
    return proc, agency_a, agency_b


async def create_dossier(
    client,
    headers: dict[str, str],
    proc: str,
    agency: str,
    applicant: dict | None = None,
    code: str | None = None,
) -> str:
    """Receive a new dossier for ``agency``; returns its code."""
    code = code or f"HS-SEC-{uid()}"
    r = await client.post(
        "/v1/dossiers",
        headers=headers,
        json={
            "code": code,
            "procedure_code": proc,
            "agency_code": agency,
            "channel": "online",
            "applicant": applicant
            or {
                "name": "Trần Thị B",
                "id_number": "001199000002",
                "address": "Hà Nội",
                "phone": "0900000002",
            },
        },
    )
    assert r.status_code == 201, r.text
    return code
