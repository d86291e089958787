"""The city service: its consumer, its API and the operations console (served at ``/``)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from services.city.api import router as api_router
from services.city.api_assets import router as assets_router
from services.city.api_auth import router as auth_router
from services.city.api_incidents import router as incidents_router
from services.city.api_map import router as map_router
from services.city.domain import load_definitions
from services.city.incidents import load_playbook
from services.city.service import CityService, store_topics
from services.city.service_incidents import IncidentService
from services.city.settings import CitySettings
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


async def _start_consumer(consumer: EventConsumer, started: list[EventConsumer]) -> None:
    # The broker may come up after the service: keep trying instead of failing the start-up.
    while True:
        try:
            await consumer.start()
            started.append(consumer)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever the cause, retry
            log.warning("city store consumer cannot start yet (%s); retrying", type(exc).__name__)
            await asyncio.sleep(2)


async def _maintenance(settings: CitySettings, city: CityService) -> None:
    """Retention of the time series and stream, the open-alarm gauges, releasing chattering alarms."""
    last_retention = 0.0
    loop = asyncio.get_running_loop()
    while True:
        try:
            await city.refresh_gauges()
            await city.release_chattering(datetime.now(UTC))
            if loop.time() - last_retention >= settings.retention_interval_seconds:
                last_retention = loop.time()
                deleted = await city.apply_retention(datetime.now(UTC))
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

    consumers: list[EventConsumer] = []  # the consumer once started (stopped at shutdown)

    async def on_start(ctx: ServiceContext) -> None:
        assert ctx.pool is not None
        city = CityService(ctx.pool, settings, definitions)
        incidents = IncidentService(ctx.pool, playbook, city, hub=city.hub)
        app.state.city_service = city
        app.state.incident_service = incidents
        app.state.oidc_cache = {}  # the OIDC provider's metadata (services/city/service_oidc.py)
        consumer = EventConsumer(
            settings.kafka,
            group_id=settings.consumer_group,
            topics=store_topics(),
            handler=city.handle,
            publisher=ctx.publisher,
        )
        ctx.spawn(_start_consumer(consumer, consumers), "city-consumer-start")
        ctx.spawn(_maintenance(settings, city), "city-maintenance")
        ctx.spawn(incidents.run(settings.incident_escalation_interval_seconds), "city-incident-escalation")

    async def on_stop(ctx: ServiceContext) -> None:
        while consumers:
            await consumers.pop().stop()

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
