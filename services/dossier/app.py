"""The dossier service app: ``create_app(settings)``."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from shared.contracts.base import TOPICS
from shared.contracts.dossier import ALARM_TOPIC_NAME, KPI_TOPIC_NAME, LIFECYCLE_TOPIC
from shared.http import ServiceContext, create_service_app
from shared.outbox import Outbox

from . import watcher
from .api import DossierRuntime, load_hierarchy_file, router
from .domain import calendar_from_csv
from .settings import DossierSettings

MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: DossierSettings | None = None) -> FastAPI:
    """Build the dossier service (nothing connects until the lifespan starts)."""
    settings = settings or DossierSettings()

    async def on_start(ctx: ServiceContext) -> None:
        relay = Outbox(
            ctx,
            batch_size=settings.outbox_batch_size,
            poll_seconds=settings.outbox_poll_seconds,
            max_backoff_seconds=settings.outbox_max_backoff_seconds,
            retention_seconds=settings.outbox_retention_seconds,
        )
        calendar = (
            calendar_from_csv(Path(settings.calendar_csv)) if settings.calendar_csv else calendar_from_csv()
        )
        await relay.install()
        rt = DossierRuntime(
            calendar=calendar, hierarchy=load_hierarchy_file(settings.hierarchy_csv), relay=relay
        )
        await rt.refresh(ctx)
        ctx.extras["dossier"] = rt
        ctx.extras["dossier_portal_sync_max_delay_s"] = settings.portal_sync_max_delay_seconds
        # A calendar that changed since the open dossiers' due dates were computed reschedules them first.
        await watcher.apply_calendar_change(ctx, rt)
        ctx.spawn(relay.run(), "dossier-outbox-relay")
        ctx.spawn(
            watcher.run(
                ctx,
                rt,
                settings.deadline_warning_days,
                settings.deadline_scan_seconds,
                calendar_horizon_days=settings.calendar_horizon_days,
            ),
            "dossier-deadline-watcher",
        )

    async def on_stop(ctx: ServiceContext) -> None:
        rt = ctx.extras.get("dossier")
        if rt is not None:
            await rt.relay.flush()

    return create_service_app(
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
