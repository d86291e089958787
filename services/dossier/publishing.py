"""Dossier events: domain objects → CloudEvents → outbox rows → Kafka (the outbox relay).

A state change and its event are written in one PostgreSQL transaction (``outbox`` table). The relay publishes
unsent rows in order, in batches, and marks them sent only after the broker acknowledged; if the broker is down
it backs off and retries, so an accepted change is never lost and never published without being stored. A row
can be published twice (acknowledged, then the mark failed); its event id is stable, so consumers that dedup
on CloudEvents ``source`` + ``id`` (every IOC consumer) see it once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from shared.contracts.base import EventModel, event_type_of
from shared.contracts.cloudevents import EncodedEvent, encode
from shared.contracts.dossier import (
    ALARM_EVENT,
    DossierApologized,
    DossierDeadlineApproached,
    DossierFeedbackRecorded,
    DossierOverdue,
    DossierPortalSynced,
    DossierStatusChanged,
    DossierStepHandedOver,
    dossier_id,
)
from shared.http import ServiceContext
from shared.kafka.producer import BrokerUnavailable
from shared.metrics import OUTBOX_BACKLOG
from shared.tasks import wait_event

from . import repository
from .domain import Dossier, Procedure, utc

log = logging.getLogger(__name__)
SERVICE = "dossier"
SOURCE = "/ioc/dossier"


def _iso(at: datetime) -> str:
    return utc(at).isoformat().replace("+00:00", "Z")


def facts(d: Dossier, procedure: Procedure, at: datetime) -> dict[str, Any]:
    """The fields every dossier event carries. Only codes, statuses and times: never the applicant."""
    return {
        "dossier_id": dossier_id(d.agency_code, d.code),
        "dossier_code": d.code,
        "procedure_code": d.procedure_code,
        "agency_code": d.agency_code,
        "admin_unit": d.admin_unit,
        "district": d.district,
        "channel": d.channel,
        "online_level": procedure.online_level,
        "has_fees": procedure.has_fees,
        "status": d.status,
        "received_at": d.received_at,
        "due_date": d.due_date,
        "at": at,
    }


def _encode(payload: EventModel, at: datetime) -> EncodedEvent:
    return encode(event_type_of(payload), payload, source=SOURCE, time=_iso(at))


def status_changed(
    d: Dossier,
    procedure: Procedure,
    *,
    action: str,
    previous: int | None,
    at: datetime,
    paid_online: bool | None = None,
) -> EncodedEvent:
    payload = DossierStatusChanged(
        **facts(d, procedure, at),
        previous_status=previous,
        status_name=d.status_name,
        action=action,
        clock_paused=d.paused_at is not None,
        paid_online=paid_online,
        digitised=d.digitised if action == "receive" else None,
        result_esigned=d.result_esigned if action in ("resolve", "return_result") else None,
    )
    return _encode(payload, at)


def feedback_recorded(
    d: Dossier, procedure: Procedure, at: datetime, rating: str | None, complained: bool
) -> EncodedEvent:
    payload = DossierFeedbackRecorded(**facts(d, procedure, at), rating=rating, complained=complained)
    return _encode(payload, at)


def portal_synced(
    d: Dossier,
    procedure: Procedure,
    *,
    synced_status: int,
    status_at: datetime,
    synced_at: datetime,
    on_time: bool,
) -> EncodedEvent:
    payload = DossierPortalSynced(
        **facts(d, procedure, synced_at),
        synced_status=synced_status,
        status_at=status_at,
        synced_at=synced_at,
        on_time=on_time,
    )
    return _encode(payload, synced_at)


def calendar_alarm(
    state: str, at: datetime, confirmed_through: str | None, horizon_days: int
) -> EncodedEvent:
    """The calendar alarm: raised while the working calendar is not confirmed ``horizon_days`` ahead (e.g. next
    year's Tết days not yet decided: due dates beyond the confirmed date rest on the library's estimate)."""
    if state == "raised":
        message = (
            f"working calendar confirmed only through {confirmed_through or 'no date'}: add the government's "
            f"decisions for the next {horizon_days} days (shared/data/calendar_vn_decisions.csv)"
        )
    else:
        message = f"working calendar confirmed through {confirmed_through}"
    payload = ALARM_EVENT.model.model_validate(
        dict(
            alarm_id="dossier:calendar_unconfirmed:city",
            domain="dossier",
            alarm_type="calendar_unconfirmed",
            state=state,
            severity="warning",
            source_id="working-calendar",
            at=at,
            message=message,
        )
    )
    return encode(ALARM_EVENT, payload, source=SOURCE, time=_iso(at))


def apologized(d: Dossier, procedure: Procedure, at: datetime) -> EncodedEvent:
    assert d.promised_date is not None
    return _encode(DossierApologized(**facts(d, procedure, at), promised_date=d.promised_date), at)


def handed_over(d: Dossier, procedure: Procedure, at: datetime, step_name: str) -> EncodedEvent:
    return _encode(DossierStepHandedOver(**facts(d, procedure, at), step=d.step, step_name=step_name), at)


def deadline_approached(d: Dossier, procedure: Procedure, at: datetime, days_left: int) -> EncodedEvent:
    return _encode(DossierDeadlineApproached(**facts(d, procedure, at), working_days_left=days_left), at)


def overdue(d: Dossier, procedure: Procedure, at: datetime, days: int) -> EncodedEvent:
    return _encode(DossierOverdue(**facts(d, procedure, at), days_overdue=days), at)


# Outbox rows ----------------------------------------------------------------------------------------------


def to_row(ev: EncodedEvent) -> tuple[str, str, bytes, bytes, list[list[str]]]:
    """An encoded event as an outbox row (CloudEvents header values are text)."""
    return ev.id, ev.topic, ev.key, ev.value, [[k, v.decode()] for k, v in ev.headers]


def from_row(row: Any) -> EncodedEvent:
    headers = [(k, v.encode()) for k, v in row["headers"]]
    return EncodedEvent(row["topic"], bytes(row["key"]), bytes(row["value"]), headers, row["event_id"])


class OutboxRelay:
    """Publishes the outbox to Kafka; one per app, started in ``on_start`` with ``ctx.spawn``."""

    def __init__(
        self,
        ctx: ServiceContext,
        *,
        batch_size: int = 500,
        poll_seconds: float = 0.5,
        max_backoff_seconds: float = 10.0,
        retention_seconds: float = 86400.0,
    ):
        self.ctx = ctx
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.max_backoff = max_backoff_seconds
        self.retention_seconds = retention_seconds
        self.wake = asyncio.Event()
        self.published = 0

    def notify(self) -> None:
        """A transaction with outbox rows committed: publish now rather than at the next poll."""
        self.wake.set()

    async def publish_once(self) -> int:
        """Publish one batch of unsent rows and mark them sent; how many. Raises ``BrokerUnavailable``."""
        assert self.ctx.pool is not None
        async with self.ctx.pool.acquire() as conn, conn.transaction():
            rows = await repository.lock_unsent(conn, self.batch_size)
            if not rows:
                return 0
            # ctx.publisher is read on every batch so an operator (or a test) can replace it.
            await self.ctx.publisher.publish([from_row(r) for r in rows])
            await repository.mark_sent(conn, [r["id"] for r in rows])
        self.published += len(rows)
        return len(rows)

    async def flush(self, timeout: float = 5.0) -> None:
        """Best effort at shutdown: publish what is waiting (rows left over go out at the next start)."""

        async def drain() -> None:
            while await self.publish_once():
                pass

        try:
            async with asyncio.timeout(timeout):
                await drain()
        except (BrokerUnavailable, TimeoutError):
            log.warning("outbox not flushed at shutdown; it will be published at the next start")

    async def update_backlog(self) -> int:
        assert self.ctx.pool is not None
        n = await repository.count_unsent(self.ctx.pool)
        OUTBOX_BACKLOG.labels(SERVICE).set(n)
        return n

    async def run(self) -> None:
        """Forever: drain the outbox; on broker failure back off (exponentially, capped) and retry."""
        backoff = self.poll_seconds
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                n = await self.publish_once()
                backoff = self.poll_seconds
                if n:
                    continue  # more may be waiting
                await self.update_backlog()
                if loop.time() - last_purge > 60:
                    assert self.ctx.pool is not None
                    await repository.purge_sent(self.ctx.pool, self.retention_seconds)
                    last_purge = loop.time()
                await self._sleep(self.poll_seconds)
            except asyncio.CancelledError:
                raise
            except BrokerUnavailable:
                log.warning("outbox relay: broker unavailable; retrying", extra={"backoff_s": backoff})
                await self._safe_backlog()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            except Exception as exc:  # the database may be down for a while too
                log.warning("outbox relay failed: %s; retrying", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    async def _safe_backlog(self) -> None:
        try:
            await self.update_backlog()
        except Exception:
            pass

    async def _sleep(self, seconds: float) -> None:
        await wait_event(self.wake, seconds)
        self.wake.clear()
