"""Kafka records → Arrow tables of the archive (pure: no I/O).

:class:`TopicBuffer` collects a topic's records as rows (envelope values from the headers, the JSON payload
parsed once) and builds a table in the topic's schema (:mod:`services.archive.schema`). The fast path builds
every column at once with date-times as text and lets Arrow parse them in one cast; when that fails (a payload
that does not fit the contract: an unknown type, an unexpected field, a date-time without offset), rows are
converted one by one and a row that still does not fit keeps its payload in ``data_json``, its payload
columns empty. A record is never dropped.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from services.archive.schema import ENVELOPE, RAW_COLUMN, TIMESTAMP, payload_columns, topic_schema
from shared.contracts import EVENT_TYPES

#: a record header that marks a record written by a replay from the archive: it is in the archive already
REPLAY_HEADER = "ioc_archive_replay"
_CE = {
    "ce_id": "ce_id",
    "ce_source": "ce_source",
    "ce_type": "ce_type",
    "ce_specversion": "ce_specversion",
    "ce_time": "ce_time",
    "ce_subject": "ce_subject",
    "ce_dataschema": "ce_dataschema",
}


def _as_text(t: pa.DataType) -> pa.DataType:
    """``t`` with every timestamp and date replaced by string (the payload's JSON form)."""
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return pa.string()
    if pa.types.is_list(t):
        return pa.list_(_as_text(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _as_text(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(t.key_type, _as_text(t.item_type))
    return t


def _python_value(value: Any, t: pa.DataType) -> Any:
    """A JSON value as the Python value Arrow expects for ``t`` (slow path; raises when it does not fit)."""
    if value is None:
        return None
    if pa.types.is_timestamp(t):
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        # a date-time without offset is taken as UTC (documented in docs/archive.md)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    if pa.types.is_date(t):
        return dt.date.fromisoformat(value)
    if pa.types.is_list(t):
        if not isinstance(value, list):
            raise TypeError("not a list")
        return [_python_value(v, t.value_type) for v in value]
    if pa.types.is_struct(t):
        if not isinstance(value, dict) or set(value) - {f.name for f in t}:
            raise TypeError("not the struct")
        return {f.name: _python_value(value.get(f.name), f.type) for f in t}
    if pa.types.is_map(t):
        if not isinstance(value, dict):
            raise TypeError("not a map")
        return [(k, _python_value(v, t.item_type)) for k, v in value.items()]
    if pa.types.is_string(t) and not isinstance(value, str):
        raise TypeError("not a string")
    if pa.types.is_integer(t) and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError("not an integer")
    if pa.types.is_floating(t) and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise TypeError("not a number")
    if pa.types.is_boolean(t) and not isinstance(value, bool):
        raise TypeError("not a boolean")
    return value


class TopicBuffer:
    """Rows of one topic waiting to be written."""

    def __init__(self, topic: str, epoch: str):
        self.topic = topic
        self.epoch = epoch
        self.schema = topic_schema(topic)
        self.text_schema = pa.schema([pa.field(f.name, _as_text(f.type)) for f in self.schema])
        self.envelope: dict[str, list] = {name: [] for name in ENVELOPE.names}
        self.values: list[bytes | None] = []  # the raw JSON payloads
        self.types: list[str | None] = []
        # Arrow's JSON reader: the payload columns as text (date-times are cast after), for the event types
        # whose fields are all columns of their own name; none for a table with a map column
        payload_fields = [
            f for f in self.text_schema if f.name not in ENVELOPE.names and f.name != RAW_COLUMN.name
        ]
        self._arrow_schema = (
            None if any(_has_map(f.type) for f in payload_fields) else pa.schema(payload_fields)
        )
        self._plain_types = {
            t
            for t, et in EVENT_TYPES.items()
            if et.topic == topic and all(k == v for k, v in payload_columns(topic, t).items())
        }
        #: partition → [first offset, next offset] of the buffered records (skipped ones included)
        self.ranges: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return len(self.values)

    def skip(self, partition: int, offset: int) -> None:
        """A record consumed but not archived (a replay's copy): its offset still counts as done."""
        r = self.ranges.get(partition)
        if r is None:
            self.ranges[partition] = [offset, offset + 1]
        else:
            r[1] = offset + 1

    def add(self, partition: int, offset: int, key: bytes | None, value: bytes | None, ts_ms: int, headers):
        env = self.envelope
        h = dict(headers or ())
        for header, column in _CE.items():
            v = h.get(header)
            env[column].append(None if v is None else v.decode(errors="replace"))
        if env["ce_id"][-1] is None:
            env["ce_id"][-1] = f"kafka:{partition}:{offset}"  # not a CloudEvent: still archived, identified
        env["kafka_key"].append(None if key is None else key.decode(errors="replace"))
        env["kafka_partition"].append(partition)
        env["kafka_offset"].append(offset)
        env["kafka_timestamp"].append(ts_ms * 1000 if ts_ms is not None and ts_ms >= 0 else None)
        env["broker_epoch"].append(self.epoch)
        self.values.append(value)
        self.types.append(env["ce_type"][-1])
        self.skip(partition, offset)

    def take(self) -> tuple[pa.Table, dict[int, list[int]]]:
        """The buffered rows as a table in the topic's schema, plus the offset ranges they cover; empties it."""
        table = self._build()
        ranges = self.ranges
        self.envelope = {name: [] for name in ENVELOPE.names}
        self.values, self.types, self.ranges = [], [], {}
        return table, ranges

    # Building --------------------------------------------------------------------------------------------
    def _envelope_arrays(self) -> list[pa.Array]:
        env = self.envelope
        arrays = []
        for f in ENVELOPE:
            if f.name == "ce_time":
                arrays.append(_times(env["ce_time"]))
            elif f.name == "kafka_timestamp":
                arrays.append(pa.array(env[f.name], pa.int64()).cast(TIMESTAMP))
            else:
                arrays.append(pa.array(env[f.name], f.type))
        return arrays

    def _build(self) -> pa.Table:
        env_arrays = self._envelope_arrays()
        n = len(self.values)
        columns = self._payload_columns_arrow()
        if columns is None:
            payloads = [_parsed(v) for v in self.values]
            try:
                columns = self._payload_columns_fast(n, payloads)
            except (pa.ArrowException, TypeError, ValueError, KeyError):
                columns = self._payload_columns_slow(n, payloads)
        return pa.Table.from_arrays([*env_arrays, *columns], schema=self.schema)

    def _payload_columns_arrow(self) -> list[pa.Array] | None:
        """All payloads parsed by Arrow's JSON reader at once (no Python per field), when every record is of a
        known type whose fields are their own columns and the table has no map column (the reader has none);
        None when it does not apply or a payload does not fit: the Python paths decide then."""
        if self._arrow_schema is None or not self.values:
            return None
        types = set(self.types)
        # (a payload spread over several lines fails the reader or the row count below: never misaligned rows)
        if not types <= self._plain_types or None in self.values:
            return None
        try:
            table = pajson.read_json(
                pa.py_buffer(b"\n".join(v for v in self.values if v is not None)),  # None excluded above
                read_options=pajson.ReadOptions(block_size=1 << 26, use_threads=False),
                parse_options=pajson.ParseOptions(
                    explicit_schema=self._arrow_schema, unexpected_field_behavior="error"
                ),
            )
            if table.num_rows != len(self.values):
                return None
            out = []
            for f in self.schema:
                if f.name in ENVELOPE.names:
                    continue
                if f.name == RAW_COLUMN.name:
                    out.append(pa.nulls(table.num_rows, pa.string()))
                    continue
                arr = table.column(f.name).combine_chunks()
                out.append(arr if arr.type.equals(f.type) else arr.cast(f.type))
            return out
        except (pa.ArrowException, ValueError, TypeError):
            return None

    def _payload_columns_fast(self, n: int, payloads: list) -> list[pa.Array]:
        topic = self.topic
        mapping_of: dict[str | None, dict[str, str]] = {}
        values: dict[str, list] = {f.name: [None] * n for f in self.schema if f.name not in ENVELOPE.names}
        for i, (etype, payload) in enumerate(zip(self.types, payloads, strict=True)):
            mapping = mapping_of.get(etype)
            if mapping is None:
                mapping = mapping_of[etype] = payload_columns(topic, etype) if etype else {}
            if not mapping or not isinstance(payload, dict):
                raise KeyError("payload outside the contract")
            for k, v in payload.items():
                values[mapping[k]][i] = v  # KeyError for a field the contract does not know
        out = []
        for f, tf in zip(self.schema, self.text_schema, strict=True):
            if f.name in ENVELOPE.names:
                continue
            arr = pa.array(values[f.name], tf.type)
            out.append(arr if tf.type.equals(f.type) else arr.cast(f.type))
        return out

    def _payload_columns_slow(self, n: int, payloads: list) -> list[pa.Array]:
        fields = [f for f in self.schema if f.name not in ENVELOPE.names]
        values: dict[str, list] = {f.name: [None] * n for f in fields}
        types = {f.name: f.type for f in fields}
        raw = values[RAW_COLUMN.name]
        for i, (etype, payload) in enumerate(zip(self.types, payloads, strict=True)):
            mapping = payload_columns(self.topic, etype) if etype else {}
            try:
                if not mapping or not isinstance(payload, dict):
                    raise KeyError("payload outside the contract")
                row = {mapping[k]: _python_value(v, types[mapping[k]]) for k, v in payload.items()}
                for col, v in row.items():
                    pa.scalar(v, types[col])  # fits, or raises before the row is half written
            except (KeyError, TypeError, ValueError, OverflowError, pa.ArrowException):
                raw[i] = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
                continue
            for col, v in row.items():
                values[col][i] = v
        return [pa.array(values[f.name], f.type) for f in fields]


def _parsed(value: bytes | None) -> Any:
    try:
        return orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        assert value is not None
        return value.decode(errors="replace")  # kept as text in data_json


def _has_map(t: pa.DataType) -> bool:
    if pa.types.is_map(t):
        return True
    if pa.types.is_list(t):
        return _has_map(t.value_type)
    if pa.types.is_struct(t):
        return any(_has_map(f.type) for f in t)
    return False


def _times(texts: list[str | None]) -> pa.Array:
    arr = pa.array(texts, pa.string())
    try:
        return arr.cast(TIMESTAMP)
    except pa.ArrowException:
        out = []
        for t in texts:
            try:
                out.append(_python_value(t, TIMESTAMP))
            except (ValueError, AttributeError):
                out.append(None)
        return pa.array(out, TIMESTAMP)


def event_dates(table: pa.Table) -> pa.Array:
    """The UTC date of each row's event time (``ce_time``; the Kafka timestamp when it has none)."""
    t = pc.coalesce(table["ce_time"], table["kafka_timestamp"])
    return pc.cast(t, pa.date32())
