"""Peers measured beside IOC's processors on the same topic content: the ceilings other client libraries give.

``librdkafka_sources`` is the plain loop over a processor's own source topics with confluent-kafka (librdkafka,
the C client most non-Python stacks use): ``consume`` in batches + orjson decode + a count per record key, the
same work as ``bench.domain_processors.raw_sources`` does with aiokafka. A processor's CPU per event divided by
this loop's is the "× librdkafka CPU" figure of the performance targets.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from bench.domain_processors import build_processor
from bench.worker import Meter
from shared.config import KafkaSettings

ROOT = Path(__file__).resolve().parent.parent


def _confluent_config(kafka: KafkaSettings, group: str) -> dict:
    config = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 100,
        "max.partition.fetch.bytes": 8 * 1024 * 1024,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 3000,
    }
    if kafka.security_protocol != "PLAINTEXT":
        config["security.protocol"] = kafka.security_protocol
        if kafka.sasl_mechanism:
            config["sasl.mechanism"] = kafka.sasl_mechanism
            config["sasl.username"] = kafka.sasl_username or ""
            config["sasl.password"] = kafka.sasl_password or ""
    return config


async def librdkafka_sources(
    kafka: KafkaSettings, domain: str, index: int = 0, idle_s: float = 3.0, timeout: float = 180.0
) -> dict:
    """A confluent-kafka loop over the processor's source topics until they are drained."""
    from confluent_kafka import Consumer

    proc = build_processor(domain, index, kafka)
    c = Consumer(_confluent_config(kafka, f"bench-rdk-{uuid.uuid4().hex[:6]}"))
    c.subscribe(list(proc.topics))
    m, got, agg = Meter(), 0, dict[bytes, int]()
    started = idle_since = time.perf_counter()
    try:
        while time.perf_counter() - started < timeout:
            batch = c.consume(num_messages=20000, timeout=0.2)
            records = [r for r in batch if r.error() is None]
            if not records:
                if got and time.perf_counter() - idle_since > idle_s:
                    break
                if not got and time.perf_counter() - started > 60:
                    break
                continue
            m.first()
            for r in records:
                orjson.loads(r.value() or b"null")
                key = r.key() or b""
                agg[key] = agg.get(key, 0) + 1
            got += len(records)
            m.last()
            idle_since = time.perf_counter()
    finally:
        c.close()
    return m.result(got, topics=list(proc.topics), client="confluent-kafka (librdkafka)")


QUIX_VERSION = "3.28.1"


def _quix_python() -> Path:
    """A virtualenv of its own for Quix Streams (it pins another confluent-kafka than IOC's dev dependencies),
    made once under var/ and reused."""
    venv = ROOT / "var" / "bench-venvs" / f"quixstreams-{QUIX_VERSION}"
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"quixstreams=={QUIX_VERSION}"],
            check=True,
            timeout=600,
        )
        (venv / ".installed").touch()
    return python


async def meter_truth(
    kafka: KafkaSettings, topic: str = "ioc.meter.readings", idle_s: float = 3.0, timeout: float = 300.0
) -> dict:
    """The reference totals of the readings topic (``bench.meter_totals``), read once with confluent-kafka until
    it is drained: what every meter aggregation of the run must have counted. Not timed."""
    from confluent_kafka import Consumer

    from bench.meter_totals import expected_quarters

    c = Consumer(_confluent_config(kafka, f"bench-truth-{uuid.uuid4().hex[:6]}"))
    c.subscribe([topic])
    payloads: list[dict] = []
    started = idle_since = time.perf_counter()
    try:
        while time.perf_counter() - started < timeout:
            records = [r for r in c.consume(num_messages=20000, timeout=0.2) if r.error() is None]
            if not records:
                if time.perf_counter() - idle_since > (idle_s if payloads else 60):
                    break
                continue
            payloads += [orjson.loads(value) for r in records if (value := r.value())]
            idle_since = time.perf_counter()
    finally:
        c.close()
    return {
        "records": len(payloads),
        "quarters": expected_quarters(payloads),
        "quarters_valid": expected_quarters(payloads, valid_only=True),
    }


async def quix_meter(
    kafka: KafkaSettings,
    topic: str = "ioc.meter.readings",
    expected: int = 0,
    mode: str = "group_by",
    grace_s: int = 86400,
) -> dict:
    """The meter aggregation in Quix Streams (``bench/peer_quix.py``, ``mode`` group_by or partition_local) over
    the same readings topic."""
    import asyncio

    python = await asyncio.to_thread(_quix_python)
    state = tempfile.mkdtemp(prefix="ioc-bench-quix-")
    try:
        r = await asyncio.to_thread(
            subprocess.run,
            [
                str(python),
                str(ROOT / "bench" / "peer_quix.py"),
                kafka.bootstrap_servers,
                topic,
                str(expected),
                state,
                mode,
                str(grace_s),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        shutil.rmtree(state, ignore_errors=True)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(orjson.loads(line[7:]))
    return {"error": (r.stderr or r.stdout)[-2000:]}


KSTREAMS_DIR = ROOT / "bench" / "kstreams"


def kstreams_classpath() -> str:
    """``bench/kstreams`` built with ``mvn -q package`` (once, and again when its pom or source is newer than the
    build): the compiled classes plus the dependency jars in the local Maven cache."""
    target = KSTREAMS_DIR / "target"
    cp_file = target / "classpath.txt"
    sources = [KSTREAMS_DIR / "pom.xml", *KSTREAMS_DIR.joinpath("src").rglob("*.java")]
    if not cp_file.exists() or max(p.stat().st_mtime for p in sources) > cp_file.stat().st_mtime:
        mvn = shutil.which("mvn")
        if not mvn:
            raise RuntimeError("no mvn on PATH: the Kafka Streams peer needs Maven and Java 17+")
        done = subprocess.run(
            [mvn, "-q", "-B", "package"], cwd=KSTREAMS_DIR, capture_output=True, text=True, timeout=900
        )
        if done.returncode != 0:
            raise RuntimeError(f"mvn package failed: {(done.stdout + done.stderr)[-1500:]}")
    return f"{target / 'classes'}:{cp_file.read_text().strip()}"


async def kstreams_meter(
    kafka: KafkaSettings,
    topic: str = "ioc.meter.readings",
    guarantee: str = "at_least_once",
    heap_mb: int = 512,
) -> dict:
    """The meter aggregation in Kafka Streams (``bench/kstreams``, group by district + 15 min and day windows)
    over the readings topic, in its own JVM; CPU and wall time from its first record read to its last window
    update, measured inside the JVM."""
    import asyncio

    from shared.embedded.apache_kafka import java_binary

    cp = await asyncio.to_thread(kstreams_classpath)
    java = java_binary() or "java"
    state = tempfile.mkdtemp(prefix="ioc-bench-kstreams-")
    try:
        r = await asyncio.to_thread(
            subprocess.run,
            [
                java,
                f"-Xmx{heap_mb}m",
                "-XX:ActiveProcessorCount=2",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "-cp",
                cp,
                "ioc.bench.MeterKpiStreams",
                kafka.bootstrap_servers,
                topic,
                state,
                guarantee,
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        shutil.rmtree(state, ignore_errors=True)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(orjson.loads(line[7:]))
    return {"error": (r.stderr or r.stdout)[-2000:]}
