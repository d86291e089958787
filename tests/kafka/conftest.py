"""The Apache Kafka tier: a real 3-node KRaft cluster (Apache Kafka 4, from Maven Central) for the session.

Every test in ``tests/kafka`` is marked ``apache_kafka`` (select with ``-m apache_kafka``, leave out with
``-m "not apache_kafka"``). Without Java 17+ and Maven the whole tier skips with one line.

Interface other test modules may rely on (keep it stable):

- ``kafka_cluster`` (package ``tests/kafka``: put Apache Kafka tests there): a :class:`shared.embedded.apache_kafka.KafkaCluster` with
  ``bootstrap_servers`` (PLAINTEXT, super user), ``sasl_bootstrap_servers`` (SCRAM-SHA-512),
  ``kafka_settings(**overrides)`` (RF 3, idempotent acks=all), ``sasl_settings(user)``, ``scram_users``
  (user → password, every service principal of deploy/k8s plus ``ioc-outsider``), ``add_scram_user(name,
  password)``, ``admin()`` (a confluent-kafka AdminClient, super user), ``kill(node_id)``,
  ``stop_node(id)``, ``start_node(id)``, ``restart(id)``, ``running_nodes()``, ``leader_of(topic, p)``,
  ``isr_of(topic, p)``, ``wait_until_brokers(n)``; node ids are 1, 2, 3.
- ``apache_kafka_settings`` (package): ``kafka_cluster.kafka_settings()``.
- ``all_brokers_up`` (function): after the test, every killed/stopped node is started again and the cluster
  is back to 3 brokers with a full ISR on the test's topics. Use it in every test that kills brokers.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from shared.embedded.apache_kafka import KafkaCluster, KafkaUnavailable, kafka_classpath, unavailable_reason

HERE = Path(__file__).resolve().parent
_outcomes: dict[str, int] = {}


def strimzi_generator():
    """deploy/k8s/generate_topics.py: the KafkaUsers (principals and ACLs) production runs with."""
    from tests.deploy.conftest import load_script

    return load_script(HERE.parent.parent / "deploy" / "k8s" / "generate_topics.py")


def service_principals() -> list[str]:
    """The KafkaUser names of deploy/k8s (one per service and processor principal)."""
    return [u["metadata"]["name"] for u in strimzi_generator().kafka_users()]


_unavailable: list[str] = []


def pytest_collection_modifyitems(config, items):
    mine = [item for item in items if HERE in Path(str(item.fspath)).parents]
    if not mine:
        return
    reason = unavailable_reason()
    if reason:
        # One line for the whole tier (terminal summary below), not one skip per test.
        _unavailable.append(reason)
        config.hook.pytest_deselected(items=mine)
        ids = {id(item) for item in mine}
        items[:] = [item for item in items if id(item) not in ids]
        return
    for item in mine:
        item.add_marker(pytest.mark.apache_kafka)


def pytest_runtest_logreport(report):
    if HERE in Path(report.fspath).resolve().parents or str(report.nodeid).startswith("tests/kafka/"):
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            _outcomes[report.outcome] = _outcomes.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter):
    if _unavailable:
        terminalreporter.write_line(f"Apache Kafka tier (tests/kafka) SKIPPED: {_unavailable[0]}")
    if _outcomes:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(_outcomes.items()))
        terminalreporter.write_line(
            f"Apache Kafka tier (tests/kafka): {sum(_outcomes.values())} tests: {counts}"
        )


# Package scope: the three JVMs stop when tests/kafka is done, not at the end of the whole suite.
@pytest.fixture(scope="package")
def kafka_cluster(tmp_path_factory):
    try:
        kafka_classpath()
    except KafkaUnavailable as exc:
        pytest.skip(f"Apache Kafka tier skipped: {exc}")
    users = {name: secrets.token_urlsafe(12) for name in [*service_principals(), "ioc-outsider"]}
    cluster = KafkaCluster(tmp_path_factory.mktemp("apache-kafka"), scram_users=users)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="package")
def apache_kafka_settings(kafka_cluster):
    return kafka_cluster.kafka_settings()


@pytest.fixture
def all_brokers_up(kafka_cluster):
    yield kafka_cluster
    for node_id in kafka_cluster.nodes:
        kafka_cluster.start_node(node_id)
    kafka_cluster.wait_until_brokers(len(kafka_cluster.nodes), timeout=90)
    wait_for_full_isr(kafka_cluster)


def wait_for_full_isr(cluster: KafkaCluster, timeout: float = 60.0) -> None:
    """Until every partition of every topic has all its replicas in sync (a later test starts clean)."""
    admin = cluster.admin()
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=10)
        lagging = [
            f"{t}/{p}"
            for t, tm in md.topics.items()
            for p, pm in tm.partitions.items()
            if len(pm.isrs) < len(pm.replicas) or pm.leader < 0
        ]
        if not lagging:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"replicas not back in sync: {lagging[:10]}")
        time.sleep(0.5)
