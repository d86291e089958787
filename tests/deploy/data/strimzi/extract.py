"""Extract the ``v1`` OpenAPI schemas of the Strimzi CRDs IOC uses from a Strimzi release's install files.

    python tests/deploy/data/strimzi/extract.py <strimzi-kafka-operator checkout> <git tag>

Writes ``<Kind>.v1.json`` next to this file (compact JSON of ``spec.versions[name=v1].schema.openAPIV3Schema``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
FILES = {
    "Kafka": "040-Crd-kafka.yaml",
    "KafkaTopic": "043-Crd-kafkatopic.yaml",
    "KafkaUser": "044-Crd-kafkauser.yaml",
    "KafkaNodePool": "045-Crd-kafkanodepool.yaml",
}


def main(repo: str, tag: str) -> None:
    for kind, name in FILES.items():
        text = subprocess.run(
            ["git", "--git-dir", repo, "show", f"{tag}:packaging/install/cluster-operator/{name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        crd = yaml.safe_load(text)
        assert crd["spec"]["names"]["kind"] == kind
        [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = version["schema"]["openAPIV3Schema"]
        (HERE / f"{kind}.v1.json").write_text(
            json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n"
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])
