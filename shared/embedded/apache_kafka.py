"""A real Apache Kafka 4.x cluster on loopback for the test tier: 3 KRaft nodes (broker + controller each).

The broker's jars come from Maven Central through ``deploy/kafka/pom.xml`` into the local Maven cache (never into
the repository); :func:`kafka_classpath` finds them (``IOC_KAFKA_CLASSPATH``, the file ``make kafka-classpath``
writes, or one ``mvn dependency:build-classpath`` run). Each node has its own data directory, a PLAINTEXT
listener (super user ANONYMOUS: the inter-broker and controller listeners are PLAINTEXT, and the tests' own
set-up uses it), a SASL_PLAINTEXT listener with SCRAM-SHA-512 only, and the ACL authorizer (StandardAuthorizer,
deny when no ACL matches). SCRAM users are written into the metadata log at format time.

Combined nodes keep the JVM count at three on a 2-core machine; the price is that killing two nodes also loses
the controller quorum, which is what "two of three brokers down" means in a small cluster anyway.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import KafkaSettings
from shared.embedded.tansu import ChildServer, _wait_port, free_port

KAFKA_VERSION = "4.3.1"  # keep equal to deploy/kafka/pom.xml and the Strimzi Kafka resource
ROOT = Path(__file__).resolve().parents[2]
POM = ROOT / "deploy" / "kafka" / "pom.xml"
CLASSPATH_FILE = ROOT / "var" / "apache-kafka.classpath"
SUPER_USER = "ioc-admin"
SCRAM_MECHANISM = "SCRAM-SHA-512"


class KafkaUnavailable(RuntimeError):
    """No Java 17+ or no Maven (or the download failed): the Apache Kafka tier cannot run here."""


def java_binary() -> str | None:
    explicit = os.environ.get("IOC_KAFKA_JAVA")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def unavailable_reason() -> str | None:
    """Why the Apache Kafka tier cannot run here (no java, or neither a fetched classpath nor mvn); None if it can.
    Cheap: runs nothing."""
    if not java_binary():
        return "no java on PATH (Apache Kafka 4 needs Java 17+)"
    if os.environ.get("IOC_KAFKA_CLASSPATH") or CLASSPATH_FILE.is_file() or shutil.which("mvn"):
        return None
    return "no mvn on PATH to fetch Apache Kafka from Maven Central"


def kafka_classpath(*, fetch: bool = True) -> str:
    """The broker's classpath (jars in the local Maven cache); runs Maven once when it is not known yet."""
    if not java_binary():
        raise KafkaUnavailable("no java on PATH (Apache Kafka 4 needs Java 17+)")
    explicit = os.environ.get("IOC_KAFKA_CLASSPATH")
    if explicit:
        return explicit
    if CLASSPATH_FILE.is_file() and CLASSPATH_FILE.stat().st_mtime >= POM.stat().st_mtime:
        cp = CLASSPATH_FILE.read_text().strip()
        if cp and all(Path(p).is_file() for p in cp.split(os.pathsep)):
            return cp
    mvn = shutil.which("mvn")
    if not mvn or not fetch:
        raise KafkaUnavailable("no mvn on PATH to fetch Apache Kafka from Maven Central")
    CLASSPATH_FILE.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:build-classpath",
            f"-Dmdep.outputFile={CLASSPATH_FILE}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0 or not CLASSPATH_FILE.is_file():
        raise KafkaUnavailable(f"mvn could not fetch Apache Kafka: {(done.stdout + done.stderr)[-500:]}")
    return CLASSPATH_FILE.read_text().strip()


LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
"""


@dataclass
class KafkaNode(ChildServer):
    """One KRaft node (broker + controller) of the cluster, run as a child JVM."""

    node_id: int
    directory: Path
    plaintext_port: int
    sasl_port: int
    controller_port: int
    heap_mb: int = 320
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def properties_file(self) -> Path:
        return self.directory / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.directory / "kafka.log"

    def write_config(self, voters: str, extra: dict[str, str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        host = "127.0.0.1"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": (
                f"PLAINTEXT://{host}:{self.plaintext_port},SASL_PLAINTEXT://{host}:{self.sasl_port},"
                f"CONTROLLER://{host}:{self.controller_port}"
            ),
            "advertised.listeners": (
                f"PLAINTEXT://{host}:{self.plaintext_port},SASL_PLAINTEXT://{host}:{self.sasl_port}"
            ),
            "listener.security.protocol.map": (
                "PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT"
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "sasl.enabled.mechanisms": SCRAM_MECHANISM,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            # ANONYMOUS is what the PLAINTEXT inter-broker and controller listeners authenticate as.
            "super.users": f"User:ANONYMOUS;User:{SUPER_USER}",
            "log.dirs": str(self.data_dir),
            "metadata.log.dir": str(self.data_dir),
            # Production-like durability: RF 3, min ISR 2, no unclean election.
            "default.replication.factor": "3",
            "min.insync.replicas": "2",
            "unclean.leader.election.enable": "false",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "3",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2",
            "transaction.state.log.num.partitions": "6",
            "group.initial.rebalance.delay.ms": "0",
            # Small machine: few threads; a killed node is noticed in seconds, not the default 9 s.
            "num.network.threads": "2",
            "num.io.threads": "2",
            "num.recovery.threads.per.data.dir": "1",
            "background.threads": "2",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
            "log.cleaner.backoff.ms": "1000",
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "3000",
            "replica.lag.time.max.ms": "5000",
            "controlled.shutdown.enable": "true",
            **extra,
        }
        self.properties_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.directory / "log4j2.properties").write_text(
            LOG4J2.format(log=self.log_file, level=os.environ.get("IOC_KAFKA_LOG_LEVEL", "WARN"))
        )

    def _java(self, main: str, *args: str, classpath: str) -> list[str]:
        java = java_binary()
        if not java:
            raise KafkaUnavailable("no java on PATH")
        return [
            java,
            f"-Xms{self.heap_mb}m",
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # C1 only: a test cluster lives minutes; C2 compiles cost CPU on 2 cores
            "-XX:ActiveProcessorCount=2",
            "-Xss512k",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.directory}",
            "-cp",
            classpath,
            main,
            *args,
        ]

    def format(self, cluster_id: str, scram_users: dict[str, str], classpath: str) -> None:
        args = ["format", "-t", cluster_id, "-c", str(self.properties_file), "--ignore-formatted"]
        for name, password in scram_users.items():
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        done = subprocess.run(
            self._java("kafka.tools.StorageTool", *args, classpath=classpath),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed: {(done.stdout + done.stderr)[-1500:]}")

    def start(self, classpath: str, timeout: float = 90.0, *, wait: bool = True) -> KafkaNode:
        """Start the JVM; with ``wait``, return once its PLAINTEXT listener accepts connections."""
        out = open(self.directory / "stdout.log", "ab")
        self._proc = subprocess.Popen(
            self._java("kafka.Kafka", str(self.properties_file), classpath=classpath),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()
        if wait:
            _wait_port("127.0.0.1", self.plaintext_port, timeout, self._proc)
        return self


class KafkaCluster:
    """Three KRaft nodes on loopback; ``kill``/``stop``/``start`` single nodes by id (1, 2, 3)."""

    def __init__(
        self,
        directory: Path,
        *,
        nodes: int = 3,
        scram_users: dict[str, str] | None = None,
        heap_mb: int | None = None,
        broker_config: dict[str, str] | None = None,
    ):
        self.directory = Path(directory)
        self.cluster_id = _cluster_id()
        self.super_password = "admin-" + uuid.uuid4().hex
        # Every SCRAM user (the super user included) is known before start: format writes them.
        self.scram_users = {SUPER_USER: self.super_password, **(scram_users or {})}
        heap = heap_mb or int(os.environ.get("IOC_KAFKA_HEAP_MB", "320"))
        self.nodes: dict[int, KafkaNode] = {
            i: KafkaNode(
                node_id=i,
                directory=self.directory / f"node-{i}",
                plaintext_port=free_port(),
                sasl_port=free_port(),
                controller_port=free_port(),
                heap_mb=heap,
            )
            for i in range(1, nodes + 1)
        }
        self.broker_config = broker_config or {}
        self._classpath: str | None = None

    # Addresses and client settings ------------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.plaintext_port}" for n in self.nodes.values())

    @property
    def sasl_bootstrap_servers(self) -> str:
        return ",".join(f"127.0.0.1:{n.sasl_port}" for n in self.nodes.values())

    def kafka_settings(self, **overrides) -> KafkaSettings:
        """PLAINTEXT (super user) settings: RF 3, idempotent acks=all producer."""
        kw = {
            "bootstrap_servers": self.bootstrap_servers,
            "replication_factor": 3,
            "enable_idempotence": True,
        }
        return KafkaSettings(**{**kw, **overrides})

    def sasl_settings(self, username: str, password: str | None = None, **overrides) -> KafkaSettings:
        """SASL_PLAINTEXT + SCRAM-SHA-512 settings for ``username`` (its password from format time)."""
        kw = {
            "bootstrap_servers": self.sasl_bootstrap_servers,
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": SCRAM_MECHANISM,
            "sasl_username": username,
            "sasl_password": password if password is not None else self.scram_users[username],
            "replication_factor": 3,
            "enable_idempotence": True,
        }
        return KafkaSettings(**{**kw, **overrides})

    # Life cycle -------------------------------------------------------------------------------------------------
    @property
    def classpath(self) -> str:
        if self._classpath is None:
            self._classpath = kafka_classpath()
        return self._classpath

    def start(self, timeout: float = 120.0) -> KafkaCluster:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes.values())
        for node in self.nodes.values():
            node.write_config(voters, self.broker_config)
        for node in self.nodes.values():
            node.format(self.cluster_id, self.scram_users, self.classpath)
        try:
            for node in self.nodes.values():  # all at once: each waits for the quorum of the others
                node.start(self.classpath, wait=False)
            deadline = time.monotonic() + timeout
            for node in self.nodes.values():
                assert node._proc is not None  # every node was started just above
                _wait_port("127.0.0.1", node.plaintext_port, deadline - time.monotonic(), node._proc)
            self.wait_until_brokers(len(self.nodes), timeout=max(5.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Graceful stop of the last nodes can wait on a lost quorum; kill -9 is what a test tear-down needs.
        for node in self.nodes.values():
            node.kill()

    def kill(self, node_id: int) -> None:
        """Kill -9 one node, as a crash would."""
        self.nodes[node_id].kill()

    def stop_node(self, node_id: int, timeout: float = 30.0) -> None:
        """Stop one node gracefully (controlled shutdown moves its leaders first)."""
        self.nodes[node_id].stop(timeout)

    def start_node(self, node_id: int, timeout: float = 90.0) -> None:
        node = self.nodes[node_id]
        if not node.running:
            node.start(self.classpath, timeout)

    def restart(self, node_id: int) -> None:
        self.stop_node(node_id)
        self.start_node(node_id)

    def running_nodes(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n.running]

    # Inspection (sync, via confluent-kafka's admin client: usable from sync fixtures and async tests alike) ----
    def admin(self):
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap_servers, "socket.timeout.ms": 5000})

    def wait_until_brokers(self, count: int, timeout: float = 60.0) -> None:
        """Until ``count`` brokers are registered (alive) in the cluster's metadata."""
        admin = self.admin()
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                md = admin.list_topics(timeout=5)
                if len(md.brokers) >= count:
                    return
            except Exception as exc:  # not ready yet
                last = exc
            time.sleep(0.3)
        raise TimeoutError(f"the cluster did not show {count} brokers within {timeout}s ({last})")

    def add_scram_user(self, name: str, password: str) -> None:
        """Create (or change) a SCRAM-SHA-512 user after start, as ``kafka-configs --add-config`` does."""
        from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

        admin = self.admin()
        upsert = UserScramCredentialUpsertion(
            name, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), password.encode()
        )
        for future in admin.alter_user_scram_credentials([upsert]).values():
            future.result(timeout=30)
        self.scram_users[name] = password

    def leader_of(self, topic: str, partition: int = 0) -> int:
        md = self.admin().list_topics(topic, timeout=10)
        return md.topics[topic].partitions[partition].leader

    def isr_of(self, topic: str, partition: int = 0) -> list[int]:
        md = self.admin().list_topics(topic, timeout=10)
        return list(md.topics[topic].partitions[partition].isrs)


def _cluster_id() -> str:
    # Kafka's cluster ids are 16 random bytes, URL-safe base64 without padding (Uuid.randomUuid().toString()).
    # Like Kafka's Uuid.randomUuid, never one starting with "-": kafka-storage would read it as an option
    # ("argument --cluster-id/-t: expected one argument"), failing 1 cluster start in 64.
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id
