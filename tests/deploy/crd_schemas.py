"""JSON schemas of the custom resources IOC uses.

Strimzi (Kafka, KafkaNodePool, KafkaTopic, KafkaUser, API ``kafka.strimzi.io/v1``): the operator's real CRD
schemas (tests/deploy/data/strimzi, from Strimzi 1.2.0), made strict as the API server's strict field validation
is (an unknown field is an error unless the CRD preserves unknown fields). KEDA and CloudNativePG: minimal
hand-written schemas of the fields we set, their types, and no unknown fields where a typo would silently be
ignored by the operator."""

from __future__ import annotations

import copy
import json
from pathlib import Path

STRIMZI_DATA = Path(__file__).resolve().parent / "data" / "strimzi"
STRIMZI_API = "kafka.strimzi.io/v1"

STR = {"type": "string"}
INT = {"type": "integer"}
STRS = {"type": "array", "items": STR}
META = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": STR, "labels": {"type": "object"}, "annotations": {"type": "object"}},
}
RESOURCES = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"requests": {"type": "object"}, "limits": {"type": "object"}},
}


def resource(api: str, kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": META, "spec": spec},
    }


def obj(required: list[str], props: dict, strict: bool = True) -> dict:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": not strict}


SCHEMAS: dict[tuple[str, str], dict] = {
    ("keda.sh/v1alpha1", "ScaledObject"): resource(
        "keda.sh/v1alpha1",
        "ScaledObject",
        obj(
            ["scaleTargetRef", "triggers"],
            {
                "scaleTargetRef": obj(["name"], {"name": STR}),
                "minReplicaCount": INT,
                "maxReplicaCount": INT,
                "pollingInterval": INT,
                "cooldownPeriod": INT,
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": obj(
                        ["type", "metadata"],
                        {
                            "type": {"const": "kafka"},
                            "metadata": obj(
                                ["bootstrapServers", "consumerGroup", "lagThreshold"],
                                {
                                    "bootstrapServers": STR,
                                    "consumerGroup": STR,
                                    "lagThreshold": STR,
                                    "offsetResetPolicy": STR,
                                    "allowIdleConsumers": STR,
                                    "sasl": STR,
                                    "tls": STR,
                                    "topic": STR,
                                },
                            ),
                            "authenticationRef": obj(["name"], {"name": STR}),
                        },
                    ),
                },
            },
        ),
    ),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): resource(
        "keda.sh/v1alpha1",
        "TriggerAuthentication",
        obj(
            ["secretTargetRef"],
            {
                "secretTargetRef": {
                    "type": "array",
                    "items": obj(["parameter", "name", "key"], {"parameter": STR, "name": STR, "key": STR}),
                }
            },
        ),
    ),
    ("postgresql.cnpg.io/v1", "Cluster"): resource(
        "postgresql.cnpg.io/v1",
        "Cluster",
        obj(
            ["instances", "storage", "bootstrap"],
            {
                "instances": {"type": "integer", "minimum": 1},
                "imageName": STR,
                "primaryUpdateStrategy": STR,
                "bootstrap": obj(
                    ["initdb"], {"initdb": obj(["database", "owner"], {"database": STR, "owner": STR})}
                ),
                "postgresql": obj([], {"parameters": {"type": "object", "additionalProperties": STR}}),
                "storage": obj(["size"], {"size": STR}),
                "walStorage": obj(["size"], {"size": STR}),
                "affinity": obj([], {"enablePodAntiAffinity": {"type": "boolean"}, "topologyKey": STR}),
                "resources": RESOURCES,
            },
        ),
    ),
}


def strict(schema: dict) -> dict:
    """A CRD's structural schema with unknown fields refused wherever the CRD does not preserve them."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def strimzi_schema(kind: str) -> dict:
    crd = strict(json.loads((STRIMZI_DATA / f"{kind}.v1.json").read_text()))
    crd["properties"]["apiVersion"] = {"const": STRIMZI_API}
    crd["properties"]["kind"] = {"const": kind}
    crd["properties"]["metadata"] = META
    crd["required"] = sorted({*crd.get("required", []), "apiVersion", "kind", "metadata", "spec"})
    return crd


for _kind in ("Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"):
    SCHEMAS[(STRIMZI_API, _kind)] = strimzi_schema(_kind)
