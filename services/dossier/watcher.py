"""The deadline watcher: a periodic scan of open dossiers that emits deadline warnings and overdue notices.

Dossiers become late without anyone touching them, so the scan runs on a timer. Notices go through the
outbox in the same transaction that marks the dossier as notified for its current due date, so each notice
is published once per due date (a new due date, after a clock pause, re-arms it).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from shared.calendar import WorkingCalendar
from shared.calendar_metrics import CALENDAR_CONFIRMED_AHEAD, CALENDAR_UNCONFIRMED

from . import publishing, repository
from .domain import deadline_notice, local_date, replace_due_date, reschedule
from .service import DossierService

log = logging.getLogger(__name__)
BATCH = 500


async def scan_once(svc: DossierService, warn_days: int, now: datetime | None = None) -> int:
    """One scan at ``now``: publish (via the outbox) every notice due; how many notices were written."""
    now = now or datetime.now(UTC)
    today = local_date(now)
    horizon = svc.calendar.add_working_days(today, warn_days)
    written = 0
    while True:
        async with svc.pool.acquire() as conn, conn.transaction():
            rows = await repository.lock_open_due_by(conn, horizon, today, BATCH)
            events, warned, overdue = [], [], []
            for d, warned_for, overdue_for in rows:
                notice = deadline_notice(d, today, svc.calendar, warn_days)
                procedure = await svc.procedure(d.procedure_code)
                if notice is None or procedure is None:
                    continue
                kind, n = notice
                assert d.due_date is not None
                if kind == "overdue" and overdue_for != d.due_date:
                    events.append(publishing.overdue(d, procedure, now, n))
                    overdue.append((d.agency_code, d.code, d.due_date))
                elif kind == "approaching" and warned_for != d.due_date:
                    events.append(publishing.deadline_approached(d, procedure, now, n))
                    warned.append((d.agency_code, d.code, d.due_date))
            await svc.outbox.add(conn, events)
            await repository.mark_warned(conn, warned)
            await repository.mark_overdue(conn, overdue)
        written += len(events)
        if len(rows) < BATCH or not events:
            break
    if written:
        svc.outbox.notify()
    return written


async def check_calendar(svc: DossierService, horizon_days: int, now: datetime | None = None) -> str | None:
    """Set the calendar gauges; raise or clear the calendar alarm when its state changed. The alarm's last state
    lives in memory: after a restart the current state is published again (alarms are level-triggered)."""
    now = now or datetime.now(UTC)
    today = local_date(now)
    cal = svc.calendar
    CALENDAR_CONFIRMED_AHEAD.labels("dossier").set(cal.confirmed_days_ahead(today) * 86400.0)
    unconfirmed = cal.unconfirmed_ahead(today, horizon_days)
    CALENDAR_UNCONFIRMED.labels("dossier").set(1.0 if unconfirmed else 0.0)
    state = "raised" if unconfirmed else "cleared"
    previous = svc.calendar_alarm
    if state == previous or (previous is None and state == "cleared"):
        return None
    through = cal.confirmed_through.isoformat() if cal.confirmed_through else None
    event = publishing.calendar_alarm(state, now, through, horizon_days)
    async with svc.pool.acquire() as conn, conn.transaction():
        await svc.outbox.add(conn, [event])
    svc.calendar_alarm = state
    svc.outbox.notify()
    return state


async def apply_calendar_change(svc: DossierService, now: datetime | None = None) -> int:
    """Reschedule open dossiers when the working calendar differs from the one their due dates were computed with
    (a newly decided day off): each moved due date is written with a history line and a status event
    (action ``reschedule``, same status). Returns how many due dates moved."""
    now = now or datetime.now(UTC)
    new = svc.calendar
    moved = 0
    async with svc.pool.acquire() as conn, conn.transaction():
        applied = await repository.applied_calendar(conn)
        days_off, worked = set(new.days_off), set(new.working_weekend_days)
        if applied is not None and applied != (days_off, worked):
            old = WorkingCalendar(frozenset(applied[0]), frozenset(applied[1]))
            changed = (old.days_off ^ new.days_off) | (old.working_weekend_days ^ new.working_weekend_days)
            first = min(changed)
            for d in await repository.lock_open_due_from(conn, first):
                due = reschedule(d, old, new)
                procedure = await svc.procedure(d.procedure_code)
                if due is None or procedure is None:
                    continue
                after = replace_due_date(d, due, now)
                await repository.update_dossier(conn, after)
                detail = {
                    "old_due_date": d.due_date.isoformat() if d.due_date else None,
                    "new_due_date": due.isoformat(),
                    "reason": "working calendar changed",
                }
                await repository.insert_history(
                    conn,
                    d.agency_code,
                    d.code,
                    at=now,
                    action="reschedule",
                    from_status=d.status,
                    to_status=d.status,
                    principal="system:calendar",
                    detail=detail,
                )
                event = publishing.status_changed(
                    after, procedure, action="reschedule", previous=d.status, at=now
                )
                await svc.outbox.add(conn, [event])
                moved += 1
        if applied != (days_off, worked):
            await repository.store_applied_calendar(conn, days_off, worked)
    if moved:
        log.info("due dates moved by a calendar change", extra={"count": moved})
        svc.outbox.notify()
    return moved


async def run(
    svc: DossierService,
    warn_days: int,
    interval_s: float,
    *,
    calendar_horizon_days: int = 90,
) -> None:
    """Scan forever every ``interval_s`` seconds; a failed scan is retried at the next one."""
    while True:
        try:
            await check_calendar(svc, calendar_horizon_days)
            n = await scan_once(svc, warn_days)
            if n:
                log.info("deadline notices written", extra={"count": n})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("deadline scan failed: %s", type(exc).__name__)
        await asyncio.sleep(interval_s)
