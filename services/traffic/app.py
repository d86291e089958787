"""The traffic-signal service app (port 8102)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import FastAPI

from shared.contracts import TOPICS
from shared.contracts.common import DEAD_LETTER_TOPIC
from shared.contracts.traffic import MEASURES_TOPIC
from shared.http import ServiceContext, create_service_app
from shared.kafka import EventConsumer

from .api import router
from .service import TrafficService
from .settings import TrafficSettings

log = logging.getLogger(__name__)


def create_app(settings: TrafficSettings | None = None) -> FastAPI:
    """Build the traffic service (nothing connects until the lifespan starts)."""
    settings = settings or TrafficSettings()
    consumers: list[EventConsumer] = []

    async def on_start(ctx: ServiceContext) -> None:
        service = TrafficService(settings, ctx)
        await service.load()
        app.state.traffic_service = service
        ctx.spawn(service.registry.run_forever(settings.registry_refresh_seconds), "traffic-registry-refresh")
        ctx.spawn(service.outbox.run(), "traffic-outbox-relay")
        if settings.store_measures:
            consumer = EventConsumer(
                settings.kafka,
                group_id=settings.measures_store_group,
                topics=[MEASURES_TOPIC.name],
                handler=service.store_measures,
                publisher=ctx.publisher,
            )
            try:
                await consumer.start()
                consumers.append(consumer)
            except Exception:  # the broker may come later; retry in the background
                log.warning("measures consumer could not start; retrying")

                async def start_later() -> None:
                    while True:
                        await asyncio.sleep(5)
                        try:
                            await consumer.start()
                            consumers.append(consumer)
                            return
                        except Exception:  # retry until the broker is there
                            continue

                ctx.spawn(start_later(), "traffic-measures-consumer-start")

    async def on_stop(ctx: ServiceContext) -> None:
        while consumers:
            await consumers.pop().stop()
        service: TrafficService | None = getattr(app.state, "traffic_service", None)
        if service is not None:
            await service.outbox.flush()  # best effort: what is left goes out at the next start

    topics = [t for t in TOPICS.values() if t.owner == "traffic"] + [DEAD_LETTER_TOPIC]
    app = create_service_app(
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
    return app
