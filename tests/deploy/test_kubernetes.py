"""The Kubernetes manifests validate offline: core kinds against the Kubernetes OpenAPI schemas
(kubernetes-validate), Strimzi/KEDA/CNPG resources against minimal schemas, kustomize builds every overlay,
and the references between resources (Secrets, ConfigMaps, selectors, probes) hold."""

from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest

from ioc.registry import SERVICES
from tests.deploy.conftest import K8S, base_documents, by_kind, kustomize_build, load_script
from tests.deploy.crd_schemas import SCHEMAS

topics_gen = load_script(K8S / "generate_topics.py")
CORE_KINDS = {
    "Namespace",
    "ConfigMap",
    "Secret",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "NetworkPolicy",
}
OVERLAYS = ["staging", "production"]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return base_documents()


def test_every_manifest_validates_against_its_schema(docs):
    version = kubernetes_validate.latest_version()
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)
        else:
            schema = SCHEMAS.get((doc["apiVersion"], doc["kind"]))
            assert schema is not None, f"no schema for {doc['apiVersion']} {doc['kind']}"
            jsonschema.validate(doc, schema)
    assert {
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "KafkaUser",
        "ScaledObject",
        "Cluster",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Deployment",
        "Service",
    } <= kinds


def test_a_typo_in_a_custom_resource_is_caught(docs):
    topic = dict(next(d for d in docs if d["kind"] == "KafkaTopic"))
    topic["spec"] = {**topic["spec"], "partition": 3}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(topic, SCHEMAS[("kafka.strimzi.io/v1", "KafkaTopic")])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_build_and_stay_valid(overlay):
    built = kustomize_build(K8S / "overlays" / overlay)
    version = kubernetes_validate.latest_version()
    for doc in built:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)
        else:
            jsonschema.validate(doc, SCHEMAS[(doc["apiVersion"], doc["kind"])])
    deployments = by_kind(built, "Deployment")
    assert set(deployments) == {s.name for s in SERVICES} | set(topics_gen.processor_names()) | {
        topics_gen.ARCHIVER
    }
    for dep in deployments.values():
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.startswith("ghcr.io/hanoi-ioc/ioc:") and not image.endswith(":latest")
    namespaces = {d["metadata"].get("namespace") for d in built if d["kind"] != "Namespace"}
    assert len(namespaces) == 1


def test_kafka_cluster_is_kraft_rf3_min_isr2_with_scram_only(docs):
    kafka = by_kind(docs, "Kafka")["ioc-kafka"]
    # Strimzi's v1 API is KRaft with node pools only; its Kafka is the one the Apache Kafka test tier runs.
    assert kafka["apiVersion"] == "kafka.strimzi.io/v1"
    from shared.embedded.apache_kafka import KAFKA_VERSION

    assert kafka["spec"]["kafka"]["version"] == KAFKA_VERSION
    assert kafka["spec"]["kafka"]["metadataVersion"].startswith(
        ".".join(KAFKA_VERSION.split(".")[:2]) + "-IV"
    )
    config = kafka["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == 3 and config["min.insync.replicas"] == 2
    assert config["auto.create.topics.enable"] is False
    listeners = kafka["spec"]["kafka"]["listeners"]
    assert all(lst["tls"] and lst["authentication"]["type"] == "scram-sha-512" for lst in listeners)
    pools = by_kind(docs, "KafkaNodePool")
    assert (
        pools["controllers"]["spec"]["roles"] == ["controller"]
        and pools["controllers"]["spec"]["replicas"] == 3
    )
    assert pools["brokers"]["spec"]["roles"] == ["broker"] and pools["brokers"]["spec"]["replicas"] >= 3


def test_deployments_have_probes_resources_pdbs_and_run_non_root(docs):
    deployments = by_kind(docs, "Deployment")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    services = by_kind(docs, "Service")
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["livenessProbe"] and container["readinessProbe"], name
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"], name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels[k] == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    for entry in SERVICES:
        dep = deployments[entry.name]
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["serve", entry.name, "--host", "0.0.0.0", "--port", str(entry.port)]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["ports"][0]["containerPort"] == entry.port
        assert services[entry.name]["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    for name in topics_gen.processor_names():
        dep = deployments[name]
        assert "replicas" not in dep["spec"], "KEDA owns processor replicas"
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["process", name]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["IOC_METRICS_PORT"] == str(container["ports"][0]["containerPort"])
        assert env["IOC_METRICS_LOCAL"] == "0", "metrics must be reachable from outside the pod"
    # a stream worker's /metrics answers from a thread even when its event loop is stuck: liveness is /livez
    for name in [*topics_gen.processor_names(), topics_gen.ARCHIVER]:
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez", name


def test_every_referenced_secret_and_configmap_is_provided(docs):
    """Secrets come from our KafkaUsers (Strimzi), the Kafka cluster CA (Strimzi), CNPG's app Secret, or the
    base itself; a typo in a name would leave pods stuck in CreateContainerConfigError."""
    provided = {d["metadata"]["name"] for d in docs if d["kind"] in ("KafkaUser", "Secret")}
    provided |= {"ioc-kafka-cluster-ca-cert", "ioc-db-app"}
    # created by the operator from generated values, never committed (docs/archive.md, "Deployment"): the event signing
    # keys and the archive bucket's endpoint, name and credentials
    provided |= {"ioc-event-keys", "ioc-archive-bucket"}
    configmaps = set(by_kind(docs, "ConfigMap"))
    for name, dep in by_kind(docs, "Deployment").items():
        pod = dep["spec"]["template"]["spec"]
        for env in pod["containers"][0]["env"]:
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] in provided, (name, ref)
        for src in pod["containers"][0]["envFrom"]:
            assert src["configMapRef"]["name"] in configmaps
        user = next(e["value"] for e in pod["containers"][0]["env"] if e["name"] == "IOC_KAFKA_SASL_USERNAME")
        assert user == f"ioc-{name}" and user in by_kind(docs, "KafkaUser")
        for vol in pod["volumes"]:
            if "secret" in vol:
                assert vol["secret"]["secretName"] in provided
    for auth in by_kind(docs, "TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] in provided
    for scaled in by_kind(docs, "ScaledObject").values():
        assert scaled["spec"]["triggers"][0]["authenticationRef"]["name"] in by_kind(
            docs, "TriggerAuthentication"
        )
        assert scaled["spec"]["scaleTargetRef"]["name"] in by_kind(docs, "Deployment")


def test_config_points_every_process_at_the_secured_cluster(docs):
    data = by_kind(docs, "ConfigMap")["ioc-config"]["data"]
    assert data["IOC_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert data["IOC_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert data["IOC_KAFKA_IDEMPOTENCE"] == "true" and data["IOC_KAFKA_REPLICATION_FACTOR"] == "3"
    assert data["IOC_CREATE_TOPICS"] == "false", "topics belong to the Strimzi topic operator"
    assert data["IOC_KAFKA_BOOTSTRAP_SERVERS"] == "ioc-kafka-kafka-bootstrap:9093"


def test_network_policies_deny_by_default_and_open_only_what_is_needed(docs):
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["ioc-default-deny"]["spec"]
    assert (
        set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny and "egress" not in deny
    )
    egress_ports = {
        p["port"] for rule in policies["ioc-workloads-egress"]["spec"]["egress"] for p in rule["ports"]
    }
    assert egress_ports == {53, 9093, 5432}
    assert policies["ioc-processors-metrics"]["spec"]["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": "metrics"}
    ]
    # The named ports the policies open exist on the pods they select.
    for dep in by_kind(docs, "Deployment").values():
        port_names = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
        component = dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        assert port_names == ({"http"} if component == "service" else {"metrics"})


def _env(dep: dict) -> list[dict]:
    return dep["spec"]["template"]["spec"]["containers"][0]["env"]


def test_every_workload_holds_exactly_the_event_keys_it_signs_or_verifies_with(docs):
    """Event signing is on in Kubernetes: IOC_EVENT_KEYS of each workload names the owners whose keys it
    needs (its own domain; the domains it consumes; the city every domain) and takes each key from the
    ioc-event-keys Secret; no key is written in a manifest. The archiver verifies nothing and holds none."""
    deployments = by_kind(docs, "Deployment")
    services = {s.name for s in SERVICES}
    domains = {"city", "meter", "traffic", "kiosk", "dossier"} & services
    for name, dep in deployments.items():
        env = {e["name"]: e for e in _env(dep)}
        if name in (topics_gen.ARCHIVER, "archive"):
            assert "IOC_EVENT_KEYS" not in env, name
            continue
        refs = {
            e["valueFrom"]["secretKeyRef"]["key"]: n
            for n, e in env.items()
            if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "ioc-event-keys"
        }
        pairs = dict(p.split("=", 1) for p in env["IOC_EVENT_KEYS"]["value"].split(","))
        assert {o: v for o, v in pairs.items()} == {o: f"$({refs[o]})" for o in refs}, name
        if name == "city":
            expected = domains
        elif name in services:
            expected = {name}
        else:
            info = topics_gen.processor(name)
            expected = ({info.domain} | {t.owner for t in topics_gen.processor_inputs(name)}) & domains
        assert set(pairs) == expected, name
        # Kubernetes composes $(VAR) only from variables defined before it
        order = [e["name"] for e in _env(dep)]
        assert all(order.index(r) < order.index("IOC_EVENT_KEYS") for r in refs.values()), name


def test_the_archiver_runs_once_on_the_bucket_from_its_secret(docs):
    deployments = by_kind(docs, "Deployment")
    archiver = deployments[topics_gen.ARCHIVER]
    assert archiver["spec"]["replicas"] == 1 and archiver["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = archiver["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["archive", "run"]
    users = by_kind(docs, "KafkaUser")
    acls = users[f"ioc-{topics_gen.ARCHIVER}"]["spec"]["authorization"]["acls"]
    writes = {a["resource"]["name"] for a in acls if "Write" in a["operations"]}
    assert writes == {"ioc.internal.archive.epoch"}  # reads the topics, writes only its epoch marker
    reads = {a["resource"]["name"] for a in acls if "Read" in a["operations"]}
    assert {"ioc.meter.readings", "ioc.traffic.events", "ioc.dossier.lifecycle"} <= reads
    assert not any(a["resource"]["type"] == "group" for a in acls)  # assigns partitions, no group
    for name in (topics_gen.ARCHIVER, "archive"):
        env = {e["name"]: e for e in _env(deployments[name])}
        assert env["IOC_ARCHIVE_ROOT"]["value"] == "s3://$(IOC_ARCHIVE_BUCKET_NAME)/events"
        assert (
            env["IOC_ARCHIVE_STORAGE_OPTIONS"]["value"]
            == '{"endpoint_url": "$(IOC_ARCHIVE_BUCKET_ENDPOINT)"}'
        )
        for var, key in (
            ("IOC_ARCHIVE_BUCKET_NAME", "bucket"),
            ("IOC_ARCHIVE_BUCKET_ENDPOINT", "endpoint"),
            ("AWS_ACCESS_KEY_ID", "access_key_id"),
            ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
        ):
            assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "ioc-archive-bucket", "key": key}
    city = {e["name"]: e.get("value") for e in _env(deployments["city"])}
    assert city["IOC_CITY_ARCHIVE_URL"] == "http://archive:8105"
