"""Export the contracts for outside subscribers: one JSON Schema per event type and version, and an
AsyncAPI 3.0 document of every topic. ``make contracts`` writes them under ``contracts/``; a test fails when
the committed files are stale or a change is not backward compatible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from shared.contracts import EVENT_TYPES, TOPICS
from shared.contracts.base import EventType


def json_schema(et: EventType) -> dict[str, Any]:
    schema = et.model.model_json_schema(mode="serialization", ref_template="#/$defs/{model}")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": et.schema_id, **schema}
    schema["title"] = et.type
    schema["description"] = et.description
    schema["x-ioc-topic"] = et.topic
    schema["x-ioc-key"] = et.key_field
    schema["x-ioc-version"] = et.version
    return schema


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic in sorted(TOPICS.values(), key=lambda t: t.name):
        types = [et for et in EVENT_TYPES.values() if et.topic == topic.name]
        ch_id = topic.name.replace(".", "_")
        channels[ch_id] = {
            "address": topic.name,
            "description": topic.description,
            "messages": {
                et.type.replace(".", "_"): {"$ref": f"#/components/messages/{et.type.replace('.', '_')}"}
                for et in types
            },
            "bindings": {
                "kafka": {
                    "topic": topic.name,
                    "partitions": topic.partitions,
                    "topicConfiguration": {
                        "cleanup.policy": ["compact" if topic.compacted else "delete"],
                        **(
                            {"retention.ms": topic.retention_ms}
                            if topic.retention_ms and not topic.compacted
                            else {}
                        ),
                    },
                    "bindingVersion": "0.5.0",
                }
            },
            "x-ioc-owner": topic.owner,
            "x-ioc-key": topic.key,
        }
        if types:
            operations[f"receive_{ch_id}"] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{ch_id}"},
                "summary": f"Subscribe to {topic.name}",
            }
        for et in types:
            messages[et.type.replace(".", "_")] = {
                "name": et.type,
                "title": et.model.__name__,
                "summary": et.description,
                "contentType": "application/json",
                "payload": {"$ref": f"schemas/{et.type}.json"},
                "bindings": {
                    "kafka": {
                        "key": {"type": "string", "description": f"the {et.key_field}"},
                        "bindingVersion": "0.5.0",
                    }
                },
                "headers": {
                    "type": "object",
                    "required": ["ce_specversion", "ce_id", "ce_source", "ce_type"],
                    "properties": {
                        "ce_specversion": {"const": "1.0"},
                        "ce_id": {"type": "string"},
                        "ce_source": {"type": "string"},
                        "ce_type": {"const": et.type},
                        "ce_time": {"type": "string", "format": "date-time"},
                        "ce_subject": {"type": "string"},
                        "ce_dataschema": {"const": et.schema_id},
                        "content-type": {"const": "application/json"},
                    },
                },
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "IOC events",
            "version": "1.0.0",
            "description": "Events of Hanoi's Intelligent Operations Center. CloudEvents 1.0, Kafka protocol "
            "binding, binary content mode: JSON value, ce_* headers, key = entity id.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render_all() -> dict[str, bytes]:
    """Relative path → file content for every exported artefact."""
    files: dict[str, bytes] = {}
    for et in sorted(EVENT_TYPES.values(), key=lambda e: e.type):
        files[f"schemas/{et.type}.json"] = (
            orjson.dumps(json_schema(et), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
    files["asyncapi.yaml"] = yaml.safe_dump(
        asyncapi(), sort_keys=False, allow_unicode=True, width=120
    ).encode()
    return files


def export(root: Path) -> list[str]:
    """Write the artefacts under ``root``; return the paths that changed."""
    changed = []
    for rel, content in render_all().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
            changed.append(rel)
    return changed
