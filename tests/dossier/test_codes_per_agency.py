"""Dossier codes scoped per agency (issue #40, SG12): the KPI processor keeps two agencies' dossiers with the same
code apart, old events without ``dossier_id`` still name their dossier, and migration 004 re-keys stored data."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from services.dossier.processors import DossierKpiProcessor
from shared.contracts.dossier import DossierOverdue, DossierStatusChanged
from shared.db import apply_migrations
from shared.stream import run_in_memory
from shared.testing import received
from tests.dossier.test_processors import DAY_10, MONTH, NOW, kpis, t

A = {"agency_code": "UBND-BD-01", "admin_unit": "BD-01", "district": "BD"}
B = {"agency_code": "UBND-BD-02", "admin_unit": "BD-02", "district": "BD"}


def facts(agency: dict, code: str, status: int, at: str) -> dict:
    return {
        **agency,
        "dossier_id": f"{agency['agency_code']}:{code}",
        "dossier_code": code,
        "procedure_code": "P",
        "channel": "online",
        "online_level": "partly_online",
        "has_fees": False,
        "status": status,
        "received_at": t("2025-03-03T09:00"),
        "due_date": "2025-03-05",
        "at": t(at),
    }


def status(agency: dict, code: str, st: int, at: str, prev: int | None, action: str):
    payload = {**facts(agency, code, st, at), "previous_status": prev, "status_name": "x", "action": action}
    return received(DossierStatusChanged, payload)


def test_two_agencies_same_code_are_two_dossiers_in_the_kpis_and_alarms():
    # Both agencies receive "X" on Mon 3 Mar, due Wed 5 Mar; both get an overdue notice on Thu 6 Mar; only A
    # resolves its X (Fri 7 Mar). On Mon 10 Mar: 2 received in March; B's X is open and past due → overdue_open
    # = 1 for the city and for B, 0 for A; alarms: A raised, B raised, A cleared (B's stays raised).
    # The processor before issue #40 kept both under "o|X": B's receive replaced A's open entry, B's overdue
    # notice raised nothing (X already alarmed), and A's resolve closed B's dossier → overdue_open 0.
    events = [
        status(A, "X", 2, "2025-03-03T09:00", None, "receive"),
        status(B, "X", 2, "2025-03-03T09:00", None, "receive"),
        received(DossierOverdue, {**facts(A, "X", 2, "2025-03-06T00:05"), "days_overdue": 1}),
        received(DossierOverdue, {**facts(B, "X", 2, "2025-03-06T00:05"), "days_overdue": 1}),
        status(A, "X", 9, "2025-03-07T09:00", 2, "resolve"),
    ]
    _, out = run_in_memory(DossierKpiProcessor(), events, NOW)
    k = kpis(out)
    assert k[("dossier.received", "city", "HN", MONTH)]["num"] == 2
    assert k[("dossier.overdue_open", "city", "HN", DAY_10)]["num"] == 1
    assert k[("dossier.overdue_open", "agency", "UBND-BD-02", DAY_10)]["num"] == 1
    assert k[("dossier.overdue_open", "agency", "UBND-BD-01", DAY_10)]["num"] == 0
    alarms = [orjson.loads(e.value) for e in out if e.topic == "ioc.dossier.alarms"]
    assert [(a["state"], a["alarm_id"]) for a in alarms] == [
        ("raised", "dossier:overdue:UBND-BD-01:X"),
        ("raised", "dossier:overdue:UBND-BD-02:X"),
        ("cleared", "dossier:overdue:UBND-BD-01:X"),
    ]


def test_an_event_written_before_dossier_id_names_the_same_dossier():
    # An old event (no dossier_id; the v1 field is optional) receives X; a new one resolves it: one dossier,
    # so nothing stays open (overdue_open 0 for the agency on 10 Mar).
    old = status(A, "X", 2, "2025-03-03T09:00", None, "receive")
    old = replace(old, data={k: v for k, v in old.data.items() if k != "dossier_id"})
    DossierStatusChanged.model_validate(old.data)  # still a valid v1 payload
    _, out = run_in_memory(
        DossierKpiProcessor(), [old, status(A, "X", 9, "2025-03-07T09:00", 2, "resolve")], NOW
    )
    k = kpis(out)
    assert k[("dossier.overdue_open", "agency", "UBND-BD-01", DAY_10)]["num"] == 0
    assert k[("dossier.open_within_deadline", "agency", "UBND-BD-01", DAY_10)]["num"] == 0


@pytest.mark.integration
async def test_migration_004_keys_dossiers_and_history_by_agency_and_code(platform_pool, tmp_path):
    migrations = Path(__file__).parents[2] / "services" / "dossier" / "migrations"
    schema = f"dossier_mig_{uuid.uuid4().hex[:8]}"
    before = tmp_path / "before"
    before.mkdir()
    for f in sorted(migrations.glob("00[123]_*.sql")):
        (before / f.name).write_text(f.read_text())
    await apply_migrations(platform_pool, schema, before)
    now = datetime.now(UTC)
    async with platform_pool.acquire() as conn:
        await conn.execute(f'SET search_path = "{schema}"')
        await conn.execute(
            "INSERT INTO procedures(code, name, online_level, processing_days, has_fees, pauses_clock) "
            "VALUES ('P', 'p', 'offline', 5, false, false)"
        )
        await conn.execute(
            "INSERT INTO agencies(code, name, level, admin_unit) VALUES ('AG-A', 'a', 'commune', 'BD-01'), "
            "('AG-B', 'b', 'commune', 'BD-02')"
        )
        await conn.execute(
            "INSERT INTO dossiers(code, procedure_code, agency_code, admin_unit, channel, status, submitted_at, "
            "last_change_at, applicant_name, applicant_id_number, applicant_address, applicant_phone) "
            "VALUES ('X', 'P', 'AG-A', 'BD-01', 'online', 2, $1, $1, 'n', '001099000001', 'a', '0900000001')",
            now,
        )
        await conn.execute(
            "INSERT INTO dossier_history(dossier_code, at, action, to_status, principal) "
            "VALUES ('X', $1, 'receive', 2, 'p')",
            now,
        )
        await conn.execute("RESET search_path")
    assert await apply_migrations(platform_pool, schema, migrations) == ["004_codes_per_agency.sql"]
    async with platform_pool.acquire() as conn:
        await conn.execute(f'SET search_path = "{schema}"')
        # the existing history line now names its dossier's agency
        assert await conn.fetchval("SELECT agency_code FROM dossier_history WHERE dossier_code='X'") == "AG-A"
        # agency B may now use code X too, and history references (agency, code)
        await conn.execute(
            "INSERT INTO dossiers(code, procedure_code, agency_code, admin_unit, channel, status, submitted_at, "
            "last_change_at, applicant_name, applicant_id_number, applicant_address, applicant_phone) "
            "VALUES ('X', 'P', 'AG-B', 'BD-02', 'online', 2, $1, $1, 'n', '001099000002', 'b', '0900000002')",
            now,
        )
        await conn.execute(
            "INSERT INTO dossier_history(agency_code, dossier_code, at, action, to_status, principal) "
            "VALUES ('AG-B', 'X', $1, 'receive', 2, 'p')",
            now,
        )
        with pytest.raises(Exception, match="dossier_history_dossier_fkey"):
            await conn.execute(
                "INSERT INTO dossier_history(agency_code, dossier_code, at, action, to_status, principal) "
                "VALUES ('AG-C', 'X', $1, 'receive', 2, 'p')",
                now,
            )
        await conn.execute("RESET search_path")
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
