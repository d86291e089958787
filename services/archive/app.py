"""The archive's extracts API: ``create_app(settings)`` (the archiver itself runs as ``ioc archive run``)."""

from __future__ import annotations

from fastapi import FastAPI

from services.archive.api import router
from services.archive.settings import ArchiveSettings
from services.archive.store import ArchiveStore
from shared.http import ServiceContext, create_service_app


def create_app(settings: ArchiveSettings | None = None) -> FastAPI:
    """Build the archive API (nothing connects until the lifespan starts)."""
    settings = settings or ArchiveSettings()

    async def on_start(ctx: ServiceContext) -> None:
        app.state.archive_store = ArchiveStore(settings.root, settings.storage_options)

    app = create_service_app(
        settings,
        name="archive",
        title="IOC archive",
        description="Every event of the city's topics, archived as Parquet: bounded CSV/Parquet extracts by "
        "topic, time range, area and entity.",
        routers=[router],
        on_start=on_start,
        topics=[],
    )
    return app
