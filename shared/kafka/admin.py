"""Idempotent topic creation from the catalogue."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.config import KafkaSettings
from shared.contracts import TOPICS, TopicSpec

log = logging.getLogger(__name__)


async def ensure_topics(kafka: KafkaSettings, specs: Iterable[TopicSpec] | None = None) -> list[str]:
    """Create the catalogue's topics that do not exist yet; return the names created.

    Safe to call from every service at start-up, concurrently: existing topics are left as they are.
    """
    specs = list(TOPICS.values() if specs is None else specs)
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                s.name,
                kafka.partitions_override or s.partitions,
                kafka.replication_factor,
                topic_configs=s.config(),
            )
            for s in specs
            if s.name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another service created them first
            log.info("topics created", extra={"topics": [t.name for t in missing]})
        return [t.name for t in missing]
    finally:
        await admin.close()
