"""The kiosk service app (port 8103): registry, ingest, the background registry refresh and the outbox relay."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from services.kiosk import api
from services.kiosk.service import KioskService
from services.kiosk.settings import KioskSettings
from shared.contracts import TOPICS
from shared.http import ServiceContext, create_service_app

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: KioskSettings | None = None) -> FastAPI:
    """Build the kiosk service app (nothing connects before the lifespan starts)."""
    settings = settings or KioskSettings()

    async def on_start(ctx: ServiceContext) -> None:
        service = KioskService(settings, ctx)
        await service.load()
        app.state.kiosk_service = service
        # Other replicas (and the bulk import) write too: reload the in-memory registry now and then.
        ctx.spawn(service.registry.run_forever(settings.registry_refresh_seconds), "kiosk:registry-refresh")
        ctx.spawn(service.outbox.run(), "kiosk:outbox-relay")

    async def on_stop(ctx: ServiceContext) -> None:
        service: KioskService | None = getattr(app.state, "kiosk_service", None)
        if service is not None:
            await service.outbox.flush()  # best effort: what is left goes out at the next start

    app = create_service_app(
        settings,
        name="kiosk",
        title="IOC kiosk service",
        description="Public-service kiosks: fleet registry, heartbeats, peripheral states and sessions in; "
        "CloudEvents out on ioc.kiosk.*; availability and session KPIs from the kiosk-kpi processor.",
        routers=[api.router],
        migrations=MIGRATIONS,
        on_start=on_start,
        on_stop=on_stop,
        topics=[t for t in TOPICS.values() if t.owner == "kiosk"],
    )
    return app
