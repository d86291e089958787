"""CloudEvents 1.0, Kafka protocol binding, binary content mode.

The record value is the JSON payload; the CloudEvents attributes travel as ``ce_*`` headers with
``content-type: application/json``; the record key is the entity id. Any CloudEvents SDK (or a plain Kafka
client) can read IOC's events without knowing IOC.
"""

from __future__ import annotations

import types
import typing
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ValidationError

from shared.contracts.base import EVENT_TYPES, EventModel, EventType
from shared.contracts.base import parse_time as parse_time  # re-exported: consumers parse ce_time with it

SPEC_VERSION = b"1.0"
CONTENT_TYPE = b"application/json"

# The headers IOC's own producers write, first and in this order (:func:`encode`, :func:`encode_many`), then
# ``ce_subject`` when the event has one. :func:`decode_batch` reads records with exactly this layout by
# position: on freshly fetched records, a dict of the eight headers and six lookups in it cost as much as
# validating a meter reading (GIL profile of a meter worker in the whole pipeline; ``docs/stream-design.md``,
# step 13). A test holds the layout to what the encoders write.
_IOC_LAYOUT = ("ce_id", "ce_specversion", "ce_source", "ce_type", "ce_time", "ce_dataschema", "content-type")

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
    key_field, subject_field = etype.key_field, etype.subject_field
    shape = _SHAPES.get((etype.type, key_field, subject_field, source))
    if shape is None:
        shape = _shape(etype, source)
    source_header, type_header, schema_header = shape
    event_id = id or uuid.uuid4().hex
    if subject is None and subject_field:
        subject = str(data.get(subject_field))
    headers: Headers = [  # the order decode_batch reads fastest (_IOC_LAYOUT)
        ("ce_id", event_id.encode()),
        ("ce_specversion", SPEC_VERSION),
        source_header,
        type_header,
        ("ce_time", (time or now_rfc3339()).encode()),
        schema_header,
        ("content-type", CONTENT_TYPE),
    ]
    if subject:
        headers.append(("ce_subject", subject.encode()))
    if extra_headers:
        headers.extend(extra_headers)
    return EncodedEvent(
        etype.topic, str(data[key_field]).encode(), orjson.dumps(data), headers, event_id, etype.type
    )


#: per (event type, its key and subject fields, source): the header tuples that never change between events
#: (processors encode thousands of observations per emit; building these each time was most of ``encode``). The
#: key holds everything the tuples derive from, so two types that share a name cannot share an entry wrongly.
_SHAPES: dict[
    tuple[str, str, str | None, str], tuple[tuple[str, bytes], tuple[str, bytes], tuple[str, bytes]]
] = {}


def _shape(etype: EventType, source: str) -> tuple[tuple[str, bytes], tuple[str, bytes], tuple[str, bytes]]:
    if len(_SHAPES) > 4096:  # sources are a handful per process; a bound all the same
        _SHAPES.clear()
    shape = _SHAPES[(etype.type, etype.key_field, etype.subject_field, source)] = (
        ("ce_source", source.encode()),
        ("ce_type", etype.type.encode()),
        ("ce_dataschema", etype.schema_id.encode()),
    )
    return shape


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
    """A record's headers by name (a header given twice: the last one)."""
    return {k: v for k, v in (headers or ())}


def validation_reason(exc: ValidationError) -> str:
    """A readable summary of a pydantic error without the offending values (they may be personal data)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:10]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        what = _TEXT_PATTERNS.get((err.get("ctx") or {}).get("pattern", ""))
        parts.append(f"{loc}: {f'Input should be {what}' if what else err['msg']}")
    return "; ".join(parts)


def decode(record: Any) -> ReceivedEvent:
    """Decode an aiokafka ``ConsumerRecord`` into a :class:`ReceivedEvent`, validating the payload.

    Raises :class:`EventDecodeError` for anything that is not a registered, valid event, with the reason
    :func:`decode_batch` gives for it (the same code decides).
    """
    events, failed = decode_batch((record,))
    if failed:
        raise EventDecodeError(failed[0][1])
    return events[0]


# RFC 3339 dates and date-times (the contracts' JSON Schema ``format: date``/``date-time``) as patterns that
# pydantic-core checks in Rust, calendar included (day of month, leap years), so whatever matches also parses
# with ``datetime.fromisoformat``. The offset is optional for ``datetime`` fields (a naive local time) and
# required for ``AwareDatetime`` ones.
_YEAR = r"(?:\d{3}[1-9]|\d{2}[1-9]\d|\d[1-9]\d{2}|[1-9]\d{3})"
_LEAP_YEAR = r"(?:\d{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MONTH_DAY = (
    r"(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\d|30)"
    r"|02-(?:0[1-9]|1\d|2[0-8]))"
)
_DATE = rf"(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)"
_TIME = r"[T ](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,9})?"
_OFFSET = r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
_TEXT_PATTERNS = {
    rf"^{_DATE}$": "a valid date (YYYY-MM-DD)",
    rf"^{_DATE}{_TIME}{_OFFSET}?$": "an RFC 3339 date-time",
    rf"^{_DATE}{_TIME}{_OFFSET}$": "an RFC 3339 date-time with a time zone offset",
}
_TEXT_TYPES: dict[Any, Any] = {}
_PAYLOAD_TYPES: dict[type, Any] = {}


def _json_shaped(annotation: Any) -> Any:
    """``annotation`` as the JSON it is sent as: dates and date-times become strings that must parse as one,
    nested models become dicts (their own cross-field rules still checked), containers and unions recursively."""
    if not _TEXT_TYPES:
        from pydantic import AwareDatetime, StringConstraints

        date_p, datetime_p, aware_p = _TEXT_PATTERNS
        _TEXT_TYPES.update(
            {
                date: Annotated[str, StringConstraints(pattern=date_p)],
                datetime: Annotated[str, StringConstraints(pattern=datetime_p)],
                AwareDatetime: Annotated[str, StringConstraints(pattern=aware_p)],
            }
        )
    if annotation in _TEXT_TYPES:
        return _TEXT_TYPES[annotation]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _payload_type(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if not args:
        return annotation
    if origin is Annotated:
        inner = _json_shaped(args[0])
        return annotation if inner is args[0] else Annotated[(inner, *annotation.__metadata__)]
    shaped = tuple(_json_shaped(a) for a in args)
    if all(a is b for a, b in zip(shaped, args, strict=True)):
        return annotation
    if origin in (typing.Union, types.UnionType):
        return typing.Union[shaped]  # noqa: UP007 - built from a tuple
    return origin[shaped if len(shaped) > 1 else shaped[0]]


def _payload_type(model: type[BaseModel]) -> Any:
    """A TypedDict with ``model``'s fields (JSON-shaped), unknown keys rejected, plus ``model``'s own
    cross-field rules (:meth:`EventModel.payload_rules`) when it has any."""
    td = _PAYLOAD_TYPES.get(model)
    if td is None:
        from typing import NotRequired, Required

        from pydantic import AfterValidator, ConfigDict
        from typing_extensions import TypedDict

        fields = {}
        for name, f in model.model_fields.items():
            shaped = _json_shaped(f.annotation)
            if shaped is f.annotation:
                ann = f.rebuild_annotation()
            else:
                ann = Annotated[(shaped, *f.metadata)] if f.metadata else shaped
            fields[name] = Required[ann] if f.is_required() else NotRequired[ann]
        td = TypedDict(f"{model.__name__}Payload", fields)  # type: ignore[operator,misc,no-redef]
        td.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        if model.__pydantic_decorators__.model_validators:
            rules = getattr(model, "payload_rules", None)
            if rules is None or rules is EventModel.payload_rules:
                raise TypeError(
                    f"{model.__name__} has a model validator: state its rules in payload_rules too"
                )

            def cross_field_rules(payload: dict[str, Any], rules=rules) -> dict[str, Any]:
                rules(payload)
                return payload

            td = Annotated[td, AfterValidator(cross_field_rules)]
        _PAYLOAD_TYPES[model] = td
    return td


_payload_validators: dict[str, Any] = {}


def payload_validator(etype: EventType):
    """Validators of ``etype``'s JSON payload whose output is the payload itself: ``(list of many, one)``.

    The same rules as the contract's model (unknown fields rejected, cross-field rules included), checked by
    pydantic-core straight from JSON bytes, but the result is a plain dict in JSON types: dates and date-times
    stay the RFC 3339 strings they were sent as (they must parse), nested objects stay dicts, so a consumer
    gets what ``orjson.loads`` would give it without parsing the bytes twice or building model instances.
    """
    v = _payload_validators.get(etype.type)
    if v is None:
        from pydantic import TypeAdapter

        td = _payload_type(etype.model)
        v = _payload_validators[etype.type] = (TypeAdapter(list[td]), TypeAdapter(td))  # type: ignore[valid-type]
    return v


_fast_payloads: dict[str, Any] = {}


def fast_payload_decoder(etype: EventType):
    """The :class:`~shared.contracts.fast_payloads.FastPayloads` first try for ``etype``'s payloads, built from
    :func:`payload_validator`'s schema, or ``None`` if the schema has anything it does not cover."""
    try:
        return _fast_payloads[etype.type]
    except KeyError:
        from shared.contracts.fast_payloads import fast_payloads

        fast = _fast_payloads[etype.type] = fast_payloads(
            payload_validator(etype)[1].core_schema, f"{etype.model.__name__}Payload"
        )
        return fast


def decode_batch(records: Sequence[Any], tp: Any = None) -> tuple[list[ReceivedEvent], list[tuple[Any, str]]]:
    """Decode and validate many records at once: ``(valid events in order, [(record, reason), ...])``.

    Payloads of one type are validated together: first by the type's msgspec decoder
    (:func:`fast_payload_decoder`, the same rules, about twice as fast), then, if it has none or it refuses
    the batch, in a single pydantic-core call over a JSON array whose output is the payloads themselves (see
    :func:`payload_validator`); only when that fails are they checked one by one to find the bad ones and say
    why. Same rules as :func:`decode`.

    ``tp``: the ``TopicPartition`` all ``records`` come from, for records that do not carry their topic and
    partition (bare records, :mod:`shared.kafka.records`); without it each record's own are used.
    """
    failed: list[tuple[Any, str]] = []
    events: list[ReceivedEvent] = []
    # ce_type → (its type, payloads, their events, their records), in order
    by_type: dict[bytes, tuple[EventType, list[bytes], list[ReceivedEvent], list[Any]]] = {}
    text: dict[bytes, str] = {}  # header values repeated across a batch (source, time, subject) decoded once
    append = events.append
    topic = partition = None
    if tp is not None:
        topic, partition = tp.topic, tp.partition
    for r in records:
        hs = r.headers
        n = len(hs) if hs else 0
        if n > 8 and hs[-1][0] == "ioc_mac":  # provenance headers come last (shared.contracts.provenance)
            hs = hs[:-2]
            n -= 2
        # IOC's own layout is read by position (see _IOC_LAYOUT); any other takes the general path.
        if n == 8:
            (
                (k0, event_id),
                (k1, spec),
                (k2, source),
                (k3, tname),
                (k4, ce_time),
                (k5, _),
                (k6, _),
                (k7, subject),
            ) = hs
            layout = k7 == "ce_subject"
        elif n == 7:
            (k0, event_id), (k1, spec), (k2, source), (k3, tname), (k4, ce_time), (k5, _), (k6, _) = hs
            subject = None
            layout = True
        else:
            layout = False
        if not (layout and (k0, k1, k2, k3, k4, k5, k6) == _IOC_LAYOUT):
            h = dict(hs) if hs else {}  # a header given twice: the last one counts
            spec, tname, event_id, source = (
                h.get("ce_specversion"),
                h.get("ce_type"),
                h.get("ce_id"),
                h.get("ce_source"),
            )
            ce_time, subject = h.get("ce_time"), h.get("ce_subject")
        if spec != SPEC_VERSION:
            failed.append((r, "missing or unsupported ce_specversion header"))
            continue
        if tname is None or event_id is None or source is None:  # absent, or present with a null value
            failed.append((r, "missing ce_type, ce_id or ce_source header"))
            continue
        if not ce_time:
            ce_time = b""
        group = by_type.get(tname)
        value = r.value
        try:
            if group is None:
                etype = EVENT_TYPES.get(tname.decode())
                if etype is None:
                    failed.append((r, f"unknown event type {tname.decode()!r}"))
                    continue
                group = by_type[tname] = (etype, [], [], [])
            if value is None:
                failed.append((r, "record has no value"))
                continue
            ev = ReceivedEvent(
                group[0].type,
                event_id.decode(),
                text.get(source) or text.setdefault(source, source.decode()),
                text.get(ce_time) or text.setdefault(ce_time, ce_time.decode()),
                None if not subject else text.get(subject) or text.setdefault(subject, subject.decode()),
                r.key.decode() if r.key else None,
                None,  # type: ignore[arg-type]
                topic or r.topic,
                r.partition if partition is None else partition,
                r.offset,
                r.timestamp,
            )
        except UnicodeDecodeError:
            failed.append((r, "headers are not UTF-8"))
            continue
        group[1].append(value)
        group[2].append(ev)
        group[3].append(r)
        append(ev)
    bad = False
    for etype, values, group_events, group_records in by_type.values():
        fast = fast_payload_decoder(etype)
        if fast is not None:
            payloads = fast.decode(values)
            if payloads is not None:
                for ev, data in zip(group_events, payloads, strict=True):
                    ev.data = data
                continue
        many, one = payload_validator(etype)
        try:
            for ev, data in zip(
                group_events, many.validate_json(b"[" + b",".join(values) + b"]"), strict=True
            ):
                ev.data = data
            continue
        except (ValidationError, ValueError):
            pass
        for value, ev, record in zip(values, group_events, group_records, strict=True):
            try:
                ev.data = one.validate_json(value)
            except (ValidationError, ValueError) as exc:
                bad = True
                reason = validation_reason(exc) if isinstance(exc, ValidationError) else "value is not JSON"
                failed.append((record, f"{etype.type}: {reason}"))
    if bad:
        events = [ev for ev in events if ev.data is not None]
    return events, failed
