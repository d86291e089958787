"""Backward-compatibility check of JSON Schemas (Confluent's BACKWARD rule: the new schema reads old data).

IOC payloads are closed (``additionalProperties: false``), so for a new version of a schema to accept every
document valid under the old one:
- no property may be removed, and no new property may be required;
- a property may not become required, change type (except integer → number), lose enum values or nullability,
  or get tighter bounds (min/max, lengths, pattern, format).
"""

from __future__ import annotations

from typing import Any

_BOUNDS_UP = ("minimum", "exclusiveMinimum", "minLength", "minItems")  # raising these narrows
_BOUNDS_DOWN = ("maximum", "exclusiveMaximum", "maxLength", "maxItems")  # lowering these narrows


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            break
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _types(schema: dict, root: dict) -> set[str]:
    schema = _resolve(schema, root)
    if "anyOf" in schema or "oneOf" in schema:
        out: set[str] = set()
        for s in schema.get("anyOf", []) + schema.get("oneOf", []):
            out |= _types(s, root)
        return out
    if "const" in schema:
        return {f"const:{schema['const']!r}"}
    if "enum" in schema:
        return {f"const:{v!r}" for v in schema["enum"]}
    t = schema.get("type")
    if t is None:
        return {"any"}
    return set(t) if isinstance(t, list) else {t}


def _accepts(new_types: set[str], old_types: set[str]) -> list[str]:
    if "any" in new_types:
        return []
    missing = []
    for t in old_types:
        if t in new_types:
            continue
        if t == "integer" and "number" in new_types:
            continue
        if t.startswith("const:") and any(n in ("string", "integer", "number", "boolean") for n in new_types):
            continue
        missing.append(t)
    return missing


def check_backward(
    old: dict, new: dict, path: str = "", old_root: dict | None = None, new_root: dict | None = None
) -> list[str]:
    """Problems that would make ``new`` reject documents valid under ``old`` (empty list: compatible)."""
    old_root = old_root or old
    new_root = new_root or new
    old = _resolve(old, old_root)
    new = _resolve(new, new_root)
    problems: list[str] = []
    missing = _accepts(_types(new, new_root), _types(old, old_root))
    if missing:
        problems.append(f"{path or '<root>'}: no longer accepts {', '.join(sorted(missing))}")
    for k in _BOUNDS_UP:
        if k in new and (k not in old or new[k] > old[k]):
            problems.append(f"{path or '<root>'}: {k} tightened")
    for k in _BOUNDS_DOWN:
        if k in new and (k not in old or new[k] < old[k]):
            problems.append(f"{path or '<root>'}: {k} tightened")
    for k in ("pattern", "format"):
        if k in new and new.get(k) != old.get(k):
            problems.append(f"{path or '<root>'}: {k} changed")
    old_props = old.get("properties", {})
    new_props = new.get("properties", {})
    if old_props or new_props:
        for name in old_props:
            if name not in new_props and new.get("additionalProperties") is False:
                problems.append(f"{path}.{name}: removed")
        new_required = set(new.get("required", [])) - set(old.get("required", []))
        for name in sorted(new_required):
            problems.append(f"{path}.{name}: became required")
        for name, sub in old_props.items():
            if name in new_props:
                problems += check_backward(sub, new_props[name], f"{path}.{name}", old_root, new_root)
    if "items" in old and "items" in new:
        problems += check_backward(old["items"], new["items"], f"{path}[]", old_root, new_root)
    # anyOf branches (nullable fields, unions): every old branch must still be accepted by some new branch
    old_any = old.get("anyOf")
    new_any = new.get("anyOf")
    if old_any and new_any:
        for branch in old_any:
            b = _resolve(branch, old_root)
            if not any(not check_backward(b, nb, path, old_root, new_root) for nb in new_any):
                problems.append(f"{path or '<root>'}: an accepted alternative was narrowed")
    return problems
