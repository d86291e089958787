"""Batch ingest helpers: validate a batch item by item, report each rejected item clearly.

The fast path validates the whole batch in one pydantic-core call; only when something is wrong does it fall
back to per-item validation to say which item, which field and why. Reasons never echo input values.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, Field, TypeAdapter, ValidationError

from shared.contracts.base import is_entity_id
from shared.metrics import EVENTS_ACCEPTED, EVENTS_REJECTED

M = TypeVar("M", bound=BaseModel)

#: Dates and times IOC accepts anywhere (bodies and query parameters): years [SANE_MIN_YEAR, SANE_MAX_YEAR).
#: Outside, a value is a typo or a probe (year 0001 overflowed date arithmetic into a 500, raised alarms).
SANE_MIN_YEAR = 2000
SANE_MAX_YEAR = 2100


def _sane_year(value: date) -> date:
    # The year alone: comparing aware date-times near year 1 can itself overflow.
    if not SANE_MIN_YEAR <= value.year < SANE_MAX_YEAR:
        raise ValueError(f"must be between {SANE_MIN_YEAR}-01-01 and {SANE_MAX_YEAR - 1}-12-31")
    return value


SaneDatetime = Annotated[datetime, AfterValidator(_sane_year)]
SaneAwareDatetime = Annotated[AwareDatetime, AfterValidator(_sane_year)]
SaneDate = Annotated[date, AfterValidator(_sane_year)]


@dataclass(frozen=True, slots=True)
class ItemError:
    """One rejected item of a batch."""

    index: int
    id: str | None
    field: str | None
    reason: str
    code: str = "invalid"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RejectedItem(BaseModel):
    index: int = Field(description="position of the item in the submitted batch (0-based)")
    id: str | None = Field(None, description="the item's entity id, when it had a readable one")
    field: str | None = Field(None, description="the offending field")
    reason: str = Field(description="why it was rejected")
    code: str = Field(description="machine-readable reason: invalid, unknown_entity, duplicate, ...")


class BatchResult(BaseModel):
    """Answer to a batch: how many items were accepted (durably published) and which were rejected, and why."""

    status: str = Field(description="accepted, partial or rejected")
    accepted: int
    rejected: list[RejectedItem] = Field(default_factory=list)
    duplicates: int = 0


_adapters: dict[type, TypeAdapter] = {}


def _adapter(model: type[M]) -> TypeAdapter:
    a = _adapters.get(model)
    if a is None:
        a = _adapters[model] = TypeAdapter(list[model])  # type: ignore[valid-type]
    return a


def named_entities(items: Sequence[Any], id_field: str) -> Iterator[tuple[int, str]]:
    """(index, id) of the raw items whose ``id_field`` is a well-formed entity id, before item validation: what
    an ownership check (:func:`shared.auth.refuse_unowned`) looks at. A malformed id names no entity; validation
    rejects that item, and its text is never echoed."""
    for i, item in enumerate(items):
        entity = item.get(id_field) if isinstance(item, dict) else None
        if isinstance(entity, str) and is_entity_id(entity):
            yield i, entity


def validate_items(
    model: type[M], items: Sequence[Any], *, id_field: str | None = None
) -> tuple[list[tuple[int, M]], list[ItemError]]:
    """Validate ``items`` against ``model``. Returns ``(valid (index, model) pairs, errors)``."""
    try:
        parsed = _adapter(model).validate_python(items)
        return list(enumerate(parsed)), []
    except ValidationError:
        pass
    valid: list[tuple[int, M]] = []
    errors: list[ItemError] = []
    for i, raw in enumerate(items):
        try:
            valid.append((i, model.model_validate(raw)))
        except ValidationError as exc:
            err = exc.errors(include_input=False, include_url=False)[0]
            fields = [str(p) for p in err["loc"] if not isinstance(p, int)]
            ident = raw.get(id_field) if id_field and isinstance(raw, dict) else None
            errors.append(
                ItemError(
                    i,
                    ident if isinstance(ident, str) else None,
                    ".".join(fields) or None,
                    err["msg"],
                    "invalid",
                )
            )
    return valid, errors


def batch_result(
    service: str, kind: str, accepted: int, errors: Sequence[ItemError], duplicates: int = 0
) -> tuple[int, dict]:
    """HTTP status and body for a batch: 200 when something was accepted (or all were duplicates), else 422."""
    EVENTS_ACCEPTED.labels(service, kind).inc(accepted)
    for e in errors:
        EVENTS_REJECTED.labels(service, kind, e.code).inc()
    if errors and accepted == 0 and duplicates == 0:
        status_word, status = "rejected", 422
    elif errors:
        status_word, status = "partial", 200
    else:
        status_word, status = "accepted", 200
    body = {
        "status": status_word,
        "accepted": accepted,
        "duplicates": duplicates,
        "rejected": [e.as_dict() for e in errors],
    }
    return status, body


class Batch(BaseModel, Generic[M]):
    """Generic batch envelope (documented schema); services subclass with their item type."""

    items: list[M]
