"""CloudEvents 1.0, Kafka protocol binding, binary content mode.

The record value is the JSON payload; the CloudEvents attributes travel as ``ce_*`` headers with
``content-type: application/json``; the record key is the entity id. Any CloudEvents SDK (or a plain Kafka
client) can read IOC's events without knowing IOC.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from shared.contracts.base import EVENT_TYPES, EventModel, EventType

SPEC_VERSION = b"1.0"
CONTENT_TYPE = b"application/json"

Headers = list[tuple[str, bytes]]


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class EncodedEvent:
    """An event ready for the producer (not frozen: frozen dataclasses cost ~1 µs more to build)."""

    topic: str
    key: bytes
    value: bytes
    headers: Headers
    id: str
    type: str = ""


def encode(
    etype: EventType,
    payload: EventModel | dict[str, Any],
    *,
    source: str,
    id: str | None = None,
    time: str | None = None,
    subject: str | None = None,
    extra_headers: Iterable[tuple[str, bytes]] = (),
) -> EncodedEvent:
    """Encode one payload as a binary-mode CloudEvent for ``etype``'s topic.

    A dict payload is trusted to be valid already (the hot path validates before); a model is dumped.
    """
    data = payload.model_dump(mode="json") if isinstance(payload, EventModel) else payload
    key = str(data[etype.key_field])
    event_id = id or uuid.uuid4().hex
    if subject is None and etype.subject_field:
        subject = str(data.get(etype.subject_field))
    headers: Headers = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_id", event_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", etype.type.encode()),
        ("ce_time", (time or now_rfc3339()).encode()),
        ("ce_dataschema", etype.schema_id.encode()),
        ("content-type", CONTENT_TYPE),
    ]
    if subject:
        headers.append(("ce_subject", subject.encode()))
    headers.extend(extra_headers)
    return EncodedEvent(etype.topic, key.encode(), orjson.dumps(data), headers, event_id, etype.type)


def encode_many(
    etype: EventType,
    payloads: Sequence[dict[str, Any]],
    *,
    source: str,
    ids: Sequence[str] | None = None,
    time: str | None = None,
) -> list[EncodedEvent]:
    """Encode many already-validated dict payloads of one type (the ingest hot path).

    Header bytes that are the same for the whole batch are built once; ids are ``ids[i]`` when given
    (deterministic ids let consumers drop re-deliveries), else a random batch prefix plus the position.
    """
    prefix = uuid.uuid4().hex
    common = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_source", source.encode()),
        ("ce_type", etype.type.encode()),
        ("ce_time", (time or now_rfc3339()).encode()),
        ("ce_dataschema", etype.schema_id.encode()),
        ("content-type", CONTENT_TYPE),
    ]
    key_field, subject_field, topic, tname = etype.key_field, etype.subject_field, etype.topic, etype.type
    dumps = orjson.dumps
    out = []
    for i, data in enumerate(payloads):
        event_id = ids[i] if ids is not None else f"{prefix}-{i}"
        headers = [("ce_id", event_id.encode()), *common]
        if subject_field:
            subject = data.get(subject_field)
            if subject is not None:
                headers.append(("ce_subject", str(subject).encode()))
        out.append(EncodedEvent(topic, str(data[key_field]).encode(), dumps(data), headers, event_id, tname))
    return out


class EventDecodeError(ValueError):
    """A record that is not a valid IOC CloudEvent. ``reason`` never contains payload values."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class ReceivedEvent:
    """A decoded, validated event as a consumer sees it (not frozen: frozen dataclasses are slow to build)."""

    type: str
    id: str
    source: str
    time: str
    subject: str | None
    key: str | None
    data: dict[str, Any]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @property
    def dedup_key(self) -> tuple[str, str]:
        """CloudEvents identity: ``source`` + ``id`` (consumers dedup on it)."""
        return (self.source, self.id)


def headers_dict(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, bytes]:
    return {k: v for k, v in (headers or ())}


def validation_reason(exc: ValidationError) -> str:
    """A readable summary of a pydantic error without the offending values (they may be personal data)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:10]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def decode(record: Any, *, validate: bool = True) -> ReceivedEvent:
    """Decode an aiokafka ``ConsumerRecord`` into a :class:`ReceivedEvent`, validating the payload.

    Raises :class:`EventDecodeError` for anything that is not a registered, valid event.
    """
    h = headers_dict(record.headers)
    if h.get("ce_specversion") != SPEC_VERSION:
        raise EventDecodeError("missing or unsupported ce_specversion header")
    try:
        etype_name = h["ce_type"].decode()
        event_id = h["ce_id"].decode()
        source = h["ce_source"].decode()
    except (KeyError, UnicodeDecodeError):
        raise EventDecodeError("missing ce_type, ce_id or ce_source header") from None
    etype = EVENT_TYPES.get(etype_name)
    if etype is None:
        raise EventDecodeError(f"unknown event type {etype_name!r}")
    if record.value is None:
        raise EventDecodeError("record has no value")
    try:
        data = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"value is not JSON ({exc.msg if hasattr(exc, 'msg') else 'decode error'})") from None
    if not isinstance(data, dict):
        raise EventDecodeError("value is not a JSON object")
    if validate:
        try:
            etype.model.model_validate(data)
        except ValidationError as exc:
            raise EventDecodeError(f"{etype_name}: {validation_reason(exc)}") from None
    subject = h.get("ce_subject")
    return ReceivedEvent(
        type=etype_name,
        id=event_id,
        source=source,
        time=(h.get("ce_time") or b"").decode(),
        subject=subject.decode() if subject else None,
        key=record.key.decode() if record.key else None,
        data=data,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp,
    )


def parse_time(value: str) -> datetime:
    """Parse an RFC 3339 ``ce_time`` (``Z`` suffix accepted)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


_dict_validators: dict[str, Any] = {}


def _dict_validator(etype: EventType):
    """A validator of a JSON array of payloads that checks without building model instances (fast)."""
    v = _dict_validators.get(etype.type)
    if v is None:
        from typing import NotRequired, Required

        from pydantic import ConfigDict, TypeAdapter
        from typing_extensions import TypedDict

        fields = {
            name: (Required[f.rebuild_annotation()] if f.is_required() else NotRequired[f.rebuild_annotation()])
            for name, f in etype.model.model_fields.items()
        }
        td = TypedDict(f"{etype.model.__name__}Payload", fields)  # type: ignore[operator]
        td.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        v = _dict_validators[etype.type] = (TypeAdapter(list[td]), TypeAdapter(td))
    return v


def decode_batch(records: Sequence[Any]) -> tuple[list[ReceivedEvent], list[tuple[Any, str]]]:
    """Decode and validate many records at once: ``(valid events in order, [(record, reason), ...])``.

    Payloads of one type are validated in a single pydantic-core call over a JSON array and, when that passes,
    parsed in a single orjson call over the same array; only when it fails are they checked one by one to find
    the bad ones. Same rules as :func:`decode`.
    """
    failed: list[tuple[Any, str]] = []
    staged: list[tuple[Any, EventType, str, str, str, bytes | None]] = []
    by_type: dict[str, tuple[list[bytes], list[Any]]] = {}  # type → (payloads, their records), in order
    append = staged.append
    for r in records:
        h = dict(r.headers) if r.headers else {}
        etype_name = h.get("ce_type")
        event_id = h.get("ce_id")
        source = h.get("ce_source")
        if h.get("ce_specversion") != SPEC_VERSION:
            failed.append((r, "missing or unsupported ce_specversion header"))
            continue
        if etype_name is None or event_id is None or source is None:
            failed.append((r, "missing ce_type, ce_id or ce_source header"))
            continue
        try:
            tname = etype_name.decode()
            etype = EVENT_TYPES.get(tname)
            if etype is None:
                failed.append((r, f"unknown event type {tname!r}"))
                continue
            if r.value is None:
                failed.append((r, "record has no value"))
                continue
            staged_item = (r, etype, event_id.decode(), source.decode(), h.get("ce_time", b"").decode(),
                           h.get("ce_subject"))
        except UnicodeDecodeError:
            failed.append((r, "headers are not UTF-8"))
            continue
        group = by_type.get(etype.type)
        if group is None:
            group = by_type[etype.type] = ([], [])
        group[0].append(r.value)
        group[1].append(r)
        append(staged_item)
    # Per type: the parsed payloads in staged order, None for a payload that failed validation.
    parsed: dict[str, Iterator[dict[str, Any] | None]] = {}
    loads = orjson.loads
    for tname, (values, group_records) in by_type.items():
        many, one = _dict_validator(EVENT_TYPES[tname])
        blob = b"[" + b",".join(values) + b"]"
        try:
            many.validate_json(blob)
            parsed[tname] = iter(loads(blob))
            continue
        except (ValidationError, ValueError):
            pass
        checked: list[dict[str, Any] | None] = []
        for value, record in zip(values, group_records, strict=True):
            try:
                one.validate_json(value)
                checked.append(loads(value))
            except (ValidationError, ValueError) as exc:
                checked.append(None)
                reason = validation_reason(exc) if isinstance(exc, ValidationError) else "value is not JSON"
                failed.append((record, f"{tname}: {reason}"))
        parsed[tname] = iter(checked)
    events: list[ReceivedEvent] = []
    for r, etype, event_id, source, ce_time, subject in staged:
        data = next(parsed[etype.type])
        if data is None:
            continue
        events.append(ReceivedEvent(
            etype.type, event_id, source, ce_time, subject.decode() if subject else None,
            r.key.decode() if r.key else None, data, r.topic, r.partition, r.offset, r.timestamp,
        ))
    return events, failed
