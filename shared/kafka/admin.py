"""Idempotent topic creation from the catalogue, and the partition-count check of processors."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.config import KafkaSettings
from shared.contracts import TOPICS, TopicSpec

log = logging.getLogger(__name__)


class PartitionCountMismatch(RuntimeError):
    """A processor's source topics and its changelog disagree on partition counts.

    State is kept per source partition and keys were hashed with the old count: after a partition increase
    the state of a key sits in another partition than its new events. Folding on would split it silently, so
    the processor refuses to start until the changelog is re-keyed (docs/operations.md, "Adding partitions").
    """


def is_changelog(spec: TopicSpec) -> bool:
    return spec.internal and spec.compacted and spec.name.endswith(".changelog")


async def ensure_topics(kafka: KafkaSettings, specs: Iterable[TopicSpec] | None = None) -> list[str]:
    """Create the catalogue's topics that do not exist yet; return the names created.

    Safe to call from every service at start-up, concurrently: existing topics are left as they are. When
    ``specs`` hold a processor's changelog (a processor starting), every existing topic among them must have the
    partition count the changelog has (or will be created with): :class:`PartitionCountMismatch` otherwise.
    """
    specs = list(TOPICS.values() if specs is None else specs)
    admin = AIOKafkaAdminClient(**kafka.client_kwargs(), request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        if any(is_changelog(s) for s in specs):
            await _check_co_partitioned(admin, kafka, specs, existing)
        missing = [
            NewTopic(
                s.name,
                kafka.partitions_override or s.partitions,
                kafka.replication_factor,
                topic_configs=kafka.topic_config(s),
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


async def partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    if not names:
        return {}
    described = await admin.describe_topics(names)
    return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}


async def _check_co_partitioned(
    admin: AIOKafkaAdminClient, kafka: KafkaSettings, specs: list[TopicSpec], existing: set[str]
) -> None:
    present = await partition_counts(admin, [s.name for s in specs if s.name in existing])
    counts = {s.name: present.get(s.name, kafka.partitions_override or s.partitions) for s in specs}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
        raise PartitionCountMismatch(
            f"source topics and changelog differ in partition count ({detail}); state would be split "
            "between partitions. Re-key the changelog first (docs/operations.md, 'Adding partitions')."
        )
