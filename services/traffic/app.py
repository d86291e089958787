"""The traffic-signal service app (port 8102)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import FastAPI

from shared.contracts import TOPICS
from shared.contracts.cloudevents import ReceivedEvent, parse_time
from shared.contracts.common import DEAD_LETTER_TOPIC
from shared.contracts.traffic import MEASURES_TOPIC, IntersectionMeasuresComputed, PhaseMeasuresComputed
from shared.http import ServiceContext, create_service_app
from shared.kafka import EventConsumer

from . import repository
from .api import refresh_registry, router
from .domain import IngestScreen
from .settings import TrafficSettings

log = logging.getLogger(__name__)
MEASURES_TYPE = PhaseMeasuresComputed.__ioc_event_type__.type  # type: ignore[attr-defined]
INTERSECTION_MEASURES_TYPE = IntersectionMeasuresComputed.__ioc_event_type__.type  # type: ignore[attr-defined]


def measure_rows(events: list[ReceivedEvent]) -> list[tuple]:
    """Rows for ``phase_measures`` from measure events (the payload is stored whole as JSON)."""
    rows = []
    for ev in events:
        if ev.type != MEASURES_TYPE:
            continue
        m = ev.data
        rows.append(
            (
                m["intersection_id"],
                m["phase"],
                parse_time(m["bin_start"]),
                m["bin_seconds"],
                m.get("district"),
                m,
                parse_time(m["computed_at"]),
            )
        )
    return rows


def intersection_measure_rows(events: list[ReceivedEvent]) -> list[tuple]:
    """Rows for ``intersection_measures`` from intersection measure events (the payload stored whole)."""
    return [
        (
            ev.data["intersection_id"],
            parse_time(ev.data["bin_start"]),
            ev.data["bin_seconds"],
            ev.data.get("district"),
            ev.data,
            parse_time(ev.data["computed_at"]),
        )
        for ev in events
        if ev.type == INTERSECTION_MEASURES_TYPE
    ]


def create_app(settings: TrafficSettings | None = None) -> FastAPI:
    """Build the traffic service (nothing connects until the lifespan starts)."""
    settings = settings or TrafficSettings()

    async def on_start(ctx: ServiceContext) -> None:
        ctx.extras["screen"] = IngestScreen(
            future_tolerance_s=settings.future_tolerance_seconds,
            out_of_order_tolerance_s=settings.out_of_order_tolerance_seconds,
            max_age_s=settings.max_event_age_seconds,
        )
        ctx.extras["backfill_screen"] = IngestScreen(
            future_tolerance_s=settings.future_tolerance_seconds,
            out_of_order_tolerance_s=settings.out_of_order_tolerance_seconds,
            max_age_s=None,
        )
        await refresh_registry(ctx)

        async def refresh_forever() -> None:
            while True:
                await asyncio.sleep(settings.registry_refresh_seconds)
                try:
                    await refresh_registry(ctx)
                except Exception:  # keep serving from the cache; retry next period
                    log.warning("registry refresh failed")

        ctx.spawn(refresh_forever(), "traffic-registry-refresh")
        if settings.store_measures:
            assert ctx.pool is not None
            pool = ctx.pool

            async def store(events: list[ReceivedEvent]) -> None:
                rows = measure_rows(events)
                if rows:
                    await repository.upsert_measures(pool, rows)
                rows = intersection_measure_rows(events)
                if rows:
                    await repository.upsert_intersection_measures(pool, rows)

            consumer = EventConsumer(
                settings.kafka,
                group_id=settings.measures_store_group,
                topics=[MEASURES_TOPIC.name],
                handler=store,
                publisher=ctx.publisher,
            )
            try:
                await consumer.start()
                ctx.extras["measures_consumer"] = consumer
            except Exception:  # the broker may come later; retry in the background
                log.warning("measures consumer could not start; retrying")

                async def start_later() -> None:
                    while True:
                        await asyncio.sleep(5)
                        try:
                            await consumer.start()
                            ctx.extras["measures_consumer"] = consumer
                            return
                        except Exception:  # retry until the broker is there
                            continue

                ctx.spawn(start_later(), "traffic-measures-consumer-start")

    async def on_stop(ctx: ServiceContext) -> None:
        consumer = ctx.extras.get("measures_consumer")
        if consumer is not None:
            await consumer.stop()

    topics = [t for t in TOPICS.values() if t.owner == "traffic"] + [DEAD_LETTER_TOPIC]
    return create_service_app(
        settings,
        name="traffic",
        title="IOC traffic signals",
        description="Signal controller hi-res event logs in; live signal state, alarms and ATSPM signal "
        "performance measures out.",
        routers=[router],
        migrations=Path(__file__).parent / "migrations",
        on_start=on_start,
        on_stop=on_stop,
        topics=topics,
    )
