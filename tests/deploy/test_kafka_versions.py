"""One Apache Kafka version everywhere: the test tier's broker (deploy/kafka/pom.xml, the launcher) and the
Strimzi Kafka resource production runs."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from shared.embedded.apache_kafka import KAFKA_VERSION, POM

ROOT = Path(__file__).resolve().parents[2]


def test_the_test_tier_and_production_run_the_same_kafka():
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom_version = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns).text
    kafka = next(
        d
        for d in yaml.safe_load_all((ROOT / "deploy/k8s/base/kafka/kafka.yaml").read_text())
        if d["kind"] == "Kafka"
    )
    assert pom_version == KAFKA_VERSION == kafka["spec"]["kafka"]["version"]
    assert KAFKA_VERSION.startswith("4.")
