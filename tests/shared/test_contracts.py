"""Event contracts: naming, keys, exported artefacts fresh, schemas backward compatible."""

from __future__ import annotations

import base64
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from shared.contracts import EVENT_TYPES, TOPICS
from shared.contracts.compat import check_backward
from shared.contracts.export import asyncapi


@functools.cache
def render_all() -> dict[str, bytes]:
    """The artefacts as a fresh interpreter renders them: test modules may register private test domains
    (stream fixtures, city tests) in this process, which must not leak into the published contracts."""
    code = (
        "import base64, json; from shared.contracts.export import render_all; "
        "print(json.dumps({k: base64.b64encode(v).decode() for k, v in render_all().items()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {k: base64.b64decode(v) for k, v in json.loads(out).items()}


ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "contracts"
IRREGULAR_PAST = {
    "sent",
    "begun",
    "done",
    "set",
    "lost",
    "seen",
    "taken",
    "given",
    "made",
    "paid",
    "shown",
    "left",
}


def _is_past_tense(type_name: str) -> bool:
    verb = type_name.rsplit(".", 2)[-2]  # ioc.meter.reading.recorded.v1 → recorded (handed_over → handed)
    return any(w.endswith("ed") or w in IRREGULAR_PAST for w in verb.split("_"))


def test_event_types_are_versioned_past_tense_and_keyed_by_an_entity():
    for name, et in EVENT_TYPES.items():
        assert re.fullmatch(r"ioc\.[a-z0-9_.]+\.v\d+", name), name
        assert _is_past_tense(name), f"{name}: events are named in the past tense"
        assert et.topic in TOPICS, f"{name}: topic {et.topic} is not in the catalogue"
        assert et.key_field in et.model.model_fields


def test_topics_have_owner_key_and_layout():
    for t in TOPICS.values():
        assert t.name.startswith("ioc."), t.name
        assert t.partitions >= 1 and t.owner and t.key and t.description


def test_asyncapi_document_covers_every_topic_and_type():
    doc = asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == set(TOPICS)
    assert {m["name"] for m in doc["components"]["messages"].values()} == set(EVENT_TYPES)
    for et in EVENT_TYPES.values():  # every message points at its exported schema
        msg = doc["components"]["messages"][et.type.replace(".", "_")]
        assert msg["payload"]["$ref"] == f"schemas/{et.type}.json"


def test_committed_contracts_are_fresh():
    stale = [
        rel
        for rel, content in render_all().items()
        if not (CONTRACTS / rel).exists() or (CONTRACTS / rel).read_bytes() != content
    ]
    assert not stale, f"run `make contracts` and commit: {stale}"


def _first_published(rel: str) -> dict | None:
    """The schema as first committed (the published baseline), from git history."""
    try:
        sha = subprocess.run(
            ["git", "log", "--diff-filter=A", "--format=%H", "--", f"contracts/{rel}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not sha:
            return None
        text = subprocess.run(
            ["git", "show", f"{sha[-1]}:contracts/{rel}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(text)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return None


@pytest.mark.parametrize("rel", sorted(r for r in render_all() if r.endswith(".json")))
def test_schema_is_backward_compatible_with_committed_and_first_published_versions(rel):
    new = json.loads(render_all()[rel])
    for old in (
        json.loads((CONTRACTS / rel).read_text()) if (CONTRACTS / rel).exists() else None,
        _first_published(rel),
    ):
        if old is not None:
            assert check_backward(old, new) == [], rel


def _obj(props, required=(), closed=True):
    return {
        "type": "object",
        "properties": props,
        "required": list(required),
        "additionalProperties": not closed,
    }


def test_compat_rules_follow_confluent_backward():
    base = _obj({"a": {"type": "string"}, "n": {"type": "integer", "maximum": 10}}, ["a"])
    # adding an optional field: compatible
    assert check_backward(base, _obj({**base["properties"], "b": {"type": "string"}}, ["a"])) == []
    # adding a required field: not compatible (old data lacks it)
    assert check_backward(base, _obj({**base["properties"], "b": {"type": "string"}}, ["a", "b"]))
    # removing a field from a closed schema: not compatible
    assert check_backward(base, _obj({"a": {"type": "string"}}, ["a"]))
    # widening integer → number: compatible; number → integer: not
    assert (
        check_backward(base, _obj({"a": {"type": "string"}, "n": {"type": "number", "maximum": 10}}, ["a"]))
        == []
    )
    assert check_backward(_obj({"x": {"type": "number"}}), _obj({"x": {"type": "integer"}}))
    # tightening a bound: not compatible; relaxing: compatible
    assert check_backward(
        base, _obj({"a": {"type": "string"}, "n": {"type": "integer", "maximum": 5}}, ["a"])
    )
    assert (
        check_backward(base, _obj({"a": {"type": "string"}, "n": {"type": "integer", "maximum": 50}}, ["a"]))
        == []
    )
    # narrowing an enum: not compatible
    assert check_backward(_obj({"s": {"enum": ["x", "y"]}}), _obj({"s": {"enum": ["x"]}}))
    # making a field nullable: compatible; dropping null: not
    nullable = _obj({"v": {"anyOf": [{"type": "number"}, {"type": "null"}]}})
    assert check_backward(_obj({"v": {"type": "number"}}), nullable) == []
    assert check_backward(nullable, _obj({"v": {"type": "number"}}))
