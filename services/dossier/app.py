"""The dossier service app: ``create_app(settings)``."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from shared.contracts.base import TOPICS
from shared.contracts.dossier import ALARM_TOPIC_NAME, KPI_TOPIC_NAME, LIFECYCLE_TOPIC
from shared.http import ServiceContext, create_service_app

from . import watcher
from .api import router
from .service import DossierService
from .settings import DossierSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: DossierSettings | None = None) -> FastAPI:
    """Build the dossier service (nothing connects until the lifespan starts)."""
    settings = settings or DossierSettings()

    async def on_start(ctx: ServiceContext) -> None:
        service = DossierService(settings, ctx)
        await service.start()
        app.state.dossier_service = service
        # A calendar that changed since the open dossiers' due dates were computed reschedules them first.
        await watcher.apply_calendar_change(service)
        ctx.spawn(service.outbox.run(), "dossier-outbox-relay")
        ctx.spawn(
            watcher.run(
                service,
                settings.deadline_warning_days,
                settings.deadline_scan_seconds,
                calendar_horizon_days=settings.calendar_horizon_days,
            ),
            "dossier-deadline-watcher",
        )

    async def on_stop(ctx: ServiceContext) -> None:
        service: DossierService | None = getattr(app.state, "dossier_service", None)
        if service is not None:
            await service.outbox.flush()

    app = create_service_app(
        settings,
        name="dossier",
        title="IOC dossier service",
        description="One-stop-shop administrative dossiers: lifecycle with national status codes 1-10, "
        "working-day deadlines, lifecycle events through a transactional outbox, Decision 766 indices.",
        routers=[router],
        migrations=MIGRATIONS,
        on_start=on_start,
        on_stop=on_stop,
        topics=[LIFECYCLE_TOPIC, TOPICS[KPI_TOPIC_NAME], TOPICS[ALARM_TOPIC_NAME]],
    )
    return app
