"""The single-host compose deployment: valid for docker-compose, and structurally what the issue asks."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from ioc.registry import SERVICES
from tests.deploy.conftest import DEPLOY, load_script

COMPOSE = DEPLOY / "compose" / "compose.yaml"
topics_gen = load_script(DEPLOY / "k8s" / "generate_topics.py")
ENV = {
    "IOC_POSTGRES_PASSWORD": "test-password",
    "GRAFANA_ADMIN_PASSWORD": "test-password",
    "IOC_MINIO_ROOT_USER": "ioc-archive",
    "IOC_MINIO_ROOT_PASSWORD": "test-password",
    # Kafka SCRAM users and event signing keys (tests/security/test_compose_kafka_security.py)
    **{
        line.split("=", 1)[0]: "test-secret"
        for line in (COMPOSE.parent / ".env.example").read_text().splitlines()
        if line.startswith(("IOC_KAFKA_", "IOC_EVENT_KEY_"))
    },
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_docker_compose_accepts_the_file():
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip(
            "docker-compose not installed (apt-get install -y docker-compose): file not validated by it"
        )
    ok = subprocess.run(
        [exe, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ENV},
        cwd=COMPOSE.parent,
    )
    assert ok.returncode == 0, ok.stderr
    # The secrets are required, not defaulted: without them the file is refused.
    env = {k: v for k, v in {**os.environ, **ENV}.items() if k != "IOC_POSTGRES_PASSWORD"}
    refused = subprocess.run(
        [exe, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=COMPOSE.parent,
    )
    assert refused.returncode != 0 and "IOC_POSTGRES_PASSWORD" in refused.stderr


def test_kafka_is_three_kraft_brokers_with_rf3_and_min_isr2(compose):
    brokers = {
        n: s
        for n, s in compose["services"].items()
        if s.get("image", "").startswith("apache/kafka") and n != "kafka-setup"  # the one-shot ACL set-up
    }
    assert sorted(brokers) == ["kafka-1", "kafka-2", "kafka-3"]
    ids = set()
    for name, svc in brokers.items():
        env = svc["environment"]
        ids.add(env["KAFKA_NODE_ID"])
        assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"INTERNAL://{name}:9092"
        assert svc["volumes"][0].endswith(":/var/lib/kafka/data") and "healthcheck" in svc
    assert ids == {"1", "2", "3"}


def _ioc_services(compose) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("${IOC_IMAGE")}


def test_every_ioc_service_and_processor_runs_from_the_one_image(compose):
    ioc = _ioc_services(compose)
    expected = {s.name: ["serve", s.name, "--host", "0.0.0.0", "--port", str(s.port)] for s in SERVICES}
    expected |= {p: ["process", p] for p in topics_gen.processor_names()}
    expected[topics_gen.ARCHIVER] = ["archive", "run"]
    assert {n: s["command"] for n, s in ioc.items()} == expected
    images = {s["image"] for s in ioc.values()}
    assert len(images) == 1
    for name, svc in ioc.items():
        env = svc["environment"]
        assert env["IOC_KAFKA_BOOTSTRAP_SERVERS"] == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
        assert env["IOC_KAFKA_IDEMPOTENCE"] == "true" and env["IOC_KAFKA_REPLICATION_FACTOR"] == "3"
        assert env["IOC_DATABASE_URL"].startswith("postgresql://ioc:${IOC_POSTGRES_PASSWORD:?")
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        if name == topics_gen.ARCHIVER:  # one writer per archiver name (docs/archive.md)
            assert svc["deploy"]["replicas"] == 1
        else:
            assert svc["deploy"]["replicas"] >= 2, f"{name}: several replicas"
        assert "ports" not in svc, f"{name}: reachable only through the gateway"
        for dep in ("kafka-1", "kafka-2", "kafka-3", "postgres"):
            assert svc["depends_on"][dep]["condition"] == "service_healthy"


def test_http_services_listen_on_their_registry_port_and_are_health_checked(compose):
    ioc = _ioc_services(compose)
    for entry in SERVICES:
        env = ioc[entry.name]["environment"]
        assert env["IOC_HEALTHCHECK_URL"] == f"http://127.0.0.1:{entry.port}/healthz"
    for name in topics_gen.processor_names():
        env = ioc[name]["environment"]
        assert env["IOC_HEALTHCHECK_URL"] == "http://127.0.0.1:9100/livez"
        assert env["IOC_METRICS_PORT"] == "9100" and env["IOC_METRICS_LOCAL"] == "0"
    nginx = (DEPLOY / "compose" / "nginx.conf").read_text()
    for entry in SERVICES:
        assert f"listen {entry.port};" in nginx and f"http://{entry.name}:{entry.port}" in nginx


def test_observability_and_networks(compose):
    svcs = compose["services"]
    prom = svcs["prometheus"]
    assert "../prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    graf = svcs["grafana"]
    assert "../grafana/provisioning:/etc/grafana/provisioning:ro" in graf["volumes"]
    assert "../grafana/dashboards:/var/lib/grafana/dashboards:ro" in graf["volumes"]
    assert compose["networks"]["backend"]["internal"] is True
    for name in ("kafka-1", "postgres"):
        assert svcs[name]["networks"] == ["backend"] and "ports" not in svcs[name]
    # Prometheus scrapes every service and processor the compose file runs.
    prom_cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    scraped = {
        n for job in prom_cfg["scrape_configs"] for sd in job.get("dns_sd_configs", ()) for n in sd["names"]
    }
    assert scraped == set(_ioc_services(compose))


def test_dockerfile_is_multistage_non_root_with_healthcheck():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2 and "AS build" in stages[0] and "AS runtime" in stages[-1]
    runtime = text.split("AS runtime", 1)[1]
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert "USER 10001:10001" in runtime and "useradd" in runtime
    assert "HEALTHCHECK" in runtime and "ioc-healthcheck" in runtime
    assert 'ENTRYPOINT ["ioc"]' in runtime
    assert "build-essential" not in runtime, "no compilers in the runtime image"
