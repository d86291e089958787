"""Batch request bodies validated straight from the raw JSON bytes.

The fast path is one pydantic-core call over the whole body (envelope and every item, TypedDict items: no
per-item Python objects beyond the dicts). Only when that fails is the body looked at again to report what is
wrong: malformed JSON (400), a bad envelope (422 ``invalid_request``, as FastAPI reports it) or, item by item,
which item, which field and why (the rest of the batch goes on). Reasons never echo input values.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from shared.auth import ApiError
from shared.ingest import ItemError


class BatchParser:
    """Validates ``{"items": [...]}`` bodies whose items are ``item_type`` (a TypedDict) dicts."""

    def __init__(self, body_type: Any, item_type: Any, *, id_field: str, max_items: int):
        """``max_items``: the schema's ceiling (a longer list is a 422 ``invalid_request``)."""
        self.body = TypeAdapter(body_type)
        self.item = TypeAdapter(item_type)
        self.id_field = id_field

        class Envelope(TypedDict):
            __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
            items: Annotated[list[Any], Field(min_length=1, max_length=max_items)]

        self.envelope = TypeAdapter(Envelope)

    def parse(
        self, raw: bytes, *, limit: int | None = None, noun: str = "items"
    ) -> tuple[list[tuple[int, dict[str, Any]]], list[ItemError]]:
        """``(valid (index, item) pairs, per-item errors)``; raises for a body that is not a batch at all, and a
        413 ``batch_too_large`` for one of more than ``limit`` items (a setting below the schema's ceiling)."""
        try:
            items = self.body.validate_json(raw)["items"]
        except ValidationError:
            pass
        else:
            check_batch_size(len(items), limit, noun)
            return list(enumerate(items)), []
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ApiError(400, "malformed_json", "the request body is not valid JSON") from None
        try:
            items = self.envelope.validate_python(data)["items"]
        except ValidationError as exc:
            raise RequestValidationError(
                [
                    {**e, "loc": ("body", *e["loc"])}
                    for e in exc.errors(include_input=False, include_url=False)
                ]
            ) from None
        check_batch_size(len(items), limit, noun)
        valid: list[tuple[int, dict[str, Any]]] = []
        errors: list[ItemError] = []
        validate = self.item.validate_python
        for i, raw_item in enumerate(items):
            try:
                valid.append((i, validate(raw_item)))
            except ValidationError as exc:
                err = exc.errors(include_input=False, include_url=False)[0]
                fields = [str(p) for p in err["loc"] if not isinstance(p, int)]
                ident = raw_item.get(self.id_field) if isinstance(raw_item, dict) else None
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


def check_batch_size(size: int, limit: int | None, noun: str) -> None:
    """413 naming the limit when a batch holds more than ``limit`` items (None: no limit)."""
    if limit is not None and size > limit:
        raise ApiError(413, "batch_too_large", f"at most {limit} {noun} per request (this one has {size})")


def inline_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema with its local ``$defs`` references resolved in place (for ``openapi_extra``)."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)
