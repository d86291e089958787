"""The Kafka Streams peer is built against the Kafka the Apache Kafka rows run (one version everywhere)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from bench.peers import KSTREAMS_DIR
from shared.embedded.apache_kafka import KAFKA_VERSION


def test_the_kstreams_peer_uses_the_launchers_kafka_version_and_keeps_its_build_out_of_git():
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ET.parse(KSTREAMS_DIR / "pom.xml").getroot()
    assert pom.find("m:properties/m:kafka.version", ns).text == KAFKA_VERSION
    artifacts = {d.find("m:artifactId", ns).text for d in pom.iterfind("m:dependencies/m:dependency", ns)}
    assert "kafka-streams" in artifacts
    assert "target/" in (KSTREAMS_DIR / ".gitignore").read_text().split()
