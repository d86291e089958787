"""Every SQL statement of the dossier service (asyncpg). The pool's search path starts with ``dossier``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any, TypeAlias

import asyncpg

from .domain import Agency, Dossier, Procedure

# a connection (inside a transaction) or the pool: every statement here runs on either
Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"

_DOSSIER_COLUMNS = (
    "code, procedure_code, agency_code, admin_unit, district, channel, status, step, submitted_at, "
    "last_change_at, received_at, due_date, paused_at, promised_date, resolved_at, closed_at, fees_paid_online, "
    "digitised, result_esigned, rating, complained, portal_syncs, portal_late_syncs"
)


# Reference data --------------------------------------------------------------------------------------------


async def upsert_procedures(conn: Conn, procedures: Sequence[Procedure]) -> None:
    await conn.executemany(
        "INSERT INTO procedures(code, name, online_level, service_level, processing_days, has_fees, pauses_clock) "
        "VALUES ($1,$2,$3,$4,$5,$6,$7) ON CONFLICT (code) DO UPDATE SET name=$2, online_level=$3, "
        "service_level=$4, processing_days=$5, has_fees=$6, pauses_clock=$7, updated_at=now()",
        [
            (p.code, p.name, p.online_level, p.service_level, p.processing_days, p.has_fees, p.pauses_clock)
            for p in procedures
        ],
    )


async def load_procedures(conn: Conn) -> dict[str, Procedure]:
    rows = await conn.fetch(
        "SELECT code, name, online_level, service_level, processing_days, has_fees, "
        "pauses_clock FROM procedures"
    )
    return {
        r["code"]: Procedure(
            r["code"],
            r["name"],
            r["online_level"],
            r["processing_days"],
            r["has_fees"],
            r["pauses_clock"],
            r["service_level"],
        )
        for r in rows
    }


async def upsert_agencies(conn: Conn, agencies: Sequence[Agency]) -> None:
    await conn.executemany(
        "INSERT INTO agencies(code, name, level, admin_unit, office_open, office_close) "
        "VALUES ($1,$2,$3,$4,$5,$6) ON CONFLICT (code) DO UPDATE SET name=$2, level=$3, admin_unit=$4, "
        "office_open=$5, office_close=$6, updated_at=now()",
        [(a.code, a.name, a.level, a.admin_unit, a.office_open, a.office_close) for a in agencies],
    )


async def load_agencies(conn: Conn) -> dict[str, Agency]:
    rows = await conn.fetch("SELECT code, name, level, admin_unit, office_open, office_close FROM agencies")
    return {
        r["code"]: Agency(
            r["code"], r["name"], r["level"], r["admin_unit"], r["office_open"], r["office_close"]
        )
        for r in rows
    }


# Dossiers --------------------------------------------------------------------------------------------------


def _dossier(r: Any) -> Dossier:
    return Dossier(
        code=r["code"],
        procedure_code=r["procedure_code"],
        agency_code=r["agency_code"],
        admin_unit=r["admin_unit"],
        district=r["district"],
        channel=r["channel"],
        status=r["status"],
        submitted_at=r["submitted_at"],
        last_change_at=r["last_change_at"],
        received_at=r["received_at"],
        due_date=r["due_date"],
        paused_at=r["paused_at"],
        promised_date=r["promised_date"],
        resolved_at=r["resolved_at"],
        closed_at=r["closed_at"],
        fees_paid_online=r["fees_paid_online"],
        step=r["step"],
        digitised=r["digitised"],
        result_esigned=r["result_esigned"],
        rating=r["rating"],
        complained=r["complained"],
        portal_syncs=r["portal_syncs"],
        portal_late_syncs=r["portal_late_syncs"],
    )


async def insert_dossier(conn: asyncpg.Connection, d: Dossier, applicant: dict[str, str]) -> bool:
    """Insert a new dossier; False when its agency uses the code already (codes are scoped per agency: another
    agency's dossier with the same code is no conflict and is never revealed)."""
    inserted = await conn.fetchval(
        f"INSERT INTO dossiers({_DOSSIER_COLUMNS}, applicant_name, applicant_id_number, applicant_address, "
        "applicant_phone) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17,$18,$19,$20,$21,"
        "$22,$23,$24,$25,$26,$27) "
        "ON CONFLICT (agency_code, code) DO NOTHING RETURNING 1",
        d.code,
        d.procedure_code,
        d.agency_code,
        d.admin_unit,
        d.district,
        d.channel,
        d.status,
        d.step,
        d.submitted_at,
        d.last_change_at,
        d.received_at,
        d.due_date,
        d.paused_at,
        d.promised_date,
        d.resolved_at,
        d.closed_at,
        d.fees_paid_online,
        d.digitised,
        d.result_esigned,
        d.rating,
        d.complained,
        d.portal_syncs,
        d.portal_late_syncs,
        applicant["name"],
        applicant["id_number"],
        applicant["address"],
        applicant["phone"],
    )
    return bool(inserted)


async def agencies_using(conn: Conn, code: str) -> list[str]:
    """The agencies that have a dossier with this code (for principals that see every agency)."""
    rows = await conn.fetch("SELECT agency_code FROM dossiers WHERE code=$1 ORDER BY agency_code", code)
    return [r["agency_code"] for r in rows]


async def lock_dossier(conn: asyncpg.Connection, agency: str, code: str) -> Dossier | None:
    """The dossier, row-locked until the end of the transaction (changes to one dossier are serialised)."""
    r = await conn.fetchrow(
        f"SELECT {_DOSSIER_COLUMNS} FROM dossiers WHERE agency_code=$1 AND code=$2 FOR UPDATE", agency, code
    )
    return _dossier(r) if r is not None else None


async def update_dossier(conn: asyncpg.Connection, d: Dossier) -> None:
    await conn.execute(
        "UPDATE dossiers SET status=$2, step=$3, last_change_at=$4, received_at=$5, due_date=$6, paused_at=$7, "
        "promised_date=$8, resolved_at=$9, closed_at=$10, fees_paid_online=$11, digitised=$12, result_esigned=$13, "
        "rating=$14, complained=$15, portal_syncs=$16, portal_late_syncs=$17 WHERE code=$1 AND agency_code=$18",
        d.code,
        d.status,
        d.step,
        d.last_change_at,
        d.received_at,
        d.due_date,
        d.paused_at,
        d.promised_date,
        d.resolved_at,
        d.closed_at,
        d.fees_paid_online,
        d.digitised,
        d.result_esigned,
        d.rating,
        d.complained,
        d.portal_syncs,
        d.portal_late_syncs,
        d.agency_code,
    )


async def insert_history(
    conn: asyncpg.Connection,
    agency: str,
    code: str,
    *,
    at,
    action: str,
    from_status: int | None,
    to_status: int,
    principal: str,
    detail: dict | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO dossier_history(agency_code, dossier_code, at, action, from_status, to_status, principal, "
        "detail) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)",
        agency,
        code,
        at,
        action,
        from_status,
        to_status,
        principal,
        detail or {},
    )


async def get_dossier(conn: Conn, agency: str, code: str) -> tuple[Dossier, dict[str, str]] | None:
    """A dossier with its applicant (for the owning agency's eyes only)."""
    r = await conn.fetchrow(
        f"SELECT {_DOSSIER_COLUMNS}, applicant_name, applicant_id_number, applicant_address, applicant_phone "
        "FROM dossiers WHERE agency_code=$1 AND code=$2",
        agency,
        code,
    )
    if r is None:
        return None
    applicant = {
        "name": r["applicant_name"],
        "id_number": r["applicant_id_number"],
        "address": r["applicant_address"],
        "phone": r["applicant_phone"],
    }
    return _dossier(r), applicant


async def history(conn: Conn, agency: str, code: str) -> list[dict]:
    rows = await conn.fetch(
        "SELECT at, action, from_status, to_status, principal, detail FROM dossier_history "
        "WHERE agency_code=$1 AND dossier_code=$2 ORDER BY id",
        agency,
        code,
    )
    return [dict(r) for r in rows]


async def list_dossiers(
    conn: Conn,
    *,
    agency: str | None,
    status: int | None,
    limit: int,
    after: str | None,
    after_agency: str | None = None,
) -> list[Dossier]:
    """Paged by (code, agency): the same code may belong to several agencies. ``after`` alone (clients from
    before codes were scoped per agency) resumes after every dossier with that code."""
    rows = await conn.fetch(
        f"SELECT {_DOSSIER_COLUMNS} FROM dossiers WHERE ($1::text IS NULL OR agency_code=$1) "
        "AND ($2::int IS NULL OR status=$2) AND ($3::text IS NULL "
        "     OR ($5::text IS NULL AND code > $3) OR (code, agency_code) > ($3, $5::text)) "
        "ORDER BY code, agency_code LIMIT $4",
        agency,
        status,
        after,
        limit,
        after_agency,
    )
    return [_dossier(r) for r in rows]


# Deadline watcher ------------------------------------------------------------------------------------------


async def lock_open_due_by(
    conn: asyncpg.Connection, last_due: date, today: date, limit: int
) -> list[tuple[Dossier, date | None, date | None]]:
    """Open dossiers (clock running) needing a notice: not yet warned for their due date and due by
    ``last_due``, or past due (before ``today``) and not yet reported overdue. With their notice marks."""
    rows = await conn.fetch(
        f"SELECT {_DOSSIER_COLUMNS}, warned_due_date, overdue_due_date FROM dossiers "
        "WHERE status IN (2,4,5,6) AND paused_at IS NULL AND due_date <= $1 "
        "AND (warned_due_date IS DISTINCT FROM due_date "
        "     OR (due_date < $2 AND overdue_due_date IS DISTINCT FROM due_date)) "
        "ORDER BY due_date, code, agency_code LIMIT $3 FOR UPDATE SKIP LOCKED",
        last_due,
        today,
        limit,
    )
    return [(_dossier(r), r["warned_due_date"], r["overdue_due_date"]) for r in rows]


async def mark_warned(conn: asyncpg.Connection, items: Sequence[tuple[str, str, date]]) -> None:
    """``items``: (agency, code, due date)."""
    await conn.executemany("UPDATE dossiers SET warned_due_date=$3 WHERE agency_code=$1 AND code=$2", items)


async def mark_overdue(conn: asyncpg.Connection, items: Sequence[tuple[str, str, date]]) -> None:
    # An overdue dossier has been warned about too: never warn after the overdue notice.
    await conn.executemany(
        "UPDATE dossiers SET overdue_due_date=$3, warned_due_date=$3 WHERE agency_code=$1 AND code=$2", items
    )


# Calendar changes ------------------------------------------------------------------------------------------


async def applied_calendar(conn: Conn) -> tuple[set[date], set[date]] | None:
    """The days off and worked weekend days the open dossiers' due dates were computed with (None: never)."""
    r = await conn.fetchrow("SELECT days_off, worked FROM calendar_applied WHERE id=1")
    return (set(r["days_off"]), set(r["worked"])) if r is not None else None


async def store_applied_calendar(conn: asyncpg.Connection, days_off: set[date], worked: set[date]) -> None:
    await conn.execute(
        "INSERT INTO calendar_applied(id, days_off, worked) VALUES (1,$1,$2) "
        "ON CONFLICT (id) DO UPDATE SET days_off=$1, worked=$2, applied_at=now()",
        sorted(days_off),
        sorted(worked),
    )


async def lock_open_due_from(conn: asyncpg.Connection, first: date) -> list[Dossier]:
    """Open dossiers due on or after ``first``, row-locked (a calendar change may move their due dates)."""
    rows = await conn.fetch(
        f"SELECT {_DOSSIER_COLUMNS} FROM dossiers WHERE status IN (2,4,5,6) AND due_date >= $1 "
        "ORDER BY code, agency_code FOR UPDATE",
        first,
    )
    return [_dossier(r) for r in rows]


# Decision 766 ----------------------------------------------------------------------------------------------


async def dossiers_for_period(conn: Conn, start: date, end: date) -> list[Dossier]:
    """Dossiers a 766 period can count: received by its end and not finished or closed before its start."""
    rows = await conn.fetch(
        f"SELECT {_DOSSIER_COLUMNS} FROM dossiers WHERE received_at IS NOT NULL "
        "AND ((received_at AT TIME ZONE 'UTC') + interval '7 hours')::date <= $2 "
        "AND (closed_at IS NULL OR ((closed_at AT TIME ZONE 'UTC') + interval '7 hours')::date >= $1) "
        "AND (resolved_at IS NULL OR ((resolved_at AT TIME ZONE 'UTC') + interval '7 hours')::date >= $1)",
        start,
        end,
    )
    return [_dossier(r) for r in rows]


async def upsert_index_inputs(conn: asyncpg.Connection, rows: Sequence[tuple]) -> None:
    await conn.executemany(
        "INSERT INTO index766_inputs(scope_level, scope_code, period, indicator, numerator, denominator, source, "
        "principal) VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT (scope_level, scope_code, period, indicator) "
        "DO UPDATE SET numerator=$5, denominator=$6, source=$7, principal=$8, updated_at=now()",
        rows,
    )


async def index_inputs(conn: Conn, period: str) -> dict[tuple[str, str], dict[str, tuple[float, float]]]:
    rows = await conn.fetch(
        "SELECT scope_level, scope_code, indicator, numerator, denominator FROM index766_inputs WHERE period=$1",
        period,
    )
    out: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for r in rows:
        out.setdefault((r["scope_level"], r["scope_code"]), {})[r["indicator"]] = (
            r["numerator"],
            r["denominator"],
        )
    return out
