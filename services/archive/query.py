"""Reading the archive with DuckDB (in process): one view per topic, SQL, bounded extracts.

Nothing here needs IOC's writer: the views are ``read_parquet`` over the Hive-partitioned files, exactly what
any other engine (Trino, Spark, pyarrow.dataset) reads. The view of ``ioc.meter.readings`` is
``meter_readings`` (the topic without ``ioc.``, dots as underscores); the partition column ``date`` is the UTC
date of the event time and prunes whole directories.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from services.archive.schema import topic_schema
from services.archive.store import ArchiveStore


def view_name(topic: str) -> str:
    return topic.removeprefix("ioc.").replace(".", "_")


def source_sql(store: ArchiveStore, topic: str) -> str:
    """A ``read_parquet`` over every file of ``topic`` (union by name: files of older contract versions lack
    the newer columns)."""
    prefix = (
        ""
        if store.local
        else f"{store.fs.protocol[0] if isinstance(store.fs.protocol, tuple) else store.fs.protocol}://"
    )
    pattern = f"{prefix}{store.topic_dir(topic)}/date=*/*.parquet".replace("'", "''")
    return f"read_parquet('{pattern}', hive_partitioning = true, union_by_name = true)"


def connect(store: ArchiveStore, topics: list[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per archived topic (only topics with files)."""
    con = duckdb.connect()
    if not store.local:
        con.register_filesystem(store.fs)
    for topic in topics or store.topics():
        if store.data_files(topic):
            con.execute(
                f'CREATE OR REPLACE VIEW "{view_name(topic)}" AS SELECT * FROM {source_sql(store, topic)}'
            )
    return con


class ExtractError(ValueError):
    """A request the extract cannot serve; ``field`` names the parameter at fault."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass(frozen=True)
class ExtractRequest:
    topic: str
    start: datetime
    end: datetime
    area: str | None = None
    entity: str | None = None
    format: str = "csv"


#: payload columns an ``area`` filter matches, in order of preference
AREA_COLUMNS = ("district", "commune", "admin_unit", "scope_code")


def extract(store: ArchiveStore, req: ExtractRequest, *, max_rows: int, max_days: int) -> tuple[bytes, int]:
    """The archived events of one topic in ``[start, end)`` (optionally of one area and/or entity) as CSV or
    Parquet bytes, and their count. Raises :class:`ExtractError` for a request outside the limits."""
    if req.topic not in store.topics():
        raise ExtractError("topic", f"no archive for topic {req.topic!r}", 404)
    if req.start.tzinfo is None or req.end.tzinfo is None:
        raise ExtractError("from", "times need a UTC offset (e.g. 2026-12-01T00:00:00Z)")
    if req.end <= req.start:
        raise ExtractError("to", "'to' must be after 'from'")
    if (req.end - req.start).total_seconds() > max_days * 86400:
        raise ExtractError("to", f"a time range of at most {max_days} days per extract")
    if req.format not in ("csv", "parquet"):
        raise ExtractError("format", "format is csv or parquet")
    schema = topic_schema(req.topic)
    where = ["date >= CAST(? AS DATE)", "date <= CAST(? AS DATE)", "ce_time >= ?", "ce_time < ?"]
    params: list = [req.start.date(), req.end.date(), req.start, req.end]
    if req.area:
        cols = [c for c in AREA_COLUMNS if c in schema.names]
        if not cols:
            raise ExtractError("area", f"events of {req.topic} carry no area")
        where.append("(" + " OR ".join(f'"{c}" = ?' for c in cols) + ")")
        params += [req.area] * len(cols)
    if req.entity:
        where.append("kafka_key = ?")
        params.append(req.entity)
    columns = [f.name for f in schema]
    if req.format == "csv":  # CSV has no nested values: lists, structs and maps as JSON text
        select = ", ".join(
            f'to_json("{f.name}") AS "{f.name}"' if pa.types.is_nested(f.type) else f'"{f.name}"'
            for f in schema
        )
    else:
        select = ", ".join(f'"{c}"' for c in columns)
    con = connect(store, [req.topic])
    try:
        sql = (
            f"SELECT {select} FROM {source_sql(store, req.topic)} WHERE {' AND '.join(where)} "
            f"ORDER BY ce_time, kafka_partition, kafka_offset LIMIT {max_rows + 1}"
        )
        table = con.sql(sql, params=params).to_arrow_table()
    finally:
        con.close()
    if table.num_rows > max_rows:
        raise ExtractError("to", f"more than {max_rows} events: narrow the time range, area or entity", 422)
    buf = io.BytesIO()
    if req.format == "csv":
        pacsv.write_csv(table, buf)
    else:
        pq.write_table(table, buf, compression="zstd")
    return buf.getvalue(), table.num_rows
