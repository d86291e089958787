"""The kiosk service app (port 8103): registry, ingest, and the background registry refresh/republish."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import FastAPI

from services.kiosk import api, repository
from services.kiosk.settings import KioskSettings
from shared.contracts import TOPICS
from shared.http import ServiceContext, create_service_app

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


async def _refresh_registry(ctx: ServiceContext, every: float) -> None:
    # Other replicas (and the bulk import) write too: reload the in-memory registry now and then.
    while True:
        await asyncio.sleep(every)
        try:
            assert ctx.pool is not None
            await ctx.extras["registry"].reload(ctx.pool)
        except Exception as exc:  # keep the last good copy; try again next round
            log.warning("registry reload failed: %s", type(exc).__name__)


async def _republish_registry(ctx: ServiceContext, every: float) -> None:
    # Registry writes commit to PostgreSQL first; entries whose publish failed are published from here.
    while True:
        try:
            assert ctx.pool is not None
            rows = await repository.unpublished(ctx.pool)
            if rows:
                await api.publish_registrations(ctx, rows)
        except Exception as exc:  # the broker or DB may be back next round
            log.warning("registry republish failed: %s", type(exc).__name__)
        await asyncio.sleep(every)


def create_app(settings: KioskSettings | None = None) -> FastAPI:
    """Build the kiosk service app (nothing connects before the lifespan starts)."""
    settings = settings or KioskSettings()

    async def on_start(ctx: ServiceContext) -> None:
        registry = api.RegistryCache()
        assert ctx.pool is not None
        await registry.reload(ctx.pool)
        ctx.extras["registry"] = registry
        ctx.spawn(_refresh_registry(ctx, settings.registry_refresh_seconds), "kiosk:registry-refresh")
        ctx.spawn(_republish_registry(ctx, settings.registry_republish_seconds), "kiosk:registry-republish")

    return create_service_app(
        settings,
        name="kiosk",
        title="IOC kiosk service",
        description="Public-service kiosks: fleet registry, heartbeats, peripheral states and sessions in; "
        "CloudEvents out on ioc.kiosk.*; availability and session KPIs from the kiosk-kpi processor.",
        routers=[api.router],
        migrations=MIGRATIONS,
        on_start=on_start,
        topics=[t for t in TOPICS.values() if t.owner == "kiosk"],
    )
