"""Arrow schemas of the archive's tables, derived from the event contracts.

One table per topic. Its columns are the CloudEvents attributes and Kafka coordinates of each record
(:data:`ENVELOPE`), then the payload fields of every event type registered on the topic, typed from the
pydantic model (nested models become structs, lists lists, ``dict[str, X]`` maps, literals strings), then
``data_json``: the raw payload of a record whose payload did not fit the columns (an unknown type, a field the
contract does not know), so nothing consumed is ever dropped.

Evolution: a field keeps the column it got first. A later version that adds fields adds nullable columns
(older files simply lack them; readers union by name). A later version that gives an existing field another
type gets a column of its own, ``<field>__v<version>``, so the older files' column is never retyped.
"""

from __future__ import annotations

import datetime as dt
import enum
import types
import typing
from functools import cache

import pyarrow as pa
from pydantic import AwareDatetime, BaseModel

from shared.contracts import EVENT_TYPES
from shared.contracts.base import EventType

TIMESTAMP = pa.timestamp("us", tz="UTC")

#: Envelope columns, before the payload's: CloudEvents attributes and where the record was in Kafka.
#: ``broker_epoch`` names the broker's log the offsets belong to (an embedded broker restarts empty, its
#: offsets start again at 0): (broker_epoch, kafka_partition, kafka_offset) identifies a record.
ENVELOPE = pa.schema(
    [
        pa.field("ce_id", pa.string(), nullable=False),
        pa.field("ce_source", pa.string()),
        pa.field("ce_type", pa.string()),
        pa.field("ce_specversion", pa.string()),
        pa.field("ce_time", TIMESTAMP),
        pa.field("ce_subject", pa.string()),
        pa.field("ce_dataschema", pa.string()),
        pa.field("kafka_key", pa.string()),
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("kafka_timestamp", TIMESTAMP),
        pa.field("broker_epoch", pa.string(), nullable=False),
    ]
)
RAW_COLUMN = pa.field("data_json", pa.string())
#: Hive partition columns (directory names, not stored in the files)
PARTITION_COLUMNS = ("date",)


class Unsupported(TypeError):
    """An annotation with no faithful Arrow type: the field is stored as JSON text."""


def arrow_type(annotation: typing.Any) -> pa.DataType:
    """The Arrow type of a pydantic field annotation (``Unsupported`` when there is none)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return arrow_type(args[0])
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return arrow_type(inner[0])
        raise Unsupported(str(annotation))
    if origin is typing.Literal:
        kinds = {type(a) for a in args}
        if kinds == {str}:
            return pa.string()
        if kinds == {int}:
            return pa.int64()
        if kinds == {bool}:
            return pa.bool_()
        raise Unsupported(str(annotation))
    if origin in (list, tuple, set, frozenset) and args:
        return pa.list_(arrow_type(args[0]))
    if origin is dict and len(args) == 2 and args[0] is str:
        return pa.map_(pa.string(), arrow_type(args[1]))
    if annotation is bool:
        return pa.bool_()
    if annotation is int:
        return pa.int64()
    if annotation is float:
        return pa.float64()
    if annotation is str:
        return pa.string()
    if annotation in (dt.datetime, AwareDatetime):
        return TIMESTAMP
    if annotation is dt.date:
        return pa.date32()
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return pa.string()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct([pa.field(n, _field_type(f.annotation)) for n, f in annotation.model_fields.items()])
    raise Unsupported(str(annotation))


def _field_type(annotation: typing.Any) -> pa.DataType:
    try:
        return arrow_type(annotation)
    except Unsupported:
        return pa.string()  # JSON text


def _order(et: EventType) -> tuple[str, int]:
    return (et.type.rsplit(".v", 1)[0], et.version)


@cache
def topic_schema(topic: str) -> pa.Schema:
    """The archive schema of ``topic``: envelope, payload columns of every event type on it, ``data_json``."""
    fields: dict[str, pa.Field] = {}
    for et in sorted((e for e in EVENT_TYPES.values() if e.topic == topic), key=_order):
        for name, info in et.model.model_fields.items():
            typ = _field_type(info.annotation)
            if name in ENVELOPE.names or name == RAW_COLUMN.name or name in PARTITION_COLUMNS:
                name = f"{name}__payload"
            have = fields.get(name)
            if have is None:
                fields[name] = pa.field(name, typ)
            elif not have.type.equals(typ):
                alt = f"{name}__v{et.version}"
                fields.setdefault(alt, pa.field(alt, typ))
    return pa.schema([*ENVELOPE, *fields.values(), RAW_COLUMN])


@cache
def payload_columns(topic: str, etype: str) -> dict[str, str]:
    """Payload field → its column in ``topic``'s table, for the event type ``etype`` (empty if unknown)."""
    et = EVENT_TYPES.get(etype)
    if et is None or et.topic != topic:
        return {}
    schema = topic_schema(topic)
    out = {}
    for name, info in et.model.model_fields.items():
        col = f"{name}__payload" if name in ENVELOPE.names or name in ("data_json", "date") else name
        typ = _field_type(info.annotation)
        if not schema.field(col).type.equals(typ):
            col = f"{name}__v{et.version}"
        out[name] = col
    return out


def json_columns(topic: str) -> frozenset[str]:
    """Payload columns stored as JSON text (their annotation has no Arrow type)."""
    out = set()
    for et in EVENT_TYPES.values():
        if et.topic != topic:
            continue
        for name, info in et.model.model_fields.items():
            try:
                arrow_type(info.annotation)
            except Unsupported:
                out.add(payload_columns(topic, et.type)[name])
    return frozenset(out)
