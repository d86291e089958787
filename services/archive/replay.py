"""Replay from the archive into topics, and the restore that keeps a restarted center's KPIs.

A replayed record is the archived one again: same key, same CloudEvents attributes (so consumers that dedup
on ``source`` + ``id`` still can), the payload rebuilt from its columns, on its original partition when the
topic still has it, plus the header ``ioc_archive_replay`` so the archiver does not archive it twice.

Restore: the embedded broker keeps records in memory only, so after ``ioc up`` restarts it the processors
would start from nothing and overwrite the day's KPI windows with partial values. ``restore`` replays the
processors' source topics from the start of the day (compacted topics: the last record of every key) before
the processors start; they rebuild their state from it and compute the same windows again.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pyarrow as pa
from aiokafka import AIOKafkaProducer

from services.archive.query import connect, source_sql
from services.archive.schema import RAW_COLUMN, payload_columns
from services.archive.settings import ArchiveSettings
from services.archive.store import ArchiveStore
from services.archive.tables import REPLAY_HEADER
from shared.config import KafkaSettings
from shared.contracts import TOPICS
from shared.kafka.admin import ensure_topics
from shared.kafka.producer import partition_for

log = logging.getLogger(__name__)
_CE_HEADERS = ("ce_id", "ce_specversion", "ce_source", "ce_type", "ce_time", "ce_dataschema")
_DUMPS_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def _time_text(value: datetime) -> bytes:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z").encode()


def records_of(
    batch: pa.RecordBatch | pa.Table, topic: str
) -> Iterable[tuple[int, bytes | None, bytes, list]]:
    """(partition, key, value, headers) of archived rows, in their order."""
    map_columns = {f.name for f in batch.schema if pa.types.is_map(f.type)}
    inverse: dict[str, dict[str, str]] = {}
    for row in batch.to_pylist():
        etype = row["ce_type"]
        if row.get(RAW_COLUMN.name) is not None:
            value = row[RAW_COLUMN.name].encode()
        else:
            mapping = inverse.get(etype)
            if mapping is None:
                mapping = inverse[etype] = payload_columns(topic, etype)
            payload = {}
            for field, column in mapping.items():
                v = row.get(column)
                if column in map_columns and v is not None:
                    v = dict(v)
                payload[field] = v
            value = orjson.dumps(payload, option=_DUMPS_OPTIONS)
        headers = []
        for name in _CE_HEADERS:
            v = row.get(name)
            if v is not None:
                headers.append((name, _time_text(v) if name == "ce_time" else str(v).encode()))
        headers.append(("content-type", b"application/json"))
        if row.get("ce_subject") is not None:
            headers.append(("ce_subject", row["ce_subject"].encode()))
        headers.append((REPLAY_HEADER, b"1"))
        key = row["kafka_key"].encode() if row["kafka_key"] is not None else None
        yield row["kafka_partition"], key, value, headers


#: rows per batch read back from the archive during a replay (memory stays bounded whatever the range)
REPLAY_BATCH_ROWS = 50_000


def archived_rows(
    store: ArchiveStore, topic: str, start: datetime | None, end: datetime | None, *, latest_per_key: bool
) -> Iterator[pa.RecordBatch]:
    """Archived rows of ``topic`` in ``[start, end)`` by event time, in their original order per partition
    (broker lives in the order they began, then offsets), in batches; ``latest_per_key``: each key's last one."""
    if not store.data_files(topic):
        return
    where, params = ["TRUE"], []
    if start is not None:
        where += ["date >= CAST(? AS DATE)", "ce_time >= ?"]
        params += [start.date(), start]
    if end is not None:
        where += ["date <= CAST(? AS DATE)", "ce_time < ?"]
        params += [end.date(), end]
    base = (
        f"SELECT * EXCLUDE (date), min(kafka_timestamp) OVER (PARTITION BY broker_epoch) AS epoch_began "
        f"FROM {source_sql(store, topic)} WHERE {' AND '.join(where)}"
    )
    if latest_per_key:
        base = (
            f"SELECT * FROM ({base}) QUALIFY row_number() OVER (PARTITION BY kafka_key "
            "ORDER BY epoch_began DESC, broker_epoch DESC, kafka_offset DESC) = 1"
        )
    sql = (
        f"SELECT * EXCLUDE (epoch_began) FROM ({base}) "
        "ORDER BY kafka_partition, epoch_began, broker_epoch, kafka_offset"
    )
    con = connect(store, [])
    try:
        yield from con.sql(sql, params=params).to_arrow_reader(REPLAY_BATCH_ROWS)
    finally:
        con.close()


async def replay(
    store: ArchiveStore,
    kafka: KafkaSettings,
    topic: str,
    start: datetime | None,
    end: datetime | None,
    *,
    latest_per_key: bool | None = None,
) -> int:
    """Publish the archived events of ``topic`` in ``[start, end)`` to the topic again; returns how many.
    Compacted topics replay each key's last event unless ``latest_per_key`` says otherwise."""
    spec = TOPICS.get(topic)
    if latest_per_key is None:
        latest_per_key = bool(spec and spec.compacted)
    if not store.data_files(topic):
        return 0
    if spec is not None:
        await ensure_topics(kafka, [spec])
    producer = AIOKafkaProducer(
        **kafka.client_kwargs(),
        acks="all",
        linger_ms=0,
        enable_idempotence=kafka.enable_idempotence,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    sent = 0
    try:
        partitions = len(await producer.partitions_for(topic))
        batches: dict[int, Any] = {}  # partition → aiokafka BatchBuilder
        futures = []
        for rows in archived_rows(store, topic, start, end, latest_per_key=latest_per_key):
            for p, key, value, headers in records_of(rows, topic):
                if not 0 <= p < partitions:
                    p = partition_for(key or b"", partitions)
                batch = batches.get(p)
                if batch is None:
                    batch = batches[p] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    futures.append(await producer.send_batch(batch, topic, partition=p))
                    batch = batches[p] = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=None, headers=headers)
                sent += 1
            # acknowledgements of what was sent so far: the producer's memory stays bounded too
            for f in futures:
                await f
            futures = []
        for p, batch in batches.items():
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=p))
        for f in futures:
            await f
    finally:
        await producer.stop()
    return sent


def restore_topics(settings: ArchiveSettings, processor_topics: Iterable[str]) -> list[str]:
    """The topics a restart replays: ``restore_topics``, else the processors' sources they do not produce."""
    names = settings.restore_topics or sorted(set(processor_topics))
    keep = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in settings.restore_exclude)]
    # compacted (registry) topics first: a processor sees an entity's registration before its events
    return sorted(keep, key=lambda n: (not (TOPICS.get(n) and TOPICS[n].compacted), n))


def restore_start(settings: ArchiveSettings, now: datetime) -> datetime:
    """Where a restore begins: ``restore_hours`` before ``now``, or the start of the day (the earlier of the
    local day and the UTC day: the processors' daily windows are UTC days, the console's day is local)."""
    if settings.restore_hours > 0:
        return now - timedelta(hours=settings.restore_hours)
    local = now.astimezone(ZoneInfo(settings.timezone)).replace(hour=0, minute=0, second=0, microsecond=0)
    utc = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return min(local.astimezone(UTC), utc)


async def restore(
    settings: ArchiveSettings, kafka: KafkaSettings, processor_topics: Iterable[str], now: datetime
) -> dict[str, int]:
    """Replay what the processors need to compute today's windows again into an empty broker."""
    store = ArchiveStore(settings.root, settings.storage_options)
    start = restore_start(settings, now)
    counts = {}
    for topic in restore_topics(settings, processor_topics):
        compacted = bool(TOPICS.get(topic) and TOPICS[topic].compacted)
        counts[topic] = await replay(store, kafka, topic, None if compacted else start, None)
    log.info("restored from the archive", extra={"from": start.isoformat(), "records": counts})
    return counts
