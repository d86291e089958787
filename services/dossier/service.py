"""The dossier service's use cases: reference data, the dossier lifecycle, Decision 766 scorecards.

Every change writes the dossier, its history line, its events (the transactional outbox, ``shared.outbox``) and
the audit record in one PostgreSQL transaction, with the dossier row locked, so a change is answered only once
committed and its events follow in order. Agencies see and change only their own dossiers (another agency's
dossier answers 404, as if it did not exist); dossier codes are scoped per agency. The procedures and agencies
are cached in memory and reloaded on a miss or when stale (another replica may have changed them).
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg

from shared.areas import Hierarchy, hanoi, load_district_csv, load_hierarchy
from shared.auth import ApiError, Principal, record_audit
from shared.contracts.cloudevents import EncodedEvent
from shared.contracts.dossier import CHANNEL_CODES
from shared.http import ServiceContext
from shared.metrics import EVENTS_ACCEPTED
from shared.outbox import Outbox

from . import publishing, repository
from .domain import (
    DEFAULT_OFFICE_CLOSE,
    Agency,
    Dossier,
    DossierRuleError,
    Procedure,
    WorkingCalendar,
    allowed_actions,
    apologize,
    calendar_from_csv,
    for_index766,
    hand_over,
    is_overdue,
    local_date,
    new_dossier,
    record_feedback,
    record_portal_sync,
    timeliness,
    transition,
)
from .index766 import INPUT_INDICATORS, period_bounds, scorecards
from .settings import DossierSettings

SERVICE = "dossier"

#: ``mutate(dossier, procedure)`` → (the dossier after the change, its events, audit/history detail)
Mutation = Callable[[Dossier, Procedure], tuple[Dossier, list[EncodedEvent], dict[str, Any]]]


def load_hierarchy_file(path: str) -> Hierarchy:
    """The administrative hierarchy: the Hanoi seed, a seed-format district CSV, or a generic
    ``code,name,level,parent_code`` CSV (two-tier or three-tier, as data)."""
    if not path:
        return hanoi()
    with open(path, encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    return load_hierarchy(Path(path)) if "parent_code" in header else load_district_csv(Path(path))


def dossier_view(d: Dossier, today: date) -> dict[str, Any]:
    """The public view of a dossier (no applicant data)."""
    return {
        "code": d.code,
        "procedure_code": d.procedure_code,
        "agency_code": d.agency_code,
        "admin_unit": d.admin_unit,
        "district": d.district,
        "channel": d.channel,
        "channel_code": CHANNEL_CODES[d.channel],
        "status": d.status,
        "status_name": d.status_name,
        "step": d.step,
        "submitted_at": d.submitted_at,
        "received_at": d.received_at,
        "due_date": d.due_date,
        "promised_date": d.promised_date,
        "clock_paused": d.paused_at is not None,
        "resolved_at": d.resolved_at,
        "closed_at": d.closed_at,
        "fees_paid_online": d.fees_paid_online,
        "digitised": d.digitised,
        "result_esigned": d.result_esigned,
        "rating": d.rating,
        "complained": d.complained,
        "allowed_actions": allowed_actions(d.status),
        "overdue": is_overdue(d, today),
        "timeliness": timeliness(d.resolved_at, d.due_date) if d.resolved_at and d.due_date else None,
    }


def own_agency(principal: Principal) -> str | None:
    """The agency an agency principal is confined to; ``None`` for principals that see every agency.

    A principal carrying an ``agency`` attribute is confined to it whatever its kind: a kind changed by
    mistake must never widen what it sees (only an admin holding ``*`` sees every agency)."""
    agency = principal.attributes.get("agency")
    if principal.kind != "agency" and agency is None:
        return None
    if "*" in principal.scopes and principal.kind == "admin":
        return None
    if not isinstance(agency, str) or not agency:
        raise ApiError(403, "forbidden", "this agency principal has no agency attribute")
    return agency


def not_found(code: str) -> ApiError:
    return ApiError(404, "not_found", f"no dossier {code!r} visible to this principal")


def _rule_error(exc: DossierRuleError) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, [exc.details] if exc.details else [])


def _today() -> date:
    return local_date(datetime.now(UTC))


@dataclass(frozen=True)
class NewDossier:
    """What an agency gives to submit or receive a dossier (the applicant is stored, never published)."""

    code: str
    procedure_code: str
    agency_code: str
    channel: str
    applicant: dict[str, Any]
    received: bool
    digitised: bool
    at: datetime


@dataclass(frozen=True)
class IndexInput:
    """A Decision 766 indicator whose data comes from another system, for one scope and period."""

    scope_level: str
    scope_code: str
    period: str
    indicator: str
    numerator: float
    denominator: float
    source: str


class DossierService:
    """What one dossier-service process holds (calendar, hierarchy, cached reference data, the outbox) and
    does."""

    def __init__(
        self,
        settings: DossierSettings,
        ctx: ServiceContext,
        *,
        calendar: WorkingCalendar | None = None,
        hierarchy: Hierarchy | None = None,
    ):
        assert ctx.pool is not None
        self.settings = settings
        self.pool: asyncpg.Pool = ctx.pool
        self.outbox = Outbox(
            ctx,
            batch_size=settings.outbox_batch_size,
            poll_seconds=settings.outbox_poll_seconds,
            max_backoff_seconds=settings.outbox_max_backoff_seconds,
            retention_seconds=settings.outbox_retention_seconds,
        )
        if calendar is None:
            calendar = (
                calendar_from_csv(Path(settings.calendar_csv))
                if settings.calendar_csv
                else calendar_from_csv()
            )
        self.calendar: WorkingCalendar = calendar
        self.hierarchy: Hierarchy = hierarchy or load_hierarchy_file(settings.hierarchy_csv)
        self.procedures: dict[str, Procedure] = {}
        self.agencies: dict[str, Agency] = {}
        self.loaded_at = 0.0
        #: the calendar alarm's last published state (in memory: republished after a restart, level-triggered)
        self.calendar_alarm: str | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start-up: the outbox table, the reference data."""
        await self.outbox.install()
        await self.refresh()

    # ---------------------------------------------------------------------------------- reference data cache
    async def refresh(self) -> None:
        async with self._lock:
            self.procedures = await repository.load_procedures(self.pool)
            self.agencies = await repository.load_agencies(self.pool)
            self.loaded_at = time.monotonic()

    async def refresh_if_stale(self, max_age_s: float = 60.0) -> None:
        """Reload the reference data when older than ``max_age_s`` (another replica may have changed office
        hours)."""
        if time.monotonic() - self.loaded_at > max_age_s:
            await self.refresh()

    async def procedure(self, code: str) -> Procedure | None:
        # Another replica may have added it: one reload on a miss, rate-limited.
        p = self.procedures.get(code)
        if p is None and time.monotonic() - self.loaded_at > 1.0:
            await self.refresh()
            p = self.procedures.get(code)
        return p

    async def agency(self, code: str) -> Agency | None:
        a = self.agencies.get(code)
        if a is None and time.monotonic() - self.loaded_at > 1.0:
            await self.refresh()
            a = self.agencies.get(code)
        return a

    def district_of(self, admin_unit: str) -> str | None:
        return self.hierarchy.district_of(admin_unit)

    # -------------------------------------------------------------------------------------- reference data
    async def put_procedures(self, principal: Principal, procs: Sequence[Procedure]) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await repository.upsert_procedures(conn, procs)
            await record_audit(
                conn,
                principal=principal.id,
                service=SERVICE,
                action="procedures.upsert",
                target="procedures",
                detail={"count": len(procs)},
            )
        await self.refresh()
        return len(procs)

    async def list_procedures(self) -> list[Procedure]:
        await self.refresh()
        return sorted(self.procedures.values(), key=lambda p: p.code)

    async def put_agencies(self, principal: Principal, agencies: Sequence[Agency]) -> int:
        errors = [
            {"item": i, "id": a.code, "field": "admin_unit", "reason": "unknown administrative unit"}
            for i, a in enumerate(agencies)
            if a.admin_unit not in self.hierarchy.areas
        ]
        if errors:
            raise ApiError(
                422,
                "unknown_entity",
                "some agencies name an administrative unit not in the hierarchy",
                errors,
            )
        errors = [
            {"item": i, "id": a.code, "field": "office_close", "reason": "must be after office_open"}
            for i, a in enumerate(agencies)
            if a.office_close <= a.office_open
        ]
        if errors:
            raise ApiError(422, "invalid_request", "office hours must close after they open", errors)
        async with self.pool.acquire() as conn, conn.transaction():
            await repository.upsert_agencies(conn, agencies)
            await record_audit(
                conn,
                principal=principal.id,
                service=SERVICE,
                action="agencies.upsert",
                target="agencies",
                detail={"count": len(agencies)},
            )
        await self.refresh()
        return len(agencies)

    async def list_agencies(self) -> list[dict[str, Any]]:
        await self.refresh()
        return [
            {
                **vars(a),
                "office_open": a.office_open.isoformat(timespec="minutes"),
                "office_close": a.office_close.isoformat(timespec="minutes"),
                "district": self.district_of(a.admin_unit),
            }
            for a in sorted(self.agencies.values(), key=lambda a: a.code)
        ]

    # ------------------------------------------------------------------------------------------ dossiers
    async def _dossier_agency(self, conn: Any, principal: Principal, code: str, agency: str | None) -> str:
        """The agency whose dossier ``code`` names. An agency principal only ever resolves within its own agency
        (one lookup by (agency, code), whether or not another agency uses the code: nothing tells it they do);
        naming another agency answers the same 404 as a code that never existed."""
        own = own_agency(principal)
        if own is not None:
            if agency not in (None, own):
                raise not_found(code)
            return own
        if agency is not None:
            return agency
        agencies = await repository.agencies_using(conn, code)
        if not agencies:
            raise not_found(code)
        if len(agencies) > 1:  # only principals that see every agency get here
            raise ApiError(
                409,
                "ambiguous_code",
                f"dossier code {code!r} is used by several agencies: name one with ?agency=",
                [{"field": "agency", "reason": "required: one of " + ", ".join(agencies)}],
            )
        return agencies[0]

    async def _commit(
        self,
        principal: Principal,
        conn: asyncpg.Connection,
        before: Dossier | None,
        after: Dossier,
        action: str,
        events: list[EncodedEvent],
        detail: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> None:
        """Write the new state, its history line, its events (outbox) and the audit record (same transaction).
        ``at``: when it happened, if not the dossier's last lifecycle change (feedback, portal synchronisation)."""
        if before is not None:  # a new dossier was inserted by the caller
            await repository.update_dossier(conn, after)
        await repository.insert_history(
            conn,
            after.agency_code,
            after.code,
            at=at or after.last_change_at,
            action=action,
            from_status=before.status if before else None,
            to_status=after.status,
            principal=principal.id,
            detail=detail,
        )
        await self.outbox.add(conn, events)
        await record_audit(
            conn,
            principal=principal.id,
            service=SERVICE,
            action=f"dossier.{action}",
            target=after.code,
            # codes are scoped per agency: the agency makes the target unambiguous
            detail={
                "agency": after.agency_code,
                "from": before.status if before else None,
                "to": after.status,
                **(detail or {}),
            },
        )

    async def create_dossier(self, principal: Principal, new: NewDossier) -> dict[str, Any]:
        """Submit (status 1) or receive (status 2) a new dossier; its view."""
        own = own_agency(principal)
        if own is not None and new.agency_code != own:
            raise ApiError(
                403,
                "forbidden",
                "an agency can only record dossiers for itself",
                [{"field": "agency_code", "reason": "not this principal's agency"}],
            )
        procedure = await self.procedure(new.procedure_code)
        agency = await self.agency(new.agency_code)
        missing = [f for f, v in (("procedure_code", procedure), ("agency_code", agency)) if v is None]
        if missing:
            raise ApiError(
                422,
                "unknown_entity",
                "unknown " + " and ".join(missing),
                [{"field": f, "reason": "not in the reference data"} for f in missing],
            )
        assert procedure is not None and agency is not None
        d = new_dossier(
            code=new.code,
            procedure=procedure,
            agency=agency,
            district=self.district_of(agency.admin_unit),
            channel=new.channel,
            at=new.at,
            calendar=self.calendar,
            received=new.received,
        )
        if new.digitised:
            if not new.received:
                raise ApiError(
                    422,
                    "invalid_request",
                    "digitised is recorded when the dossier is received",
                    [{"field": "digitised", "reason": "only with received=true"}],
                )
            d = replace(d, digitised=True)
        action = "receive" if new.received else "submit"
        event = publishing.status_changed(d, procedure, action=action, previous=None, at=new.at)
        async with self.pool.acquire() as conn, conn.transaction():
            if not await repository.insert_dossier(conn, d, new.applicant):
                raise ApiError(
                    409,
                    "duplicate",
                    f"dossier {new.code!r} exists already",
                    [{"field": "code", "reason": "duplicate"}],
                )
            await self._commit(principal, conn, None, d, action, [event], {"channel": d.channel})
        self.outbox.notify()
        EVENTS_ACCEPTED.labels(SERVICE, "dossier").inc()
        return dossier_view(d, _today())

    async def change(
        self,
        principal: Principal,
        code: str,
        agency: str | None,
        action: str,
        mutate: Mutation,
        at: datetime | None = None,
    ) -> dict[str, Any]:
        """Lock the dossier, check who may touch it, apply ``mutate(dossier, procedure)`` and commit it all."""
        async with self.pool.acquire() as conn, conn.transaction():
            owner = await self._dossier_agency(conn, principal, code, agency)
            d = await repository.lock_dossier(conn, owner, code)
            if d is None:
                raise not_found(code)
            procedure = await self.procedure(d.procedure_code)
            assert procedure is not None  # a foreign key guarantees it
            try:
                new, events, detail = mutate(d, procedure)
            except DossierRuleError as exc:
                raise _rule_error(exc) from None
            await self._commit(principal, conn, d, new, action, events, detail, at)
        self.outbox.notify()
        return dossier_view(new, _today())

    async def transition(
        self,
        principal: Principal,
        code: str,
        agency: str | None,
        action: str,
        at: datetime,
        *,
        paid_online: bool | None = None,
        digitised: bool | None = None,
        result_esigned: bool | None = None,
    ) -> dict[str, Any]:
        """A lifecycle transition (national status 1-10)."""
        await self.refresh_if_stale()

        def mutate(d: Dossier, procedure: Procedure) -> tuple[Dossier, list[EncodedEvent], dict[str, Any]]:
            ag = self.agencies.get(d.agency_code)
            close = ag.office_close if ag is not None else DEFAULT_OFFICE_CLOSE
            new = transition(
                d,
                action,
                at,
                procedure,
                self.calendar,
                paid_online=paid_online,
                office_close=close,
                digitised=digitised,
                result_esigned=result_esigned,
            )
            ev = publishing.status_changed(
                new,
                procedure,
                action=action,
                previous=d.status,
                at=at,
                paid_online=paid_online if action == "pay_fees" else None,
            )
            return new, [ev], {}

        return await self.change(principal, code, agency, action, mutate)

    async def hand_over(
        self, principal: Principal, code: str, agency: str | None, step_name: str, at: datetime
    ) -> dict[str, Any]:
        """Hand the dossier over to the next step (control slip)."""

        def mutate(d: Dossier, procedure: Procedure) -> tuple[Dossier, list[EncodedEvent], dict[str, Any]]:
            new = hand_over(d, at)
            return new, [publishing.handed_over(new, procedure, at, step_name)], {"step": new.step}

        return await self.change(principal, code, agency, "hand_over", mutate)

    async def apologize(
        self, principal: Principal, code: str, agency: str | None, new_due_date: date, at: datetime
    ) -> dict[str, Any]:
        """Apologise for a late dossier with a new date (form 04)."""

        def mutate(d: Dossier, procedure: Procedure) -> tuple[Dossier, list[EncodedEvent], dict[str, Any]]:
            new = apologize(d, new_due_date, at)
            return (
                new,
                [publishing.apologized(new, procedure, at)],
                {"promised_date": new_due_date.isoformat()},
            )

        return await self.change(principal, code, agency, "apologize", mutate)

    async def record_feedback(
        self,
        principal: Principal,
        code: str,
        agency: str | None,
        rating: str | None,
        complained: bool,
        at: datetime,
    ) -> dict[str, Any]:
        """The applicant's rating and/or complaint (766)."""

        def mutate(d: Dossier, procedure: Procedure) -> tuple[Dossier, list[EncodedEvent], dict[str, Any]]:
            new = record_feedback(d, rating, complained)
            event = publishing.feedback_recorded(new, procedure, at, rating, complained)
            return new, [event], {"rating": rating, "complained": complained}

        return await self.change(principal, code, agency, "feedback", mutate, at)

    async def record_portal_sync(
        self,
        principal: Principal,
        code: str,
        agency: str | None,
        synced_status: int,
        status_at: datetime,
        synced_at: datetime,
    ) -> dict[str, Any]:
        """A status synchronised to the national portal (766)."""
        max_delay = self.settings.portal_sync_max_delay_seconds

        def mutate(d: Dossier, procedure: Procedure) -> tuple[Dossier, list[EncodedEvent], dict[str, Any]]:
            new, on_time = record_portal_sync(d, status_at, synced_at, max_delay)
            event = publishing.portal_synced(
                new, procedure, synced_status=synced_status, status_at=status_at, synced_at=synced_at,
                on_time=on_time,
            )  # fmt: skip
            return new, [event], {"synced_status": synced_status, "on_time": on_time}

        return await self.change(principal, code, agency, "portal_sync", mutate, synced_at)

    async def get_dossier(self, principal: Principal, code: str, agency: str | None) -> dict[str, Any]:
        """A dossier with its applicant and history (owning agency only)."""
        owner = await self._dossier_agency(self.pool, principal, code, agency)
        found = await repository.get_dossier(self.pool, owner, code)
        if found is None:
            raise not_found(code)
        d, applicant = found
        view = dossier_view(d, _today())
        view["applicant"] = applicant
        view["history"] = await repository.history(self.pool, owner, code)
        return view

    async def list_dossiers(
        self,
        principal: Principal,
        *,
        status: int | None,
        agency: str | None,
        after: str | None,
        after_agency: str | None,
        limit: int,
    ) -> dict[str, Any]:
        """Dossiers visible to ``principal``, paged by code, then agency."""
        own = own_agency(principal)
        if own is not None and agency not in (None, own):
            raise ApiError(
                403,
                "forbidden",
                "an agency can only list its own dossiers",
                [{"field": "agency", "reason": "not this principal's agency"}],
            )
        rows = await repository.list_dossiers(
            self.pool,
            agency=own or agency,
            status=status,
            limit=limit,
            after=after,
            after_agency=after_agency,
        )
        today = _today()
        items = [dossier_view(d, today) for d in rows]
        more = len(items) == limit
        return {
            "items": items,
            "next_after": items[-1]["code"] if more else None,
            "next_after_agency": items[-1]["agency_code"] if more else None,
        }

    # ------------------------------------------------------------------------------------------ index 766
    async def put_index_inputs(self, principal: Principal, items: Sequence[IndexInput]) -> int:
        errors: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            if item.indicator not in INPUT_INDICATORS:
                errors.append(
                    {
                        "item": i,
                        "field": "indicator",
                        "reason": f"not an outside-data indicator; one of {', '.join(INPUT_INDICATORS)}",
                    }
                )
            elif item.numerator > item.denominator:
                errors.append({"item": i, "field": "numerator", "reason": "must not exceed the denominator"})
        if errors:
            raise ApiError(422, "invalid_request", "some inputs are not valid", errors)
        rows = [
            (
                x.scope_level,
                x.scope_code,
                x.period,
                x.indicator,
                x.numerator,
                x.denominator,
                x.source,
                principal.id,
            )
            for x in items
        ]
        async with self.pool.acquire() as conn, conn.transaction():
            await repository.upsert_index_inputs(conn, rows)
            await record_audit(
                conn,
                principal=principal.id,
                service=SERVICE,
                action="index766.inputs",
                target="index766",
                detail={"count": len(rows)},
            )
        return len(rows)

    async def index766(
        self, principal: Principal, period: str, scope_level: str | None, scope_code: str | None
    ) -> dict[str, Any]:
        """Decision 766 scorecards per scope for a month, quarter or year."""
        own = own_agency(principal)
        start, end = period_bounds(period)
        await self.refresh_if_stale()
        rows = await repository.dossiers_for_period(self.pool, start, end)
        procedures: Mapping[str, Procedure] = self.procedures
        facts = [
            for_index766(d, procedures[d.procedure_code]) for d in rows if d.procedure_code in procedures
        ]
        if own is not None:  # an agency sees its own scorecard only
            facts = [f for f in facts if f.agency_code == own]
            scope_level, scope_code = "agency", own
        inputs = await repository.index_inputs(self.pool, period)
        cards = scorecards(facts, period, _today(), inputs)
        items = [
            {
                "scope_level": level,
                "scope_code": code,
                "period": period,
                "total": c.total,
                "covered_points": c.covered_points,
                "groups": c.groups,
                "indicators": c.indicators,
                "missing": list(c.missing),
            }
            for (level, code), c in cards.items()
            if (scope_level is None or level == scope_level) and (scope_code is None or code == scope_code)
        ]
        return {"period": period, "items": items}
