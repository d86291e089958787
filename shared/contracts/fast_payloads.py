"""A faster first try at validating a batch of one event type's payloads, with the contract's own rules.

:func:`shared.contracts.cloudevents.decode_batch` validates payloads with pydantic-core (the contract's model
turned into a JSON-shaped TypedDict, :func:`~shared.contracts.cloudevents.payload_validator`). Most of what that
costs is pydantic-core building the dicts, not the rules (``docs/stream-design.md``, step 2). This module
builds, from the same validator's core schema, a msgspec decoder that checks the same things in another way:

- structure, types, literals, lengths and bounds: a msgspec ``Struct`` with ``forbid_unknown_fields``, decoded
  from the batch's JSON array in C and turned back into plain dicts (``msgspec.to_builtins``, absent optional
  fields left out, as the TypedDict leaves them out);
- string patterns: one pass of pydantic-core's own regex engine per pattern over the batch's values of every
  field that has it, joined with NUL (which no accepted pattern can match, and which is counted so that no value
  holds one);
- the contract's cross-field rules: the same Python function, called per payload.

It is only ever a first try. :meth:`FastPayloads.decode` gives the payloads or ``None``; on ``None`` the caller
runs pydantic-core, which decides and says why. So the fast path may be stricter than the contract (msgspec
refuses ``NaN``, out-of-range floats and lax coercions) but never looser, and what it
accepts it must give exactly as pydantic-core would: ``tests/shared/test_fast_payloads.py`` holds it to that
for every registered event type. A schema with anything this module does not know (nested objects, patterns
inside lists, lax string options...) gets no fast decoder at all (:func:`fast_payloads` returns ``None``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec

_NUL = "\x00"
_UNSET = msgspec.UNSET

# Keys of the core schemas this module understands (anything else: no fast decoder). ``metadata`` only carries
# JSON Schema hints; ``strict`` can be ignored because msgspec never coerces (it is at least as strict).
_SCALAR_KEYS = {
    "str": {"type", "min_length", "max_length", "pattern", "metadata", "strict"},
    "int": {"type", "ge", "gt", "le", "lt", "metadata", "strict"},
    "float": {"type", "ge", "gt", "le", "lt", "metadata", "strict"},
    "bool": {"type", "metadata", "strict"},
    "literal": {"type", "expected", "metadata"},
}
_META_KEYS = ("min_length", "max_length", "ge", "gt", "le", "lt")


class Unsupported(Exception):
    """The schema has something the fast decoder does not check the way pydantic-core does."""


class FastPayloads:
    """Decodes a batch of one type's payloads (JSON bytes each) into the dicts pydantic-core would give, or
    ``None`` when any of them is not plainly valid (then the caller validates with pydantic-core)."""

    __slots__ = ("_checks", "_decoder", "_rules")

    def __init__(
        self,
        decoder: msgspec.json.Decoder,
        checks: list[Callable[[list], bool]],
        rules: Callable[[dict], Any] | None,
    ):
        self._decoder = decoder
        self._checks = checks
        self._rules = rules

    def decode(self, values: Sequence[bytes]) -> list[dict[str, Any]] | None:
        try:
            structs = self._decoder.decode(b"[" + b",".join(values) + b"]")
        except (msgspec.ValidationError, msgspec.DecodeError):
            return None
        if len(structs) != len(values):  # a value holding more than one JSON document
            return None
        for check in self._checks:
            if not check(structs):
                return None
        payloads = msgspec.to_builtins(structs)
        if self._rules is not None:
            rules = self._rules
            try:  # what they return is the payload, as in pydantic-core (the contracts' rules return it as is)
                payloads = [rules(p) for p in payloads]
            except Exception:  # pydantic-core calls the same rules and reports what they raised
                return None
        return payloads


def fast_payloads(core_schema: dict[str, Any], name: str = "Payload") -> FastPayloads | None:
    """A :class:`FastPayloads` for the payload validator with ``core_schema`` (a TypedDict's, optionally wrapped
    in the contract's cross-field rules), or ``None`` if it has anything this module does not cover."""
    try:
        return _build(core_schema, name)
    except Unsupported:
        return None


def _build(schema: dict[str, Any], name: str) -> FastPayloads:
    rules = None
    if schema["type"] == "function-after":
        fn = schema["function"]
        if set(schema) - {"type", "function", "schema", "metadata"} or fn.get("type") != "no-info":
            raise Unsupported("validator with info")
        rules, schema = fn["function"], schema["schema"]
    if schema["type"] != "typed-dict":
        raise Unsupported(schema["type"])
    if set(schema) - {
        "type",
        "fields",
        "cls",
        "computed_fields",
        "config",
        "extra_behavior",
        "ref",
        "metadata",
    }:
        raise Unsupported("typed-dict options")
    if schema.get("extra_behavior") != "forbid" or schema.get("computed_fields"):
        raise Unsupported("open object")
    fields: list[tuple] = []
    patterns: dict[str, list[str]] = {}
    for fname, field in schema["fields"].items():
        if set(field) - {"type", "schema", "required", "metadata"}:
            raise Unsupported("field options (aliases...)")
        fschema, nullable = field["schema"], False
        if fschema["type"] == "nullable":
            if set(fschema) - {"type", "schema", "metadata"}:
                raise Unsupported("nullable options")
            fschema, nullable = fschema["schema"], True
        if fschema["type"] == "list":
            ann = _list_type(fschema)
        else:
            ann = _scalar_type(fschema)
            if fschema.get("pattern") is not None:
                patterns.setdefault(fschema["pattern"], []).append(fname)
        if nullable:
            ann = ann | None
        if field.get("required", True):
            fields.append((fname, ann))
        else:
            fields.append((fname, ann | msgspec.UnsetType, _UNSET))
    try:
        # gc=False: the structs live only until to_builtins and hold no containers that could point back at them
        struct = msgspec.defstruct(name, fields, kw_only=True, forbid_unknown_fields=True, gc=False)
        decoder = msgspec.json.Decoder(list[struct])  # type: ignore[valid-type]  # a struct made at run time
    except (TypeError, ValueError) as exc:  # a field name or type msgspec does not take
        raise Unsupported(str(exc)) from exc
    checks = [_pattern_check(pattern, names) for pattern, names in patterns.items()]
    return FastPayloads(decoder, checks, rules)


def _scalar_type(schema: dict[str, Any]) -> Any:
    kind = schema["type"]
    allowed = _SCALAR_KEYS.get(kind)
    if allowed is None or set(schema) - allowed:
        raise Unsupported(kind)
    if kind == "literal":
        expected = schema["expected"]
        if not expected or not all(type(v) in (str, int) for v in expected):  # not bools, None...
            raise Unsupported("literal of other than strings and integers")
        return Literal[tuple(expected)]  # type: ignore[misc]  # the values are data, known at run time
    return _constrained({"str": str, "int": int, "float": float, "bool": bool}[kind], schema)


def _list_type(schema: dict[str, Any]) -> Any:
    if set(schema) - {"type", "items_schema", "min_length", "max_length", "metadata", "strict"}:
        raise Unsupported("list options")
    items = schema.get("items_schema")
    if items is None or items["type"] == "list" or items.get("pattern") is not None:
        raise Unsupported("list items")
    return _constrained(list[_scalar_type(items)], schema)  # type: ignore[misc]  # the item type is data


def _constrained(ann: Any, schema: dict[str, Any]) -> Any:
    """``ann`` with the lengths and bounds ``schema`` sets (the keys were checked to be ones it may have)."""
    meta = {k: schema[k] for k in _META_KEYS if schema.get(k) is not None}
    return Annotated[ann, msgspec.Meta(**meta)] if meta else ann


# patterns ---------------------------------------------------------------------------------------------------


def _pattern_check(pattern: str, names: list[str]) -> Callable[[list], bool]:
    """A check that every value of the ``names`` fields in a batch matches ``pattern``. Absent and null values
    are skipped: their fields' types decide about them."""
    matches = _joined(_body(pattern))
    getters = [attrgetter(name) for name in names]

    def check(structs: list) -> bool:
        values = [v for get in getters for v in map(get, structs) if v is not None and v is not _UNSET]
        return not values or matches(values)

    return check


def _body(pattern: str) -> str:
    """The body of a pattern anchored at both ends (``^...$``), checked to be one this module can run over NUL-
    joined values with the same meaning."""
    if not (pattern.startswith("^") and pattern.endswith("$") and not pattern.endswith(r"\$")):
        raise Unsupported("unanchored pattern")  # pydantic-core searches; the joined pass needs whole values
    body = pattern[1:-1]
    try:
        from re import _parser  # type: ignore[attr-defined]  # the parser behind re.compile (CPython 3.11+)

        parsed = _parser.parse(body)
    except Exception as exc:
        raise Unsupported(f"pattern {pattern!r}") from exc
    if parsed.state.flags & ~re.UNICODE:  # (?i), (?s)... at the start: global flags
        raise Unsupported("pattern flags")
    _check_nodes(parsed)
    return body


def _check_nodes(nodes: Any) -> None:
    """Only constructs that cannot match NUL, read alike by Python's parser (used here to look at the pattern) and
    Rust's regex (which runs it): literals, positive classes, groups, alternation, repetition."""
    from re import _constants as c  # type: ignore[attr-defined]

    for op, arg in nodes:
        if op is c.LITERAL:
            if arg == 0:
                raise Unsupported("NUL in pattern")
        elif op is c.IN:
            for item_op, item in arg:
                if item_op is c.LITERAL and item != 0:
                    continue
                if item_op is c.RANGE and item[0] > 0:
                    continue
                if item_op is c.CATEGORY and item in (c.CATEGORY_DIGIT, c.CATEGORY_WORD, c.CATEGORY_SPACE):
                    continue
                raise Unsupported(f"class item {item_op}")
        elif op is c.SUBPATTERN:
            _group, add_flags, del_flags, sub = arg
            if add_flags or del_flags:
                raise Unsupported("inline flags")
            _check_nodes(sub)
        elif op is c.BRANCH:
            for alt in arg[1]:
                _check_nodes(alt)
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
            _check_nodes(arg[2])
        else:
            raise Unsupported(f"pattern construct {op}")


def _joined(body: str) -> Callable[[list[str]], bool]:
    """Whether every value matches ``body`` whole, in one pass: the values joined with NUL must be body (NUL
    body)*. Since ``body`` cannot match NUL, the segments are exactly the values, provided none holds a NUL
    (counted). The pass runs in pydantic-core, whose Rust regex engine is the one that checks the contract's
    pattern (and, unlike Python's ``re``, never backtracks: the calendar pattern of dates costs ~50 ns a value)."""
    from pydantic_core import SchemaValidator, ValidationError, core_schema

    validator = SchemaValidator(core_schema.str_schema(pattern=rf"^(?:{body})(?:\x00(?:{body}))*$"))
    validate = validator.validate_python

    def matches(values: list[str]) -> bool:
        joined = _NUL.join(values)
        if joined.count(_NUL) != len(values) - 1:
            return False
        try:
            validate(joined)
        except ValidationError:
            return False
        return True

    return matches
