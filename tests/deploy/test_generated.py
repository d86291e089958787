"""Generated deployment artefacts are fresh, and the Strimzi topics and users agree with IOC's catalogue."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ioc.registry import SERVICES, available, load
from shared.config import KafkaSettings
from shared.contracts import DEAD_LETTER_TOPIC
from tests.catalogue import production_topics
from tests.deploy.conftest import DEPLOY, K8S, by_kind, load_script, yaml_docs

ROOT = Path(__file__).resolve().parents[2]

topics_gen = load_script(K8S / "generate_topics.py")
workloads_gen = load_script(K8S / "generate_workloads.py")
dashboards_gen = load_script(DEPLOY / "grafana" / "generate_dashboards.py")


@pytest.mark.parametrize(
    "generator", [topics_gen, workloads_gen, dashboards_gen], ids=["topics+users", "workloads", "dashboards"]
)
def test_committed_files_equal_generator_output(generator):
    # In a fresh interpreter: test modules may have registered private test topics in this one.
    r = subprocess.run(
        [sys.executable, generator.__file__, "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, f"stale: run python {generator.__file__}\n{r.stdout}{r.stderr}"


TOPICS = production_topics()


def test_every_catalogue_topic_is_a_kafkatopic_with_its_layout():
    committed = {d["spec"]["topicName"]: d for d in yaml_docs(K8S / "base" / "kafka" / "topics.yaml")}
    assert set(TOPICS) <= set(committed), f"missing KafkaTopics: {set(TOPICS) - set(committed)}"
    for name, spec in TOPICS.items():
        kt = committed[name]["spec"]
        assert kt["partitions"] == spec.partitions, name
        assert kt["replicas"] == 3, name
        assert kt["config"]["min.insync.replicas"] == "2", name
        for key, value in spec.config().items():
            assert kt["config"][key] == value, (name, key)
        assert ("cleanup.policy" in kt["config"]) == spec.compacted, name
    # Nothing but the catalogue and the processors' changelogs: no topic the code does not know.
    # (the catalogue as the generator sees it: it imports the archive's epoch topic whatever was imported here)
    extra = set(committed) - {t.name for t in topics_gen.catalogue()}
    assert all(t.startswith("ioc.internal.") and t.endswith(".changelog") for t in extra), extra
    epoch = committed["ioc.internal.archive.epoch"]["spec"]
    assert epoch["partitions"] == 1 and epoch["config"]["retention.ms"] == "-1"  # never expires
    for t in extra:
        config = committed[t]["spec"]["config"]
        assert config["cleanup.policy"] == "compact" and config["min.insync.replicas"] == "2"
        # Compacted: the active segment rolls within an hour so the cleaner can reach it (recovery time bound).
        assert int(config["segment.ms"]) <= 3_600_000 and float(config["min.cleanable.dirty.ratio"]) <= 0.5


def test_kubernetes_names_are_dns_safe_and_unique():
    docs = yaml_docs(K8S / "base" / "kafka" / "topics.yaml")
    names = [d["metadata"]["name"] for d in docs]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", n) and len(n) <= 253 for n in names)


def _acls(user: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        out.setdefault((acl["resource"]["type"], acl["resource"]["name"]), set()).update(acl["operations"])
    return out


def test_each_service_principal_writes_only_what_it_owns():
    users = by_kind(yaml_docs(K8S / "base" / "kafka" / "users.yaml"), "KafkaUser")
    for entry in SERVICES:
        acls = _acls(users[f"ioc-{entry.name}"])
        writable = {name for (kind, name), ops in acls.items() if kind == "topic" and "Write" in ops}
        owned = {t.name for t in TOPICS.values() if t.owner == entry.name}
        assert writable == owned | {"ioc.platform.audit", DEAD_LETTER_TOPIC.name}, entry.name
        assert users[f"ioc-{entry.name}"]["spec"]["authentication"]["type"] == "scram-sha-512"


def test_processor_principals_read_inputs_write_outputs_and_own_their_group():
    users = by_kind(yaml_docs(K8S / "base" / "kafka" / "users.yaml"), "KafkaUser")
    for name in topics_gen.processor_names():
        acls = _acls(users[f"ioc-{name}"])
        domain = topics_gen.processor(name).domain
        assert acls[("group", name)] == {"Describe", "Read"}
        for out in (f"ioc.{domain}.kpis", f"ioc.{domain}.alarms"):
            if out in TOPICS:
                assert "Write" in acls[("topic", out)], (name, out)
        assert {"Read", "Write"} <= acls[("topic", f"ioc.internal.{name}.changelog")]
        # Never writes another domain's topics.
        for (kind, topic), ops in acls.items():
            if kind == "topic" and "Write" in ops and topic != DEAD_LETTER_TOPIC.name:
                assert topic.startswith((f"ioc.{domain}.", f"ioc.internal.{name}.")), (name, topic)


def _real_processors() -> list:
    found = []
    for entry in SERVICES:
        if not available(entry.processors):
            continue
        try:
            settings = load(entry.settings)()
            found += [factory(settings) for factory in load(entry.processors)]
        except Exception as exc:  # another engineer's module mid-work: not this test's failure
            pytest.skip(f"{entry.processors} not importable yet: {type(exc).__name__}: {exc}")
    return found


def test_real_processors_are_covered_by_their_acls_and_changelog_partitions():
    """Where a service's processors exist, their real input topics must be readable by the principal their
    Deployment runs as, and their changelog must have one partition per source partition."""
    from shared.stream.runtime import source_partitions

    processors = _real_processors()
    if not processors:
        pytest.skip("no service processors written yet")
    users = by_kind(yaml_docs(K8S / "base" / "kafka" / "users.yaml"), "KafkaUser")
    changelogs = {
        d["spec"]["topicName"]: d["spec"]["partitions"]
        for d in yaml_docs(K8S / "base" / "kafka" / "topics.yaml")
    }
    for proc in processors:
        assert proc.name in topics_gen.processor_names(), f"{proc.name}: no Deployment runs it"
        acls = _acls(users[f"ioc-{proc.name}"])
        for topic in proc.topics:
            if topic not in TOPICS:
                continue  # a private test domain registered by another test module in this process
            assert "Read" in acls.get(("topic", topic), set()), f"{proc.name} cannot read {topic}"
        # The runtime sizes the changelog it creates the same way (shared.stream.runtime).
        expected = source_partitions(proc, KafkaSettings())
        assert changelogs[f"ioc.internal.{proc.name}.changelog"] == expected, proc.name


def test_keda_never_scales_a_processor_beyond_its_partitions():
    scaled = by_kind(yaml_docs(K8S / "base" / "workloads" / "processors.yaml"), "ScaledObject")
    assert set(scaled) == set(topics_gen.processor_names())
    for name, obj in scaled.items():
        inputs = topics_gen.processor_inputs(name)
        assert inputs or name == "city-kpi", f"{name} reads no catalogue topic"
        cap = max((t.partitions for t in inputs), default=1)
        assert 1 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"] == cap, name
        trigger = obj["spec"]["triggers"][0]
        assert trigger["type"] == "kafka" and trigger["metadata"]["consumerGroup"] == name
