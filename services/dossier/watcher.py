"""The deadline watcher: a periodic scan of open dossiers that emits deadline warnings and overdue notices.

Dossiers become late without anyone touching them, so the scan runs on a timer. Notices go through the
outbox in the same transaction that marks the dossier as notified for its current due date, so each notice
is published once per due date (a new due date, after a clock pause, re-arms it).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from shared.http import ServiceContext

from . import publishing, repository
from .api import DossierRuntime
from .domain import deadline_notice, local_date

log = logging.getLogger(__name__)
BATCH = 500


async def scan_once(
    ctx: ServiceContext, rt: DossierRuntime, warn_days: int, now: datetime | None = None
) -> int:
    """One scan at ``now``: publish (via the outbox) every notice due; how many notices were written."""
    assert ctx.pool is not None
    now = now or datetime.now(UTC)
    today = local_date(now)
    horizon = rt.calendar.add_working_days(today, warn_days)
    written = 0
    while True:
        async with ctx.pool.acquire() as conn, conn.transaction():
            rows = await repository.lock_open_due_by(conn, horizon, today, BATCH)
            events, warned, overdue = [], [], []
            for d, warned_for, overdue_for in rows:
                notice = deadline_notice(d, today, rt.calendar, warn_days)
                procedure = await rt.procedure(ctx, d.procedure_code)
                if notice is None or procedure is None:
                    continue
                kind, n = notice
                assert d.due_date is not None
                if kind == "overdue" and overdue_for != d.due_date:
                    events.append(publishing.overdue(d, procedure, now, n))
                    overdue.append((d.code, d.due_date))
                elif kind == "approaching" and warned_for != d.due_date:
                    events.append(publishing.deadline_approached(d, procedure, now, n))
                    warned.append((d.code, d.due_date))
            await repository.insert_outbox(conn, [publishing.to_row(e) for e in events])
            await repository.mark_warned(conn, warned)
            await repository.mark_overdue(conn, overdue)
        written += len(events)
        if len(rows) < BATCH or not events:
            break
    if written:
        rt.relay.notify()
    return written


async def run(ctx: ServiceContext, rt: DossierRuntime, warn_days: int, interval_s: float) -> None:
    """Scan forever every ``interval_s`` seconds; a failed scan is retried at the next one."""
    while True:
        try:
            n = await scan_once(ctx, rt, warn_days)
            if n:
                log.info("deadline notices written", extra={"count": n})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("deadline scan failed: %s", type(exc).__name__)
        await asyncio.sleep(interval_s)
