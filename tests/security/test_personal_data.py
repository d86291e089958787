"""No personal data of a dossier applicant leaves the dossier tables: not in events (values, keys, headers), logs,
metrics, dead letters, the audit trail, or error answers.

The dossier service is driven with distinctive synthetic personal data (including a refused request that
carries it), then every one of those places is searched for each piece of it.
"""

from __future__ import annotations

import logging
import uuid

import pytest

from shared.contracts.common import DEAD_LETTER_TOPIC
from shared.contracts.platform import AUDIT_TOPIC
from shared.logging import JsonFormatter
from shared.testing import auth, read_topic
from tests.security.conftest import present_service_names

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif("dossier" not in present_service_names(), reason="dossier service absent"),
]


def synthetic_applicant() -> dict[str, str]:
    tag = uuid.uuid4().hex[:6].upper()
    digits = str(uuid.uuid4().int)[:6]
    return {
        "name": f"Quách Thị Zyxwiq {tag}",
        "id_number": f"907{digits}123",
        "address": f"Ngõ 99 phố Kỳlạ {tag}, phường Qwzx",
        "phone": f"+84 97{digits}",
    }


def needles(applicant: dict[str, str]) -> dict[str, bytes]:
    """Every form in which a piece of personal data could show up (raw, and phone digits without spaces)."""
    out = {k: v.encode() for k, v in applicant.items()}
    out["phone_digits"] = applicant["phone"].replace(" ", "").lstrip("+").encode()
    out["name_escaped"] = applicant["name"].encode("ascii", "backslashreplace").replace(b"\\x", b"\\u00")
    return out


def leaks(blob: bytes, found_in: str, pii: dict[str, bytes]) -> list[str]:
    return [f"{what} in {found_in}" for what, value in pii.items() if value in blob]


class CaptureEverything(logging.Handler):
    """Every log record of the process, formatted as the services format them (with extra fields)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.formatter_ = JsonFormatter("any")

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.formatter_.format(record))


async def test_applicant_data_never_leaves_the_dossier_tables(farm, issue, kafka_settings, key_pool):
    from tests.security.dossier_data import create_dossier, seed_reference

    svc = await farm.get("dossier")
    capture = CaptureEverything()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        _, admin = await issue(["dossier:admin"], kind="admin")
        proc, agency, _ = await seed_reference(svc.client, auth(admin))
        _, key = await issue(["dossier:read", "dossier:write"], kind="agency", attributes={"agency": agency})
        person = synthetic_applicant()
        pii = needles(person)
        code = await create_dossier(svc.client, auth(key), proc, agency, applicant=person)
        answers: list[bytes] = []
        for action in ("start_processing", "request_fees"):
            r = await svc.client.post(
                f"/v1/dossiers/{code}/transitions", json={"action": action}, headers=auth(key)
            )
            assert r.status_code == 200, r.text
            answers.append(r.content)
        # Refused requests carrying the data: a duplicate code and a malformed applicant.
        dup = await svc.client.post(
            "/v1/dossiers",
            headers=auth(key),
            json={
                "code": code,
                "procedure_code": proc,
                "agency_code": agency,
                "channel": "online",
                "applicant": person,
            },
        )
        assert dup.status_code == 409
        bad = await svc.client.post(
            "/v1/dossiers",
            headers=auth(key),
            json={
                "code": f"HS-SEC-{uuid.uuid4().hex[:8]}",
                "procedure_code": proc,
                "agency_code": agency,
                "channel": "online",
                "applicant": {**person, "phone": person["name"], "id_number": person["address"]},
            },
        )
        assert bad.status_code == 422
        answers += [dup.content, bad.content]
        listed = await svc.client.get("/v1/dossiers", headers=auth(key))
        answers.append(listed.content)
        # The owning agency does see its applicant (the control that the data was really stored).
        own = await svc.client.get(f"/v1/dossiers/{code}", headers=auth(key))
        assert own.json()["applicant"]["name"] == person["name"]
        assert len(leaks(own.content, "the owner's view", pii)) >= 4  # and the search does find it

        # The outbox relay publishes shortly after the commit: wait for ours, then read the whole topic.
        ours = await read_topic(
            kafka_settings, "ioc.dossier.lifecycle", where=lambda e: e.data["dossier_code"] == code, expect=3
        )
        lifecycle = await read_topic(kafka_settings, "ioc.dossier.lifecycle", raw=True)
        metrics = (await svc.client.get("/metrics")).content
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)

    assert len(ours) == 3, "the dossier's events were not published (nothing to search)"
    found: list[str] = []
    for topic in ("ioc.dossier.lifecycle", DEAD_LETTER_TOPIC.name, AUDIT_TOPIC.name):
        records = (
            lifecycle
            if topic == "ioc.dossier.lifecycle"
            else await read_topic(kafka_settings, topic, raw=True)
        )
        for rec in records:
            blob = (
                (rec.key or b"")
                + (rec.value or b"")
                + b"".join(k.encode() + (v or b"") for k, v in rec.headers)
            )
            found += leaks(blob, f"{topic} record {rec.partition}/{rec.offset}", pii)
    found += leaks("\n".join(capture.lines).encode(), "logs", pii)
    found += leaks(metrics, "/metrics", pii)
    for i, body in enumerate(answers):
        found += leaks(body, f"answer {i}", pii)
    audit = await key_pool.fetch(
        "SELECT principal || action || target || detail::text AS row FROM platform.audit_log "
        "WHERE target = $1",
        code,
    )
    assert audit, "no audit rows to search"
    found += leaks("\n".join(r["row"] for r in audit).encode(), "audit_log", pii)
    assert found == []
    assert capture.lines, "no log line was captured (nothing searched)"
