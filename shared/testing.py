"""Helpers for tests against real infrastructure (used by ``tests/conftest.py`` and service tests).

- :class:`Infrastructure`: an embedded broker and PostgreSQL for a test session (or external ones from env).
- :func:`running_app`: run a service app's lifespan and give an ``httpx.AsyncClient`` bound to it.
- :func:`read_topic`: every event of a topic up to the high watermark the broker reports in fetch responses
  (not ListOffsets, which the embedded broker can get wrong).
- :func:`issue_test_key`: a principal with scopes and a fresh API key.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI

from shared.config import DatabaseSettings, KafkaSettings
from shared.contracts.cloudevents import EventDecodeError, ReceivedEvent, decode
from shared.kafka.aiokafka_adapter import refresh_metadata

if TYPE_CHECKING:
    from shared.embedded import EmbeddedBroker, EmbeddedPostgres


class Infrastructure:
    """Broker + PostgreSQL for tests: embedded unless ``IOC_TEST_EXTERNAL=1`` (then the IOC_* env is used)."""

    def __init__(self, workdir: Path | None = None):
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="ioc-test-"))
        self.broker: EmbeddedBroker | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.kafka_bootstrap = os.environ.get("IOC_KAFKA_BOOTSTRAP_SERVERS", "")
        self.database_url = os.environ.get("IOC_DATABASE_URL", "")

    def start(self) -> Infrastructure:
        if os.environ.get("IOC_TEST_EXTERNAL") == "1":
            return self
        from shared.embedded import EmbeddedBroker, EmbeddedPostgres

        broker = self.broker = EmbeddedBroker(log_file=self.workdir / "tansu.log").start()
        postgres = self.postgres = EmbeddedPostgres(self.workdir / "pgdata").start()
        postgres.create_database("ioc_test")
        self.kafka_bootstrap = broker.bootstrap_servers
        self.database_url = postgres.url("ioc_test")
        os.environ["IOC_KAFKA_BOOTSTRAP_SERVERS"] = self.kafka_bootstrap
        os.environ["IOC_DATABASE_URL"] = self.database_url
        os.environ.setdefault("IOC_KAFKA_IDEMPOTENCE", "false")
        return self

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def kafka(self) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.kafka_bootstrap)

    def database(self) -> DatabaseSettings:
        return DatabaseSettings(url=self.database_url)


@asynccontextmanager
async def running_app(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan (producer, pool, background tasks) and yield a client bound to it."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ioc.test", timeout=60) as client:
            yield client


async def read_topic(
    kafka: KafkaSettings,
    topic: str,
    *,
    where: Callable[[ReceivedEvent], bool] | None = None,
    expect: int | None = None,
    timeout: float = 20.0,
    raw: bool = False,
) -> list:
    """Read ``topic`` from the beginning to its current end; keep events matching ``where``.

    With ``expect``, keep polling until that many matched (or ``timeout``). With ``raw``, return the
    ``ConsumerRecord``s (matching ``where`` is skipped) instead of decoded events.
    """
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        # Right after a broker restart its metadata can list the topic without partitions for a moment.
        for _ in range(50):
            if parts:
                break
            await refresh_metadata(consumer)
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await asyncio.sleep(0.2)
        parts = parts or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: list = []
        idle_rounds = 0
        try:  # one deadline for all of it: position() alone would wait without a bound for an offset reset
            async with asyncio.timeout(timeout):
                while True:
                    batch = await consumer.getmany(timeout_ms=200, max_records=10000)
                    n = 0
                    for recs in batch.values():
                        for r in recs:
                            n += 1
                            if raw:
                                found.append(r)
                                continue
                            try:
                                ev = decode(r)
                            except EventDecodeError:
                                continue
                            if where is None or where(ev):
                                found.append(ev)
                    at_end = True
                    for tp in tps:
                        hw = consumer.highwater(tp)
                        if hw is None or await consumer.position(tp) < hw:
                            at_end = False
                    idle_rounds = idle_rounds + 1 if n == 0 else 0
                    if expect is not None:
                        if len(found) >= expect and at_end:
                            break
                    elif at_end and idle_rounds >= 2:
                        break
                    if n == 0:
                        await asyncio.sleep(0.05)
        except TimeoutError:
            pass
        return found
    finally:
        await consumer.stop()


async def issue_test_key(
    pool,
    scopes: list[str],
    *,
    kind: str = "gateway",
    attributes: dict | None = None,
    principal_id: str | None = None,
) -> tuple[str, str]:
    """Create a principal with ``scopes`` and return ``(principal_id, api_key)``."""
    from shared.auth import KeyStore

    store = KeyStore(pool, cache_seconds=0)
    pid = principal_id or f"test-{uuid.uuid4().hex[:8]}"
    await store.upsert_principal(pid, kind, pid, scopes, attributes or {})
    return pid, await store.issue_key(pid)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def received(
    etype_or_model,
    payload,
    *,
    partition: int = 0,
    offset: int = 0,
    time_: str | None = None,
    id: str | None = None,
    source: str = "/ioc/test",
) -> ReceivedEvent:
    """Build a :class:`ReceivedEvent` as a consumer would see it (for processor unit tests).

    ``etype_or_model`` is an :class:`EventType` or a registered payload model; ``payload`` a model or dict.
    """
    from shared.contracts.base import EventModel, EventType, event_type_of
    from shared.contracts.cloudevents import now_rfc3339

    etype = etype_or_model if isinstance(etype_or_model, EventType) else event_type_of(etype_or_model)
    data = payload.model_dump(mode="json") if isinstance(payload, EventModel) else dict(payload)
    return ReceivedEvent(
        type=etype.type,
        id=id or uuid.uuid4().hex,
        source=source,
        time=time_ or now_rfc3339(),
        subject=None,
        key=str(data[etype.key_field]),
        data=data,
        topic=etype.topic,
        partition=partition,
        offset=offset,
        timestamp_ms=int(time.time() * 1000),
    )
