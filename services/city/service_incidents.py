"""Use cases of the incident workflow: list and detail, assign, comment, SOP steps, the clear gate, escalation
and shelf expiry (a background task), history. Pure rules in :mod:`services.city.incidents`, SQL in
:mod:`services.city.repository_incidents`; every action is audited in the same transaction as its change.

The clock is injectable (``clock``) so that tests drive escalation and shelf expiry without waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import Counter

from services.city import repository as repo
from services.city import repository_incidents as irepo
from services.city.alarming import unshelve
from services.city.incidents import (
    ESCALATION_PRINCIPAL,
    OPERATE_ROLES,
    SHELF_EXPIRY_PRINCIPAL,
    SUPERVISE_SCOPE,
    Action,
    Case,
    Playbook,
    StepDone,
    WorkflowError,
    assign,
    check_clear,
    choose_procedure,
    comment,
    escalation_due,
    shelf_expired,
    tick_step,
)
from services.city.service import CityService, StreamHub
from shared.auth import ApiError, Principal, record_audit

log = logging.getLogger(__name__)

ESCALATIONS = Counter(
    "ioc_city_incident_escalations_total",
    "Incidents escalated for staying unacknowledged, by severity and the level reached",
    ["severity", "level"],
)
SHELVES_EXPIRED = Counter(
    "ioc_city_alarm_shelves_expired_total", "Shelved alarms returned when their shelf ran out"
)

_STATUS = {"not_found": 404, "conflict": 409, "forbidden": 403, "invalid": 422}
_CODE = {"not_found": "not_found", "conflict": "invalid_transition", "forbidden": "forbidden"}


def api_error(exc: WorkflowError) -> ApiError:
    code = _CODE.get(exc.kind) or (
        "personal_data"
        if any("looks like" in str(d.get("reason", "")) for d in exc.details)
        else "invalid_request"
    )
    return ApiError(_STATUS[exc.kind], code, exc.message, exc.details)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class IncidentService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        playbook: Playbook,
        alarms: CityService,
        *,
        hub: StreamHub | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ):
        self.pool = pool
        self.playbook = playbook
        self.alarms = alarms  # operates the alarms (lifecycle, audit, stream) when an incident is cleared
        self.hub = hub or StreamHub()
        self.clock = clock

    # Reading ----------------------------------------------------------------------------------------------
    async def cases(self, **filters: Any) -> list[dict[str, Any]]:
        items = await irepo.list_cases(self.pool, now=self.clock(), **filters)
        alarms = await irepo.alarms_of(self.pool, [i["incident_id"] for i in items])
        for i in items:
            i["alarms"] = alarms.get(i["incident_id"], [])
            self._describe(i)
        return items

    def _describe(self, item: dict[str, Any]) -> None:
        """Add the procedure's id and title and the escalation level's name to a listed incident."""
        proc = self.playbook.get(item.get("procedure_id") or "") or choose_procedure(
            item["alarms"], self.playbook
        )
        item["procedure_id"] = proc.id
        item["procedure_title"] = dict(proc.title)
        names = self.playbook.escalation.level_names
        level = item["escalation_level"]
        item["escalation_name"] = dict(names[min(level, len(names)) - 1]) if level and names else None

    async def detail(self, incident_id: str) -> dict[str, Any]:
        found = await self.cases(incident_id=incident_id, state="all", limit=1)
        if not found:
            raise ApiError(404, "not_found", "no such incident", [{"incident_id": incident_id}])
        item = found[0]
        proc = self.playbook.get(item["procedure_id"])
        assert proc is not None  # _describe chose one of the playbook's
        done = {s["step_id"]: s for s in await irepo.steps_done(self.pool, incident_id)}
        item["procedure"] = {
            "id": proc.id,
            "title": dict(proc.title),
            "steps": [
                {
                    "id": s.id,
                    "text": dict(s.text),
                    "mandatory": s.mandatory,
                    "done_by": done[s.id]["done_by"] if s.id in done else None,
                    "done_at": done[s.id]["done_at"] if s.id in done else None,
                }
                for s in proc.steps
            ],
        }
        item["missing_mandatory_steps"] = [s.id for s in proc.steps if s.mandatory and s.id not in done]
        item["comments"] = await irepo.comments(self.pool, incident_id)
        return item

    async def history(self, incident_id: str) -> list[dict[str, Any]]:
        async with self.pool.acquire() as conn:
            exists = await irepo.incident_exists(conn, incident_id)
        if not exists:
            raise ApiError(404, "not_found", "no such incident", [{"incident_id": incident_id}])
        return await irepo.history(self.pool, incident_id)

    async def assignees(self) -> list[dict[str, Any]]:
        return await irepo.principals_with_roles(self.pool, sorted(OPERATE_ROLES))

    def procedures(self) -> dict[str, Any]:
        return {
            "items": [
                {
                    "id": p.id,
                    "title": dict(p.title),
                    "alarm_types": list(p.alarm_types),
                    "domains": list(p.domains),
                    "steps": [{"id": s.id, "text": dict(s.text), "mandatory": s.mandatory} for s in p.steps],
                }
                for p in self.playbook.procedures
            ],
            "escalation": {
                "minutes": {k: list(v) for k, v in self.playbook.escalation.ladders.items()},
                "levels": [dict(n) for n in self.playbook.escalation.level_names],
            },
        }

    # Actions ----------------------------------------------------------------------------------------------
    async def _case(self, conn: asyncpg.Connection, incident_id: str) -> Case:
        """The incident as the workflow sees it, locked; its procedure is fixed on first use."""
        inc = await irepo.lock_incident(conn, incident_id)
        if inc is None:
            raise ApiError(404, "not_found", "no such incident", [{"incident_id": incident_id}])
        wf = await irepo.workflow(conn, incident_id) or {}
        proc = self.playbook.get(wf.get("procedure_id") or "")
        if proc is None:
            chosen = choose_procedure(await irepo.alarm_summaries(conn, incident_id), self.playbook)
            proc = self.playbook.get(await irepo.fix_procedure(conn, incident_id, chosen.id)) or chosen
        done = tuple(
            StepDone(s["step_id"], s["done_by"], s["done_at"])
            for s in await irepo.steps_done(conn, incident_id)
        )
        return Case(
            incident_id,
            inc["state"] == "open",
            proc,
            assignee=wf.get("assignee"),
            escalation_level=wf.get("escalation_level") or 0,
            done=done,
            district=inc["district"],
        )

    async def _act(
        self,
        incident_id: str,
        principal: Principal,
        decide: Callable[[Case], Action],
        write: Callable[[asyncpg.Connection, Case, Action, datetime], Any],
    ) -> dict[str, Any]:
        now = self.clock()
        async with self.pool.acquire() as conn, conn.transaction():
            case = await self._case(conn, incident_id)
            try:
                action = decide(case)
            except WorkflowError as exc:
                raise api_error(exc) from None
            result = await write(conn, case, action, now)
            await record_audit(
                conn,
                principal=principal.id,
                service="city",
                action=action.action,
                target=incident_id,
                detail={**action.detail, "role": principal.role},
            )
            items = await repo.insert_stream_items(
                conn,
                [
                    (
                        "incident",
                        {
                            "incident_id": incident_id,
                            "district": case.district,
                            "state": "open" if case.is_open else "closed",
                            "workflow": action.action,
                        },
                    )
                ],
            )
        await self.hub.notify(max(i["seq"] for i in items))
        return {"incident_id": incident_id, "action": action.action, **(result or {})}

    async def assign(self, incident_id: str, principal: Principal, assignee: str) -> dict[str, Any]:
        role_of_assignee = await irepo.principal_role(self.pool, assignee)

        async def write(
            conn: asyncpg.Connection, case: Case, action: Action, now: datetime
        ) -> dict[str, Any]:
            await irepo.assign(conn, incident_id, assignee, principal.id, now)
            return {"assignee": assignee, "assigned_at": now}

        return await self._act(
            incident_id,
            principal,
            lambda case: assign(
                case,
                supervisor=principal.has_scope(SUPERVISE_SCOPE),
                assignee=assignee,
                assignee_role=role_of_assignee,
            ),
            write,
        )

    async def comment(self, incident_id: str, principal: Principal, text: str) -> dict[str, Any]:
        async def write(
            conn: asyncpg.Connection, case: Case, action: Action, now: datetime
        ) -> dict[str, Any]:
            row = await irepo.add_comment(conn, incident_id, principal.id, now, text.strip())
            action.detail["comment_id"] = row["id"]
            return {"comment": row}

        return await self._act(
            incident_id, principal, lambda case: comment(case, role=principal.role, text=text), write
        )

    async def tick(self, incident_id: str, principal: Principal, step_id: str) -> dict[str, Any]:
        async def write(
            conn: asyncpg.Connection, case: Case, action: Action, now: datetime
        ) -> dict[str, Any]:
            await irepo.add_step(conn, incident_id, case.procedure.id, step_id, principal.id, now)
            return {"step": step_id, "done_by": principal.id, "done_at": now}

        return await self._act(
            incident_id, principal, lambda case: tick_step(case, role=principal.role, step_id=step_id), write
        )

    async def gate_clear(
        self, incident_id: str, principal: Principal, override_reason: str | None
    ) -> Action | None:
        """Whether this principal may clear the incident now (ApiError if not); the action to audit once the
        alarms are cleared, ``None`` when it has no open alarm (nothing to clear, nothing to gate)."""
        async with self.pool.acquire() as conn, conn.transaction():
            case = await self._case(conn, incident_id)
            open_alarms = await irepo.open_alarm_count(conn, incident_id)
        if not open_alarms:
            return None
        try:
            return check_clear(
                case,
                role=principal.role,
                supervisor=principal.has_scope(SUPERVISE_SCOPE),
                override_reason=override_reason,
            )
        except WorkflowError as exc:
            raise api_error(exc) from None

    async def gate_alarm_clear(self, alarm_id: str, principal: Principal) -> Action | None:
        """Clearing the last open alarm of an incident clears the incident: the same gate applies (an override
        goes through the incident's clear-override)."""
        async with self.pool.acquire() as conn:
            row = await irepo.open_alarm_incident(conn, alarm_id)
        if row is None or row["incident_id"] is None or row["others"] > 0:
            return None
        return await self.gate_clear(row["incident_id"], principal, None)

    async def clear(
        self, incident_id: str, principal: Principal, override_reason: str | None
    ) -> dict[str, Any]:
        """Clear every open alarm of the incident through the city service (each audited), once the gate lets
        it: then ``incident.clear`` or ``incident.clear_override`` is audited."""
        gate = await self.gate_clear(incident_id, principal, override_reason)
        async with self.pool.acquire() as conn:
            ids = await repo.incident_alarm_ids(conn, incident_id) or []
        done = await self.alarms.operate(ids, "clear", principal.id, target=incident_id) if ids else []
        if gate is not None:
            await self.record_clear(incident_id, principal, gate)
        return {"incident_id": incident_id, "alarms": done}

    async def clear_alarm(self, alarm_id: str, principal: Principal) -> dict[str, Any]:
        """Clear one alarm; clearing the last open alarm of an incident clears the incident, so its procedure
        gate applies (and is audited)."""
        gate = await self.gate_alarm_clear(alarm_id, principal)
        done = await self.alarms.operate([alarm_id], "clear", principal.id)
        if gate is not None and done[0].get("incident_id"):
            await self.record_clear(done[0]["incident_id"], principal, gate)
        return done[0]

    async def record_clear(self, incident_id: str, principal: Principal, action: Action) -> None:
        await record_audit(
            self.pool,
            principal=principal.id,
            service="city",
            action=action.action,
            target=incident_id,
            detail={**action.detail, "role": principal.role},
        )

    # Background: escalation and shelf expiry ---------------------------------------------------------------
    async def escalate(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Raise the escalation level of every incident unacknowledged past its ladder's times at ``now``."""
        now = now or self.clock()
        done: list[dict[str, Any]] = []
        async with self.pool.acquire() as conn, conn.transaction():
            stream: list[tuple[str, dict[str, Any]]] = []
            for c in await irepo.escalation_candidates(conn, now):
                action = escalation_due(
                    c["level"], c["severity"], c["unacknowledged_since"], now, self.playbook.escalation
                )
                if action is None or not await irepo.raise_escalation(
                    conn, c["incident_id"], action.detail["to"], now
                ):
                    continue
                await record_audit(
                    conn,
                    principal=ESCALATION_PRINCIPAL,
                    service="city",
                    action=action.action,
                    target=c["incident_id"],
                    detail=action.detail,
                )
                stream.append(
                    (
                        "incident",
                        {
                            "incident_id": c["incident_id"],
                            "district": c["district"],
                            "state": "open",
                            "escalation_level": action.detail["to"],
                        },
                    )
                )
                done.append({"incident_id": c["incident_id"], **action.detail})
            items = await repo.insert_stream_items(conn, stream)
        for d in done:  # counted once committed
            ESCALATIONS.labels(d["severity"], str(d["to"])).inc()
        if items:
            await self.hub.notify(max(i["seq"] for i in items))
        return done

    async def expire_shelves(self, now: datetime | None = None) -> list[str]:
        """Put back every alarm whose shelf has run out (audited), so it is listed and streamed again."""
        now = now or self.clock()
        back: list[str] = []
        async with self.pool.acquire() as conn, conn.transaction():
            stream: list[tuple[str, dict[str, Any]]] = []
            for alarm_id in await irepo.expired_shelf_ids(conn, now):
                alarm = await repo.alarm_for_update(conn, alarm_id)
                if alarm is None or not shelf_expired(alarm.shelved_until, now):
                    continue
                await repo.save_alarm(conn, unshelve(alarm))
                await record_audit(
                    conn,
                    principal=SHELF_EXPIRY_PRINCIPAL,
                    service="city",
                    action="alarm.shelf_expired",
                    target=alarm_id,
                    detail={
                        "alarm_id": alarm_id,
                        "incident_id": alarm.incident_id,
                        "shelved_by": alarm.shelved_by,
                        "shelved_until": alarm.shelved_until.isoformat() if alarm.shelved_until else None,
                    },
                )
                stream.append(("alarm", repo.alarm_item(unshelve(alarm))))
                back.append(alarm_id)
            items = await repo.insert_stream_items(conn, stream)
        SHELVES_EXPIRED.inc(len(back))
        if items:
            await self.hub.notify(max(i["seq"] for i in items))
        return back

    async def run(self, interval_seconds: float) -> None:
        """The background task: escalate and expire shelves every ``interval_seconds`` at ``clock()``."""
        while True:
            try:
                now = self.clock()
                await self.escalate(now)
                await self.expire_shelves(now)
            except asyncio.CancelledError:
                raise
            except Exception:  # try again next round
                log.exception("incident escalation round failed")
            await asyncio.sleep(interval_seconds)
