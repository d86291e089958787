"""The meter service app: ``create_app(settings)`` (uvicorn factory via ``ioc``)."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI

from services.meter import memory
from services.meter.api import router
from services.meter.service import MeterService
from services.meter.settings import MeterSettings
from shared.contracts import TOPICS
from shared.http import ServiceContext, create_service_app

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)


def create_app(settings: MeterSettings | None = None) -> FastAPI:
    """Build the meter service app (nothing connects before the lifespan starts)."""
    settings = settings or MeterSettings()
    meter_settings = settings

    async def on_start(ctx: ServiceContext) -> None:
        assert ctx.pool is not None
        if meter_settings.heap_release_seconds > 0:
            memory.fix_mmap_threshold()
        service = MeterService(meter_settings, ctx.pool, ctx.publisher, ctx.source)
        await service.load()
        app.state.meter_service = service
        ctx.spawn(service.refresh_forever(), "meter-registry-refresh")
        ctx.spawn(
            service.register_writer.run_forever(meter_settings.register_flush_seconds),
            "meter-register-writer",
        )
        if meter_settings.heap_release_seconds > 0:
            ctx.spawn(
                memory.release_forever(meter_settings.heap_release_seconds, service.work_done),
                "meter-heap-release",
            )

    async def on_stop(ctx: ServiceContext) -> None:
        service: MeterService | None = getattr(app.state, "meter_service", None)
        if service is not None:
            try:
                await service.register_writer.flush()
            except Exception as exc:  # shutting down: the registers are rebuilt from later readings
                log.warning("could not persist register state at shutdown: %s", type(exc).__name__)

    app = create_service_app(
        settings,
        name="meter",
        title="IOC meter service",
        description="AMR smart electricity meters: registry, interval readings (OBIS), meter events, supply "
        "interruptions. Validated data is published as CloudEvents on ioc.meter.*.",
        routers=[router],
        migrations=MIGRATIONS,
        on_start=on_start,
        on_stop=on_stop,
        topics=[t for t in TOPICS.values() if t.owner in ("meter", "platform")],
    )
    return app
