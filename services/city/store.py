"""The city store: consumes the city view and every alarm topic into PostgreSQL and numbers stream items.

- ``ioc.city.kpis`` → time series (raw, roll-ups), current values, ``ioc_kpi_value`` gauges;
- ``ioc.city.alarms`` and every ``ioc.<domain>.alarms`` → one alarm model with its lifecycle, correlated
  into incidents per district;
- every change becomes a numbered stream item the console's Server-Sent Events replay from.

Operator actions (acknowledge, clear) go through the same lifecycle functions and are audited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import Gauge

from services.city import repository as repo
from services.city.alarming import CHATTER_WINDOW, fold_source_change, release_chattering, shelve, unshelve
from services.city.domain import (
    CITY_SCOPE,
    Alarm,
    LifecycleError,
    acknowledge,
    clear,
    correlate,
    correlate_any,
    join_incident,
    open_incident,
)
from shared.auth import ApiError, record_audit
from shared.contracts import TOPICS
from shared.contracts.cloudevents import ReceivedEvent, parse_time
from shared.metrics import KPI_VALUE

log = logging.getLogger(__name__)

ALARMS_OPEN = Gauge(
    "ioc_city_alarms_open",
    "Open (active or acknowledged) alarms by domain and severity",
    ["domain", "severity"],
)
KPI_UPDATED_TYPE = "ioc.city.kpi.updated.v1"
ALARM_SUFFIX = ".alarm.changed.v1"


def store_topics() -> list[str]:
    """What the store consumes: the city KPIs and every registered alarm topic."""
    return ["ioc.city.kpis", *sorted(t for t in TOPICS if t.startswith("ioc.") and t.endswith(".alarms"))]


class StreamHub:
    """Wakes the Server-Sent Events loops of this process when new stream items are stored."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self.head = 0

    async def notify(self, seq: int) -> None:
        async with self._cond:
            self.head = max(self.head, seq)
            self._cond.notify_all()

    async def wait(self, after: int, max_wait: float) -> None:
        """Return when an item after ``after`` may exist, or after ``max_wait`` seconds (other replicas write too)."""
        async with self._cond:
            if self.head > after:
                return
            try:
                async with asyncio.timeout(max_wait):
                    await self._cond.wait()
            except TimeoutError:
                pass


class CityStore:
    """Consumer handler and operator actions on the city schema."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        correlation_window: timedelta,
        hub: StreamHub | None = None,
        incident_span: timedelta = timedelta(hours=2),
    ):
        self.pool = pool
        self.correlation_window = correlation_window
        self.incident_span = incident_span
        self.hub = hub or StreamHub()

    async def handle(self, events: Sequence[ReceivedEvent]) -> None:
        """EventConsumer handler: KPI updates in one transaction, then alarm changes in order."""
        kpis = [e.data for e in events if e.type == KPI_UPDATED_TYPE]
        alarms = [e for e in events if e.type.endswith(ALARM_SUFFIX)]
        items: list[dict[str, Any]] = []
        if kpis:
            stored, current = await repo.store_kpi_updates(self.pool, kpis)
            items += stored
            for c in current:
                if c["value"] is not None and c["scope_level"] in ("district", "city"):
                    KPI_VALUE.labels(c["kpi"], c["scope_level"], c["scope_code"]).set(c["value"])
        if alarms:
            items += await self.apply_alarm_changes([e.data for e in alarms])
        if items:
            await self.hub.notify(max(i["seq"] for i in items))

    async def apply_alarm_changes(self, changes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fold raised/cleared notices into alarms (deduplicated by alarm_id) and correlate new ones."""
        async with self.pool.acquire() as conn, conn.transaction():
            stream: list[tuple[str, dict]] = []
            for change in changes:
                at = parse_time(change["at"]) if isinstance(change["at"], str) else change["at"]
                current = await repo.alarm_for_update(conn, change["alarm_id"])
                raises = await repo.recent_raises(conn, change["alarm_id"], at - CHATTER_WINDOW, at)
                updated = fold_source_change(current, change, at, raises)
                opened = updated is not None and updated.is_open and (current is None or not current.is_open)
                closed = (
                    updated is not None and not updated.is_open and current is not None and current.is_open
                )
                await repo.log_alarm_notice(conn, change, at, opened or closed)
                if updated is None:
                    continue
                stream += await self._save(conn, current, updated)
            return await repo.insert_stream_items(conn, stream)

    async def release_chattering(self, now: datetime) -> None:
        """Clear latched chattering alarms whose source has been clear for the chatter window."""
        async with self.pool.acquire() as conn, conn.transaction():
            stream: list[tuple[str, dict]] = []
            for alarm in await repo.chattering_to_release(conn, now - CHATTER_WINDOW):
                released = release_chattering(alarm, now)
                if released is not None:
                    stream += await self._save(conn, alarm, released)
            items = await repo.insert_stream_items(conn, stream)
        if items:
            await self.hub.notify(max(i["seq"] for i in items))

    async def _save(
        self, conn: asyncpg.Connection, before: Alarm | None, alarm: Alarm
    ) -> list[tuple[str, dict]]:
        items: list[tuple[str, dict]] = []
        newly_open = alarm.is_open and (before is None or not before.is_open)
        if newly_open:
            # City-wide alarms (no district) group into the city's incidents: a flood is one incident.
            where = alarm.district or CITY_SCOPE
            if alarm.district is None:
                # A city-wide alarm (a city KPI dragged down by one district's outage) joins the incident in
                # progress, whichever district it is in: a flood is one incident.
                candidates = await repo.open_incidents(conn, None, alarm.raised_at - self.incident_span)
                incident = correlate_any(
                    alarm.raised_at, candidates, self.correlation_window, self.incident_span
                )
            else:
                candidates = await repo.open_incidents(conn, where, alarm.raised_at - self.incident_span)
                incident = correlate(
                    where, alarm.raised_at, candidates, self.correlation_window, self.incident_span
                )
            incident = join_incident(incident, alarm) if incident is not None else open_incident(where, alarm)
            await repo.save_incident(conn, incident)
            alarm = replace(alarm, incident_id=incident.incident_id)
            items.append(
                (
                    "incident",
                    {
                        "incident_id": incident.incident_id,
                        "district": incident.district,
                        "state": "open",
                        "domains": list(incident.domains),
                        "alarm_count": incident.alarm_count,
                    },
                )
            )
        await repo.save_alarm(conn, alarm)
        if (
            not alarm.is_open
            and alarm.incident_id is not None
            and await repo.close_incident_if_done(
                conn, alarm.incident_id, alarm.cleared_at or alarm.changed_at
            )
        ):
            items.append(
                (
                    "incident",
                    {
                        "incident_id": alarm.incident_id,
                        "district": alarm.district or CITY_SCOPE,
                        "state": "closed",
                    },
                )
            )
        return [("alarm", repo.alarm_item(alarm)), *items]

    async def operate(
        self,
        alarm_ids: Sequence[str],
        action: str,
        principal: str,
        *,
        target: str | None = None,
        shelf: timedelta | None = None,
        reason: str = "",
    ) -> list[dict[str, Any]]:
        """Acknowledge, clear, shelve (for ``shelf``) or unshelve alarms as ``principal``: lifecycle check,
        audit, stream, one transaction.

        404 for an unknown alarm, 409 when the lifecycle does not allow the action.
        """
        now = datetime.now(UTC)
        if action == "shelve":
            shelf = shelf or timedelta(hours=1)

            def step(alarm: Alarm, who: str, at: datetime) -> Alarm:
                return shelve(alarm, who, at, shelf, reason)

        elif action == "unshelve":

            def step(alarm: Alarm, who: str, at: datetime) -> Alarm:
                return unshelve(alarm)

        else:
            step = acknowledge if action == "acknowledge" else clear
        async with self.pool.acquire() as conn, conn.transaction():
            stream: list[tuple[str, dict]] = []
            done: list[dict[str, Any]] = []
            for alarm_id in alarm_ids:
                current = await repo.alarm_for_update(conn, alarm_id)
                if current is None:
                    raise ApiError(404, "not_found", "no such alarm", [{"alarm_id": alarm_id}])
                try:
                    updated = step(current, principal, now)
                except LifecycleError as exc:
                    raise ApiError(
                        409, "invalid_transition", str(exc), [{"alarm_id": alarm_id, "state": current.state}]
                    ) from None
                stream += await self._save(conn, current, updated)
                await record_audit(
                    conn,
                    principal=principal,
                    service="city",
                    action=f"alarm.{action}",
                    target=target or alarm_id,
                    detail={
                        "alarm_id": alarm_id,
                        "from": current.state,
                        "to": updated.state,
                        "incident_id": current.incident_id,  # an alarm id recurs across incidents
                    },
                )
                done.append(repo.alarm_item(updated))
            items = await repo.insert_stream_items(conn, stream)
        if items:
            await self.hub.notify(max(i["seq"] for i in items))
        return done

    async def refresh_gauges(self) -> None:
        """Set ``ioc_city_alarms_open`` from the database (right across restarts and replicas)."""
        counts = await repo.open_alarm_counts(self.pool)
        ALARMS_OPEN.clear()
        for (domain, severity), n in counts.items():
            ALARMS_OPEN.labels(domain, severity).set(n)
