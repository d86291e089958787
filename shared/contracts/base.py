"""Base classes and the registry of IOC's event contracts.

An *event type* (``ioc.meter.reading.recorded.v1``) names one versioned payload schema (a pydantic model), the
topic it is published on and the payload field that holds the record key (the entity id). A *topic spec* says
how a topic is laid out (partitions, key, retention or compaction, owning service). Both registries are plain
data, filled when the ``shared.contracts`` modules are imported, and exported as JSON Schema and AsyncAPI for
outside subscribers (``make contracts``).
"""

from __future__ import annotations

import builtins
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict

# Strict scalar types: JSON `false` is not a number, "12" is not an int.
StrictFloat = Annotated[float, Strict()]
StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
ENTITY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"
EntityId = Annotated[str, Field(min_length=1, max_length=64, pattern=ENTITY_ID_PATTERN)]
_ENTITY_ID = re.compile(ENTITY_ID_PATTERN[1:-1])


def is_entity_id(value: object) -> bool:
    """Whether ``value`` is a well-formed :data:`EntityId` (for screening raw input before it is validated)."""
    return isinstance(value, str) and len(value) <= 64 and _ENTITY_ID.fullmatch(value) is not None


AreaCode = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._\-]+$")]


# Bidirectional embedding/override/isolate controls: they let a name render as something else to operators.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def _display_text(value: str) -> str:
    for ch in value:
        if ch in _BIDI_CONTROLS:
            raise ValueError("bidirectional control characters are not allowed")
        if unicodedata.category(ch) == "Cc" and ch not in "\t\n":
            raise ValueError("control characters are not allowed")
    return value


#: Free text shown to people (names, addresses, messages): no control or bidi-override characters
#: (PostgreSQL text cannot hold NUL either). Combine with a max_length Field.
DisplayText = Annotated[str, AfterValidator(_display_text)]


class EventModel(BaseModel):
    """Base of every event payload: unknown fields are rejected, instances are immutable.

    Cross-field rules go in :meth:`payload_rules`, written once against a mapping that may hold typed values
    (a model's fields) or JSON ones (a consumer's payload dict); the model's validator calls it, and consumers
    check payloads with it without building model instances.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_timedelta="float")

    @staticmethod
    def payload_rules(payload: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` when fields that are each valid do not fit together. None by default."""


def parse_time(value: str) -> datetime:
    """Parse an RFC 3339 date-time (``Z`` suffix accepted)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def as_instant(value: datetime | str) -> datetime:
    """A date-time field's value as a ``datetime``, whether typed already or RFC 3339 text (for payload rules)."""
    return value if isinstance(value, datetime) else parse_time(value)


@dataclass(frozen=True)
class TopicSpec:
    """One Kafka topic of the catalogue."""

    name: str
    partitions: int
    key: str
    owner: str
    description: str
    retention_ms: int | None = 7 * 24 * 3600 * 1000
    compacted: bool = False
    internal: bool = False

    def config(self) -> dict[str, str]:
        """Topic-level configuration for topic creation (and the Strimzi KafkaTopic)."""
        cfg: dict[str, str] = {}
        if self.compacted:
            cfg["cleanup.policy"] = "compact"
        if self.retention_ms is not None and not self.compacted:
            cfg["retention.ms"] = str(self.retention_ms)
        return cfg


@dataclass(frozen=True)
class EventType:
    """One versioned event type: its schema model, topic and key field."""

    type: str
    model: builtins.type[EventModel]  # builtins: the field `type` shadows the builtin in the class body
    topic: str
    key_field: str
    version: int
    description: str
    subject_field: str | None = None
    examples: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def schema_id(self) -> str:
        """The ``ce_dataschema`` URI of this type (a committed file under ``contracts/schemas``)."""
        return f"urn:ioc:schema:{self.type}"


TOPICS: dict[str, TopicSpec] = {}
EVENT_TYPES: dict[str, EventType] = {}


def register_topic(spec: TopicSpec) -> TopicSpec:
    """Add a topic to the catalogue (idempotent for an identical spec)."""
    existing = TOPICS.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"topic {spec.name} registered twice with different specs")
    TOPICS[spec.name] = spec
    return spec


def event_type(
    type_name: str,
    *,
    topic: TopicSpec,
    key: str,
    description: str,
    subject: str | None = None,
    examples: tuple[dict[str, Any], ...] = (),
):
    """Class decorator registering a payload model as a versioned event type.

    ``type_name`` ends in ``.v<N>``; events are named in the past tense (``reading.recorded``).
    """

    def register(model: type[EventModel]) -> type[EventModel]:
        version = int(type_name.rsplit(".v", 1)[1])
        if key not in model.model_fields:
            raise ValueError(f"{type_name}: key field {key!r} is not a field of {model.__name__}")
        et = EventType(type_name, model, topic.name, key, version, description, subject, examples)
        if type_name in EVENT_TYPES and EVENT_TYPES[type_name].model is not model:
            raise ValueError(f"event type {type_name} registered twice")
        EVENT_TYPES[type_name] = et
        model.__ioc_event_type__ = et  # type: ignore[attr-defined]
        return model

    return register


def event_type_of(model: type[EventModel] | EventModel) -> EventType:
    """The registered :class:`EventType` of a payload model (or instance)."""
    cls = model if isinstance(model, type) else type(model)
    try:
        return cls.__ioc_event_type__  # type: ignore[attr-defined]
    except AttributeError:
        raise LookupError(f"{cls.__name__} is not a registered event type") from None
