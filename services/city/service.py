"""The city service's use cases: :class:`CityService`.

- its consumer folds ``ioc.city.kpis`` into time series (raw, roll-ups), current values and ``ioc_kpi_value``
  gauges, and ``ioc.city.alarms`` and every ``ioc.<domain>.alarms`` into one alarm model with its lifecycle,
  correlated into incidents per district;
- every change becomes a numbered stream item the console's Server-Sent Events replay from;
- operator actions (acknowledge, clear, shelve) go through the same lifecycle functions and are audited;
- the reads of the API (current KPIs, history, districts, alarms), the live streams and the live tail, and the
  forward of archive extracts to the archive service.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Gauge

from services.city import repository as repo
from services.city import service_assets, service_map
from services.city.alarming import (
    BUDGET_PER_10_MINUTES,
    CHATTER_WINDOW,
    fold_source_change,
    level_kpis,
    rate_per_10_minutes,
    release_chattering,
    shelve,
    unshelve,
)
from services.city.domain import (
    CITY_SCOPE,
    Alarm,
    LifecycleError,
    acknowledge,
    choose_step,
    clear,
    correlate,
    correlate_any,
    join_incident,
    open_incident,
    worst_status,
)
from services.city.service_reliability import reliability_report
from services.city.settings import CitySettings
from shared.areas import CITY_CODE, hanoi
from shared.auth import (
    SESSION_COOKIE,
    STREAM_TICKET_SECONDS,
    ApiError,
    Principal,
    issue_stream_ticket,
    record_audit,
)
from shared.contracts import TOPICS, TopicSpec
from shared.contracts.cloudevents import EventDecodeError, ReceivedEvent, decode, parse_time
from shared.kafka.aiokafka_adapter import refresh_metadata
from shared.kpis import KpiDefinition
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


class StreamSlots:
    """Concurrent Server-Sent Events streams (stream and tail) per principal and in all: a principal over its
    share gets 429, the service over its total 503, both with Retry-After, so no caller can hold them all."""

    def __init__(self, per_principal: int, total: int):
        self.per_principal = per_principal
        self.total = total
        self.held: dict[str, int] = {}

    def acquire(self, principal_id: str) -> Callable[[], None]:
        if sum(self.held.values()) >= self.total:
            raise ApiError(
                503,
                "too_many_streams",
                "the service holds its maximum of live streams; retry later",
                headers={"Retry-After": "5"},
            )
        if self.held.get(principal_id, 0) >= self.per_principal:
            raise ApiError(
                429,
                "too_many_streams",
                f"this principal already holds {self.per_principal} live streams; close one first",
                headers={"Retry-After": "5"},
            )
        self.held[principal_id] = self.held.get(principal_id, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = self.held.get(principal_id, 1) - 1
                if left > 0:
                    self.held[principal_id] = left
                else:
                    self.held.pop(principal_id, None)

        return release


Still = Callable[[], Awaitable[bool]]
"""Whether the client of a live stream still wants it (connected, and its session still signed in)."""

LEVEL_KPIS = level_kpis()
# What the alarm list's ``state`` filter selects; open/active/acknowledged leave shelved alarms out (until their
# shelf expires), "shelved" lists them.
ALARM_STATES = {
    "shelved": ("active", "acknowledged"),
    "open": ("active", "acknowledged"),
    "active": ("active",),
    "acknowledged": ("acknowledged",),
    "cleared": ("cleared",),
    "all": ("active", "acknowledged", "cleared"),
}
ARCHIVE_MEDIA = (
    "text/csv",
    "application/vnd.apache.parquet",
    "application/json",
    "application/problem+json",
)


@dataclass(frozen=True)
class ArchiveAnswer:
    """The archive service's answer to a forwarded extract request, as the city passes it on."""

    content: bytes
    status_code: int
    media_type: str
    headers: dict[str, str]


class CityService:
    """The city's use cases: the consumer handler, operator actions, the API's reads and the live streams."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: CitySettings,
        definitions: dict[str, KpiDefinition],
        *,
        hub: StreamHub | None = None,
    ):
        self.pool = pool
        self.settings = settings
        self.definitions = definitions
        self.correlation_window = timedelta(minutes=settings.correlation_minutes)
        self.incident_span = timedelta(minutes=settings.incident_span_minutes)
        self.hub = hub or StreamHub()
        self.slots = StreamSlots(settings.sse_max_streams_per_principal, settings.sse_max_streams)

    # The consumer and the alarm lifecycle ---------------------------------------------------------------------
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

    async def apply_retention(self, now: datetime) -> dict[str, int]:
        """Delete time series and stream items past their retention; how many rows of each went."""
        s = self.settings
        return await repo.delete_expired(
            self.pool,
            now,
            raw_days=s.raw_retention_days,
            minute_days=s.minute_retention_days,
            hour_days=s.hour_retention_days,
            stream_hours=s.stream_retention_hours,
        )

    # KPIs -------------------------------------------------------------------------------------------------
    def kpi_definitions(self) -> list[dict[str, Any]]:
        return [_definition_body(d) for d in sorted(self.definitions.values(), key=lambda d: d.id)]

    async def current_kpis(
        self,
        *,
        domain: str | None = None,
        scope_level: str | None = None,
        scope_code: str | None = None,
        kpi: str | None = None,
        trend_points: int = 0,
    ) -> list[dict[str, Any]]:
        """Current values with their definition, each marked running or complete (:meth:`_with_windows`)."""
        rows = await repo.current_kpis(
            self.pool,
            domain=domain,
            scope_level=scope_level,
            scope_code=scope_code,
            kpi=kpi,
            trend_points=trend_points,
        )
        return await self.annotate_kpis(rows)

    async def annotate_kpis(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Current-value rows with their definition, each marked running or complete (:meth:`_with_windows`)."""
        await self._with_windows(rows)
        return [_with_definition(r, self.definitions) for r in rows]

    async def _with_windows(self, rows: list[dict[str, Any]]) -> None:
        """Mark each current value running (its window still filling) or complete; give a running one the last
        complete window of its series (``complete``), which is what tiles show first."""
        now = datetime.now(UTC)
        running = []
        for r in rows:
            r["running"] = r["window_start"] + timedelta(seconds=r["window_seconds"]) > now
            r["complete"] = None if r["running"] else {k: r[k] for k in ("window_start", "value", "status")}
            if r["running"]:
                running.append((r["kpi"], r["scope_level"], r["scope_code"], r["window_seconds"]))
        found = await repo.last_complete_values(self.pool, running, now)
        for r in rows:
            if r["running"]:
                r["complete"] = found.get((r["kpi"], r["scope_level"], r["scope_code"], r["window_seconds"]))

    async def kpi_history(
        self,
        *,
        kpi: str,
        scope_level: str,
        scope_code: str,
        start: datetime,
        end: datetime,
        step: str,
        window_seconds: int | None,
    ) -> dict[str, Any]:
        """A KPI's values from ``start`` to ``end``; by default of its primary window (else the first stored),
        at ``step`` (``auto``: chosen from the range). 404 when the KPI has no values for the scope."""
        definition = self.definitions.get(kpi)
        if window_seconds is None:
            windows = await repo.series_windows(self.pool, kpi, scope_level, scope_code)
            if definition is not None and (not windows or definition.windows[0] in windows):
                window_seconds = definition.windows[0]
            elif windows:
                window_seconds = windows[0]
            else:
                raise ApiError(
                    404,
                    "not_found",
                    "no values for this KPI and scope",
                    [{"kpi": kpi, "scope_level": scope_level, "scope_code": scope_code}],
                )
        chosen = choose_step(start, end) if step == "auto" else step
        points = await repo.kpi_history(
            self.pool,
            kpi=kpi,
            scope_level=scope_level,
            scope_code=scope_code,
            window_seconds=window_seconds,
            start=start,
            end=end,
            step=chosen,
        )
        return {
            "kpi": kpi,
            "scope_level": scope_level,
            "scope_code": scope_code,
            "window_seconds": window_seconds,
            "step": chosen,
            "from": start,
            "to": end,
            "unit": definition.unit if definition else None,
            "points": points,
        }

    async def reliability(
        self, *, scope_level: str, scope_code: str, first_day: date, last_day: date
    ) -> dict[str, Any]:
        return await reliability_report(
            self.pool,
            scope_level=scope_level,
            scope_code=scope_code,
            first_day=first_day,
            last_day=last_day,
        )

    # Districts ----------------------------------------------------------------------------------------------
    async def districts(self) -> list[dict[str, Any]]:
        statuses = await repo.district_statuses(self.pool)
        items = []
        for a in sorted(hanoi().districts, key=lambda a: a.code):
            s = statuses.get(a.code, {"statuses": [], "severities": []})
            items.append(
                {
                    "code": a.code,
                    "name": a.name,
                    "kind": a.kind,
                    # The colour follows the open alarms (managed: judged on settled windows, with delays and
                    # deadbands), not the raw status of every filling window: ok when KPIs arrive and none is
                    # open.
                    "status": worst_status(["ok"] if s["statuses"] else [], s["severities"]),
                    "open_alarms": len(s["severities"]),
                    "kpis_warning": s["statuses"].count("warning"),
                    "kpis_critical": s["statuses"].count("critical"),
                }
            )
        return items

    async def district(self, code: str) -> dict[str, Any]:
        """One top area (a district in 2019, a commune or ward in 2025): its KPIs, open alarms and incidents."""
        area = hanoi().areas.get(code)
        if area is None or area.parent != CITY_CODE:
            raise ApiError(404, "not_found", "no such district", [{"district": code}])
        kpis = await self.current_kpis(scope_level="district", scope_code=code, trend_points=12)
        alarms = await repo.list_alarms(
            self.pool, states=("active", "acknowledged"), district=code, shelved=False
        )
        incidents = await repo.list_incidents(self.pool, state="open", district=code)
        return {
            "code": area.code,
            "name": area.name,
            "kind": area.kind,
            "status": worst_status(["ok"] if kpis else [], [a["severity"] for a in alarms]),
            "kpis": kpis,
            "alarms": alarms,
            "incidents": incidents,
        }

    async def area_status(self, kpi: str | None, now: datetime) -> dict[str, Any]:
        """The console map: per top area the status of ``kpi`` (none: the worst of every KPI and alarm), its
        assets in alarm and open incidents (:func:`services.city.service_map.area_status`). 404 for an unknown
        KPI."""
        definition = None
        if kpi is not None:
            definition = self.definitions.get(kpi)
            if definition is None:
                raise ApiError(404, "not_found", "no such KPI", [{"kpi": kpi}])
        return await service_map.area_status(
            self.pool,
            codes=[a.code for a in hanoi().top_areas],
            kpi=definition,
            level_kpi=kpi in LEVEL_KPIS,
            now=now,
        )

    # Drill-down pages, multi-series history, daily report (services/city/service_assets.py) ------------------
    async def area_page(self, code: str) -> dict[str, Any]:
        page = await service_assets.area_page(self.pool, code, self.definitions)
        if page is None:
            raise ApiError(404, "not_found", "no such area", [{"area": code}])
        page["kpis"] = await self.annotate_kpis(page["kpis"])
        return page

    async def assets_in_alarm(self, area: str | None) -> list[dict[str, Any]]:
        return await service_assets.assets_in_alarm(self.pool, area)

    async def asset_page(
        self, kind: str, asset_id: str, fetch: service_assets.Fetch, now: datetime
    ) -> dict[str, Any]:
        page = await service_assets.asset_page(self.pool, kind, asset_id, fetch, now)
        page["kpis"] = await self.annotate_kpis(page["kpis"])
        return page

    async def intersection_atspm(
        self, asset_id: str, start: datetime, end: datetime, fetch: service_assets.Fetch
    ) -> tuple[int, dict[str, Any]]:
        return await service_assets.intersection_atspm(asset_id, start, end, fetch)

    async def multi_series(
        self,
        *,
        kpi: str,
        scopes: list[str],
        start: datetime,
        end: datetime,
        step: str,
        window_seconds: int | None,
        compare_previous: bool,
    ) -> dict[str, Any]:
        """One KPI for several areas on one time base (``step`` ``auto``: chosen from the range), of its primary
        window unless ``window_seconds``; 404 for a KPI without definition and window."""
        definition = self.definitions.get(kpi)
        if definition is None and window_seconds is None:
            raise ApiError(404, "not_found", "no such KPI", [{"kpi": kpi}])
        window = window_seconds or definition.windows[0]  # type: ignore[union-attr]
        chosen = choose_step(start, end) if step == "auto" else step
        return await service_assets.multi_series(
            self.pool, definition, kpi, scopes, start, end, chosen, window, compare_previous
        )

    async def daily_report(self, day: date) -> dict[str, Any]:
        return await service_assets.daily_report(self.pool, day, self.definitions)

    def domain_fetcher(self, *, authorization: str | None, session_id: str | None) -> service_assets.Fetch:
        """GET a domain service's JSON with the caller's own credential (its Authorization header, else its
        session cookie): (status, body); 502 when it does not answer."""
        import httpx

        settings = self.settings
        bases = {
            "traffic": settings.traffic_url,
            "kiosk": settings.kiosk_url,
            "dossier": settings.dossier_url,
        }
        headers = {"Authorization": authorization} if authorization else {}
        if (
            not authorization and session_id
        ):  # a signed-in operator: the domain services check the same session
            headers["Cookie"] = f"{SESSION_COOKIE}={session_id}"

        async def fetch(service: str, path: str, params: dict[str, str]) -> tuple[int, Any]:
            url = bases[service].rstrip("/") + path
            try:
                async with httpx.AsyncClient(timeout=settings.domain_timeout_seconds) as client:
                    r = await client.get(url, params=params, headers=headers)
            except httpx.HTTPError as exc:
                return 502, {"error": {"code": f"{service}_unavailable", "message": type(exc).__name__}}
            try:
                body = r.json()
            except ValueError:
                return 502, {"error": {"code": f"{service}_unavailable", "message": "not JSON"}}
            return r.status_code, body

        return fetch

    # Alarms and incidents -----------------------------------------------------------------------------------
    async def alarms(
        self,
        *,
        state: str,
        district: str | None = None,
        domain: str | None = None,
        incident_id: str | None = None,
        limit: int = 200,
    ) -> list[dict[str, Any]]:
        """Alarms of every domain (one model), most severe first; ``state`` a key of :data:`ALARM_STATES`."""
        return await repo.list_alarms(
            self.pool,
            states=ALARM_STATES[state],
            district=district,
            domain=domain,
            incident_id=incident_id,
            limit=limit,
            shelved=True
            if state == "shelved"
            else (False if state in ("open", "active", "acknowledged") else None),
        )

    async def alarm_stats(self, minutes: int) -> dict[str, Any]:
        since = datetime.now(UTC) - timedelta(minutes=minutes)
        rates = await repo.alarm_rates(self.pool, since)
        return {
            "minutes": minutes,
            "from": since,
            **rates,
            "per_10_minutes": rate_per_10_minutes(rates["annunciated"], minutes),
            "budget_per_10_minutes": BUDGET_PER_10_MINUTES,
        }

    async def operate_incident(self, incident_id: str, action: str, principal: Principal) -> dict[str, Any]:
        """Acknowledge (its active alarms) or clear (all its alarms) an incident through :meth:`operate`."""
        async with self.pool.acquire() as conn:
            ids = await repo.incident_alarm_ids(conn, incident_id)
        if ids is None:
            raise ApiError(404, "not_found", "no such incident", [{"incident_id": incident_id}])
        if action == "acknowledge":
            current = await repo.list_alarms(
                self.pool, states=("active",), incident_id=incident_id, limit=1000
            )
            ids = [a["alarm_id"] for a in current]
        done = await self.operate(ids, action, principal.id, target=incident_id) if ids else []
        return {"incident_id": incident_id, "alarms": done}

    # Live streams -------------------------------------------------------------------------------------------
    async def stream_ticket(self, principal: Principal) -> dict[str, Any]:
        ticket = await issue_stream_ticket(self.pool, principal)
        return {"ticket": ticket, "expires_in": STREAM_TICKET_SECONDS}

    async def stream_items(self, after: int | None, kinds: list[str], still: Still) -> AsyncIterator[bytes]:
        """The numbered stream items of ``kinds`` after ``after`` (default: from now), then live ones, as
        Server-Sent Events, until the stream's time is up or ``still`` says the client no longer wants it."""
        settings = self.settings
        lo, hi = await repo.stream_bounds(self.pool)
        yield b"retry: 1000\n\n"
        if after is None:
            after = hi
        elif lo > 0 and after < lo - 1:
            yield sse("reset", {"reason": "items after this id were deleted by retention; reload"})
        yield sse("hello", {"after": after})
        started = last_sent = time.monotonic()
        while True:
            head_before = self.hub.head
            rows = await repo.stream_after(self.pool, after, kinds)
            for r in rows:
                yield sse(r["kind"], r["payload"], r["seq"])
                after = r["seq"]
            if rows:
                last_sent = time.monotonic()
                if len(rows) >= 500:
                    continue
            now = time.monotonic()
            if now - started > settings.sse_max_seconds or not await still():
                return  # time is up, the client left, or it signed out (the console shows the sign-in form)
            if now - last_sent > settings.sse_heartbeat_seconds:
                yield b": keep-alive\n\n"
                last_sent = now
            await self.hub.wait(max(after, head_before), settings.sse_poll_seconds)

    def tail_topics(self, principal: Principal) -> list[dict[str, Any]]:
        """The topics of the catalogue ``principal`` may tail."""
        return [
            {"name": t.name, "owner": t.owner, "description": t.description, "scope": tail_scope(t)}
            for t in sorted(TOPICS.values(), key=lambda t: t.name)
            if may_tail(principal, t)
        ]

    def check_tail(self, principal: Principal, topic: str) -> None:
        """404 for a topic outside the catalogue, 403 for one ``principal`` may not tail."""
        spec = TOPICS.get(topic)
        if spec is None:
            raise ApiError(404, "not_found", "no such topic in the catalogue", [{"topic": topic}])
        if not may_tail(principal, spec):
            raise ApiError(
                403,
                "forbidden",
                f"tailing {topic} needs the scope {tail_scope(spec)!r} (and no agency confinement for dossier "
                "events)",
                [{"field": "topic", "reason": "not readable by this principal"}],
            )

    async def tail_records(self, topic: str, needle: str, still: Still) -> AsyncIterator[bytes]:
        """A topic's new records, decoded, containing ``needle`` (lower case; empty: all), as Server-Sent
        Events, until the stream's time is up or ``still`` says the client no longer wants it."""
        settings = self.settings
        consumer = AIOKafkaConsumer(
            **settings.kafka.client_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=200,
        )
        started_ms = int(time.time() * 1000)
        try:
            await consumer.start()
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await refresh_metadata(consumer)  # no public way to refresh metadata
                parts = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            yield b"retry: 2000\n\n"
            yield sse("hello", {"topic": topic, "partitions": len(tps)})
            started = last_sent = time.monotonic()
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
                for recs in batch.values():
                    for r in recs:
                        # The embedded broker's "latest" offset can be stale: skip records older than the tail.
                        if r.timestamp is not None and r.timestamp < started_ms - 2000:
                            continue
                        item = _tail_item(r)
                        if needle and needle not in orjson.dumps(item).decode().lower():
                            continue
                        yield sse("record", item)
                        last_sent = time.monotonic()
                now = time.monotonic()
                if now - started > settings.sse_max_seconds or not await still():
                    return
                if now - last_sent > settings.sse_heartbeat_seconds:
                    yield b": keep-alive\n\n"
                    last_sent = now
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # tell the console and end the stream; it reconnects
            log.warning("tail of %s failed: %s", topic, type(exc).__name__)
            yield sse("error", {"reason": f"broker error: {type(exc).__name__}"})
        finally:
            await consumer.stop()

    # Archive extracts -------------------------------------------------------------------------------------
    async def archive_extract(
        self, path: str, params: dict[str, str], *, authorization: str | None, session_id: str | None
    ) -> ArchiveAnswer:
        """Forward a GET to the archive service as the caller (its own Authorization header, or its session
        cookie; never a key of the city's): the archive checks ``archive:read`` and audits under the caller's
        id. 502 when the archive does not answer, or answers with an unexpected type."""
        import httpx

        url = self.settings.archive_url.rstrip("/") + path
        headers = {"Authorization": authorization} if authorization else {}
        if not authorization and session_id:  # a signed-in operator: the archive checks the same session
            headers["Cookie"] = f"{SESSION_COOKIE}={session_id}"
        try:
            async with httpx.AsyncClient(timeout=self.settings.archive_timeout_seconds) as client:
                r = await client.get(url, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise ApiError(
                502, "archive_unavailable", f"the archive service did not answer: {type(exc).__name__}"
            ) from None
        media = r.headers.get("content-type", "application/octet-stream")
        if not media.startswith(ARCHIVE_MEDIA):
            raise ApiError(502, "archive_unavailable", "the archive service answered with an unexpected type")
        keep = {
            k: r.headers[k] for k in ("content-disposition", "x-row-count", "retry-after") if k in r.headers
        }
        return ArchiveAnswer(r.content, r.status_code, media, keep)


def _definition_body(d: KpiDefinition) -> dict[str, Any]:
    body = d.model_dump(mode="json")
    # A level KPI (things in fault now) is shown and judged on its running window (services/city/alarm_rules.yaml)
    body["level"] = d.id in LEVEL_KPIS
    return body


def _with_definition(row: dict[str, Any], defs: dict[str, KpiDefinition]) -> dict[str, Any]:
    d = defs.get(row["kpi"])
    row["name"] = d.name.model_dump() if d is not None else {"vi": row["kpi"], "en": row["kpi"]}
    row["direction"] = d.direction if d is not None else "none"
    row["headline"] = d.headline if d is not None else False
    row["thresholds"] = d.thresholds.model_dump() if d is not None else {"warning": None, "critical": None}
    return row


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One Server-Sent Event (the live streams' wire format)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: ".encode() + orjson.dumps(data, default=str) + b"\n\n"


def tail_scope(topic: TopicSpec) -> str:
    """The scope a principal needs to tail ``topic``: the city's figures (every domain's KPIs and alarms, the
    city's own topics) are ``city:read``; a domain's entity streams need that domain's ``<owner>:read``; the
    platform's (audit trail, dead letters of every topic) ``platform:read``."""
    if topic.owner == "city" or topic.name.endswith((".kpis", ".alarms")):
        return "city:read"
    return f"{topic.owner}:read"


def may_tail(principal: Principal, topic: TopicSpec) -> bool:
    if topic.internal or not principal.has_scope(tail_scope(topic)):
        return False
    # A principal confined to one agency never sees other agencies' dossier events.
    confined = principal.kind == "agency" or principal.attributes.get("agency") is not None
    return not (confined and topic.owner == "dossier" and tail_scope(topic) != "city:read")


def _tail_item(record: Any) -> dict[str, Any]:
    base = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
    }
    try:
        ev = decode(record)
    except EventDecodeError as exc:
        return {**base, "error": exc.reason}
    return {
        **base,
        "type": ev.type,
        "source": ev.source,
        "id": ev.id,
        "time": ev.time,
        "subject": ev.subject,
        "key": ev.key,
        "data": ev.data,
    }
