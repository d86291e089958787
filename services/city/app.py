"""The city service: the city store, its API and the operations console (served at ``/``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from services.city import repository as repo
from services.city.api import router as api_router
from services.city.api_assets import router as assets_router
from services.city.api_auth import router as auth_router
from services.city.api_incidents import router as incidents_router
from services.city.api_map import router as map_router
from services.city.domain import load_definitions
from services.city.incidents import load_playbook
from services.city.service_incidents import IncidentService
from services.city.settings import CitySettings
from services.city.store import CityStore, StreamHub, store_topics
from shared.http import ServiceContext, create_service_app
from shared.kafka import EventConsumer

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
STATIC = HERE / "static"
MIGRATIONS = HERE / "migrations"
GAUGE_REFRESH_SECONDS = 15.0

console = APIRouter(include_in_schema=False)


@console.get("/")
async def index() -> FileResponse:
    """The operations console (plain HTML/CSS/JS, no build step)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def _start_consumer(ctx: ServiceContext, consumer: EventConsumer) -> None:
    # The broker may come up after the service: keep trying instead of failing the start-up.
    while True:
        try:
            await consumer.start()
            ctx.extras["consumer_started"] = True
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever the cause, retry
            log.warning("city store consumer cannot start yet (%s); retrying", type(exc).__name__)
            await asyncio.sleep(2)


async def _maintenance(ctx: ServiceContext, settings: CitySettings, store: CityStore) -> None:
    """Retention of the time series and stream, the open-alarm gauges, releasing chattering alarms."""
    last_retention = 0.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            await store.refresh_gauges()
            await store.release_chattering(datetime.now(UTC))
            if loop.time() - last_retention >= settings.retention_interval_seconds:
                last_retention = loop.time()
                deleted = await repo.delete_expired(
                    ctx.pool,
                    datetime.now(UTC),
                    raw_days=settings.raw_retention_days,
                    minute_days=settings.minute_retention_days,
                    hour_days=settings.hour_retention_days,
                    stream_hours=settings.stream_retention_hours,
                )
                log.info("retention applied", extra={"deleted": deleted})
        except asyncio.CancelledError:
            raise
        except Exception:  # try again next round
            log.exception("city maintenance failed")
        await asyncio.sleep(GAUGE_REFRESH_SECONDS)


def create_app(settings: CitySettings | None = None) -> FastAPI:
    """The city service app (nothing connects before the lifespan starts)."""
    settings = settings or CitySettings()
    definitions = load_definitions(settings.kpi_definitions_path)
    playbook = load_playbook()  # a broken procedures file stops the start-up, naming the mistake

    async def on_start(ctx: ServiceContext) -> None:
        assert ctx.pool is not None
        store = CityStore(
            ctx.pool,
            correlation_window=timedelta(minutes=settings.correlation_minutes),
            hub=StreamHub(),
            incident_span=timedelta(minutes=settings.incident_span_minutes),
        )
        consumer = EventConsumer(
            settings.kafka,
            group_id=settings.consumer_group,
            topics=store_topics(),
            handler=store.handle,
            publisher=ctx.publisher,
        )
        ctx.extras.update(store=store, definitions=definitions, consumer=consumer, consumer_started=False)
        ctx.spawn(_start_consumer(ctx, consumer), "city-consumer-start")
        ctx.spawn(_maintenance(ctx, settings, store), "city-maintenance")
        incidents = ctx.extras["incidents"] = IncidentService(ctx.pool, playbook, hub=store.hub)
        ctx.spawn(incidents.run(settings.incident_escalation_interval_seconds), "city-incident-escalation")

    async def on_stop(ctx: ServiceContext) -> None:
        if ctx.extras.get("consumer_started"):
            await ctx.extras["consumer"].stop()

    app = create_service_app(
        settings,
        name="city",
        title="IOC city layer",
        description="City KPIs per district and city-wide, their history, alarms and incidents across domains, "
        "live streams, and the operations console at `/`.",
        routers=[api_router, auth_router, map_router, incidents_router, assets_router, console],
        migrations=MIGRATIONS,
        on_start=on_start,
        on_stop=on_stop,
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
