"""Minimal JSON schemas of the custom resources IOC uses (Strimzi, KEDA, CloudNativePG): the fields we set,
their types, and no unknown fields where a typo would silently be ignored by the operator."""

from __future__ import annotations

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


ACL = obj(
    ["resource", "operations"],
    {
        "resource": obj(
            ["type", "name", "patternType"],
            {
                "type": {"enum": ["topic", "group", "cluster", "transactionalId"]},
                "name": STR,
                "patternType": {"enum": ["literal", "prefix"]},
            },
        ),
        "operations": {
            "type": "array",
            "minItems": 1,
            "items": {
                "enum": [
                    "Read",
                    "Write",
                    "Create",
                    "Delete",
                    "Alter",
                    "Describe",
                    "ClusterAction",
                    "AlterConfigs",
                    "DescribeConfigs",
                    "IdempotentWrite",
                    "All",
                ]
            },
        },
        "host": STR,
    },
)

VOLUME = obj(
    ["id", "type", "size"],
    {
        "id": INT,
        "type": {"enum": ["persistent-claim", "ephemeral"]},
        "size": STR,
        "deleteClaim": {"type": "boolean"},
        "kraftMetadata": {"enum": ["shared"]},
    },
)

SCHEMAS: dict[tuple[str, str], dict] = {
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): resource(
        "kafka.strimzi.io/v1beta2",
        "KafkaTopic",
        obj(
            ["topicName", "partitions", "replicas"],
            {
                "topicName": STR,
                "partitions": {"type": "integer", "minimum": 1},
                "replicas": {"type": "integer", "minimum": 1},
                "config": {"type": "object", "additionalProperties": STR},
            },
        ),
    ),
    ("kafka.strimzi.io/v1beta2", "KafkaUser"): resource(
        "kafka.strimzi.io/v1beta2",
        "KafkaUser",
        obj(
            ["authentication", "authorization"],
            {
                "authentication": obj(["type"], {"type": {"enum": ["scram-sha-512", "tls"]}}),
                "authorization": obj(
                    ["type", "acls"], {"type": {"const": "simple"}, "acls": {"type": "array", "items": ACL}}
                ),
            },
        ),
    ),
    ("kafka.strimzi.io/v1beta2", "Kafka"): resource(
        "kafka.strimzi.io/v1beta2",
        "Kafka",
        obj(
            ["kafka", "entityOperator"],
            {
                "kafka": obj(
                    ["listeners"],
                    {
                        "version": STR,
                        "metadataVersion": STR,
                        "listeners": {
                            "type": "array",
                            "minItems": 1,
                            "items": obj(
                                ["name", "port", "type", "tls"],
                                {
                                    "name": STR,
                                    "port": INT,
                                    "type": {
                                        "enum": [
                                            "internal",
                                            "route",
                                            "loadbalancer",
                                            "nodeport",
                                            "ingress",
                                            "cluster-ip",
                                        ]
                                    },
                                    "tls": {"type": "boolean"},
                                    "authentication": obj(["type"], {"type": STR}),
                                    "networkPolicyPeers": {"type": "array"},
                                },
                            ),
                        },
                        "authorization": obj(["type"], {"type": {"const": "simple"}}),
                        "config": {"type": "object"},
                        "rack": obj(["topologyKey"], {"topologyKey": STR}),
                    },
                ),
                "entityOperator": obj(
                    [], {"topicOperator": {"type": "object"}, "userOperator": {"type": "object"}}
                ),
            },
        ),
    ),
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"): resource(
        "kafka.strimzi.io/v1beta2",
        "KafkaNodePool",
        obj(
            ["replicas", "roles", "storage"],
            {
                "replicas": INT,
                "roles": {"type": "array", "items": {"enum": ["broker", "controller"]}},
                "storage": obj(
                    ["type", "volumes"],
                    {"type": {"const": "jbod"}, "volumes": {"type": "array", "items": VOLUME}},
                ),
                "resources": RESOURCES,
            },
        ),
    ),
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
