"""The production-like compose stack runs Kafka with SASL SCRAM-SHA-512 and ACLs (finding 1 of issue #40).

It ran Kafka without authentication or ACLs, so anyone on its network could produce. Now every listener a
client reaches needs SCRAM, the authorizer denies what no ACL allows, and each IOC process logs in as its own
user with the Kubernetes KafkaUser's ACLs (``deploy/compose/kafka-security.sh``, generated) and holds the event
signing keys of the owners it produces for and consumes from. (No Docker engine here: the file is checked
structurally and by ``docker-compose config`` in ``tests/deploy/test_compose.py``.)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ioc.registry import SERVICES
from tests.deploy.conftest import load_script

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose"
security = load_script(COMPOSE / "generate_kafka_security.py")
topics_gen = load_script(COMPOSE.parent / "k8s" / "generate_topics.py")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE / "compose.yaml").read_text())


def test_brokers_authenticate_every_client_and_authorize_by_acl(compose):
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        env = compose["services"][name]["environment"]
        listeners = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert listeners["INTERNAL"] == "SASL_PLAINTEXT"
        assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == "SCRAM-SHA-512"
        assert env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
        assert env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
        assert compose["services"][name]["command"] == ["/bin/bash", "/ioc/kafka-start.sh"]
    start = (COMPOSE / "kafka-start.sh").read_text()
    assert "--add-scram" in start and "SCRAM-SHA-512=[name=ioc-admin" in start


def test_every_ioc_process_logs_in_as_its_own_user_and_holds_only_the_keys_it_needs(compose):
    processors = topics_gen.processor_names()
    ioc = {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("${IOC_IMAGE")}
    assert set(ioc) == {s.name for s in SERVICES} | set(processors) | {topics_gen.ARCHIVER}
    for name, svc in ioc.items():
        env = svc["environment"]
        assert env["IOC_KAFKA_SECURITY_PROTOCOL"] in ("SASL_PLAINTEXT", "SASL_SSL")
        assert env["IOC_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
        assert env["IOC_KAFKA_SASL_USERNAME"] == f"ioc-{name}"
        assert env["IOC_KAFKA_SASL_PASSWORD"].startswith("${" + security.password_variable(name) + ":?")
        if name in ("archive", topics_gen.ARCHIVER):  # sign and verify no event: no key (docs/archive.md)
            assert "IOC_EVENT_KEYS" not in env, name
            assert svc["depends_on"]["kafka-setup"]["condition"] == "service_completed_successfully"
            continue
        owners = {k.split("=")[0] for k in env["IOC_EVENT_KEYS"].split(",")}
        domain = name if name in {s.name for s in SERVICES} else topics_gen.processor(name).domain
        services = {s.name for s in SERVICES}  # (test modules may register domains of their own)
        inputs = topics_gen.processor_inputs(name) if name in processors else []
        sources = {t.owner for t in inputs if t.owner in services}
        if name == "city":
            sources = set(topics_gen.signing_owners())  # the city store reads every domain's alarms
        assert owners == {domain} | sources, name
        assert svc["depends_on"]["kafka-setup"]["condition"] == "service_completed_successfully"


def test_the_acl_script_is_generated_from_the_catalogue_and_matches_the_kubernetes_users():
    # In a fresh interpreter: test modules may have registered domains of their own in this one's catalogue.
    fresh = subprocess.run(
        [sys.executable, str(COMPOSE / "generate_kafka_security.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    script = (COMPOSE / "kafka-security.sh").read_text()
    known_owners = {s.name for s in SERVICES} | {"platform", "deadletter", "internal"}
    for principal, acls in security.principals():
        user = topics_gen.user_name(principal)
        assert f"--entity-name {user} --add-config" in script
        for acl in acls:
            res = acl["resource"]
            if res["name"].split(".")[1:2] and res["name"].split(".")[1] not in known_owners:
                continue  # a test module's own domain
            pattern = rf"User:{re.escape(user)} (--operation \w+ )+--(topic|group|transactional-id) {re.escape(res['name'])} "
            ops = {
                m
                for line in script.splitlines()
                if re.search(pattern, line)
                for m in re.findall(r"--operation (\w+)", line)
            }
            assert set(acl["operations"]) <= ops, (user, res)
            # Never more than the owner needs: Create only where the user may already write.
            assert ops - set(acl["operations"]) <= ({"Create"} if "Write" in acl["operations"] else set())
