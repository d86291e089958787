"""The meter rows that need more than one run: totals checked against the topic content, Kafka Streams on a real
Apache Kafka broker, and scale-out 1 → 2 → 3 workers on both brokers.

``bench.domains.run_all`` calls these after the meter ingest published the readings (on the embedded broker).
For the Apache Kafka rows a single-node KRaft broker is started (``shared.embedded.apache_kafka``; the jars come
from Maven Central into the local Maven cache) and the readings topic is copied into it record by record (same
partition, key, value, headers, timestamp), so both brokers hold the same content.
"""

from __future__ import annotations

import functools
import tempfile
import time
import uuid
from pathlib import Path

from bench.meter_totals import compare

READINGS = "ioc.meter.readings"
WORKERS = (1, 2, 3)
# One node: no replication, and the transaction log (Kafka Streams exactly-once) on that node alone.
SINGLE_NODE = {
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    # Kafka's default (3 s; the test launcher sets 0): a group's first assignment waits for the members starting
    # with it, so the scale-out workers share the partitions from the start.
    "group.initial.rebalance.delay.ms": "3000",
}


def check_totals(row: dict, truth: dict, *, valid_only: bool = False) -> dict:
    """Replaces the window totals a run returned (``quarters`` or ``quarters_by_partition``) by their comparison
    with the reference (``bench.peers.meter_truth``), under ``totals``."""
    if "quarters_by_partition" in row:
        got = merge_partitions([row.pop("quarters_by_partition")])[0]
    else:
        got = row.pop("quarters", None)
    if got is None or not truth.get("quarters"):
        return row
    expected = truth["quarters_valid" if valid_only else "quarters"]
    row["totals"] = compare(expected, got)
    return row


def merge_partitions(per_worker: list[dict[str, dict]]) -> tuple[dict[str, list], list[str]]:
    """Sums the workers' per-partition window totals, each partition once (the first worker reporting it);
    also the partitions more than one worker reported (an ownership overlap)."""
    seen: dict[str, int] = {}
    out: dict[str, list] = {}
    overlap: list[str] = []
    for i, parts in enumerate(per_worker):
        for p, quarters in parts.items():
            if p in seen:
                overlap.append(p)
                continue
            seen[p] = i
            for k, (n, kwh) in quarters.items():
                t = out.setdefault(k, [0, 0.0])
                t[0] += n
                t[1] += kwh
    return out, overlap


def combine_workers(workers: list[dict], truth: dict, reference: dict | None = None) -> dict:
    """One scale-out row from the workers of one group: events/s over the group's span (first event anywhere to
    the last), CPU per event over all workers, and exactness: the merged meter totals against the reference
    (``truth``), or, for a processor without totals, every record folded once against ``reference`` (the
    one-worker run's row, ``None`` for that run itself)."""
    ok = [w for w in workers if w.get("events") is not None and "error" not in w]
    events = sum(w["events"] for w in ok)
    spans = [(w["t0"], w["t1"]) for w in ok if w.get("t0") and w.get("t1")]
    wall = (max(t1 for _, t1 in spans) - min(t0 for t0, _ in spans)) if spans else 0.0
    cpu = sum((w.get("cpu_s_per_million") or 0) * w["events"] / 1e6 for w in ok)
    merged, overlap = merge_partitions([w.get("quarters_by_partition", {}) for w in ok])
    row: dict = {
        "workers": len(workers),
        "events": events,
        "seconds": round(wall, 3),
        "events_per_s": round(events / wall) if wall else None,
        "cpu_s_per_million": round(cpu / events * 1e6, 2) if events else None,
        "per_worker": [
            {
                "events": w.get("events"),
                "partitions": w.get("partitions"),
                "events_per_s": w.get("events_per_s"),
                **({"error": str(w["error"])[-300:]} if "error" in w else {}),
            }
            for w in workers
        ],
        "every_worker_busy": all(w.get("events") for w in workers),
        "partition_overlap": overlap,
    }
    complete = len(ok) == len(workers)
    if truth.get("quarters_valid"):
        row["totals"] = compare(truth["quarters_valid"], merged)
        row["exact"] = row["totals"]["exact"] and not overlap and complete
    elif reference is not None:
        # Every record folded once: the same events as one worker folded, each partition owned by one worker,
        # all of them owned. (Final states are not compared: the kiosk's offline time, for one, accrues up to
        # the wall clock of each emit, so no two runs hold the same state.)
        owned = sorted(p for w in ok for p in w.get("partitions") or ())
        expected = sorted(p for w in reference.get("per_worker", []) for p in w.get("partitions") or ())
        overlap += [str(p) for p in set(owned) if owned.count(p) > 1]
        row["exact"] = events == reference.get("events") and owned == expected and not overlap and complete
    return row


def scale_out(
    bootstrap: str, truth: dict, broker: str, env: dict | None = None, domain: str = "meter", index: int = 0
) -> dict:
    """A processor with 1, 2 and 3 worker processes of one consumer group over the same topics (each count a fresh
    group, so each reads everything), the speed-up against one worker, and exactness: the meter-kpi processor's
    totals against the readings topic's; any other processor's events against the one-worker run's: the same
    number folded, each partition owned by exactly one worker."""
    import subprocess
    import sys

    import orjson

    from bench.__main__ import ROOT
    from bench.worker import read_result, result_file

    totals = domain == "meter" and index == 0
    rows: dict[str, dict] = {}
    for n in WORKERS:
        group = f"{domain}-{index}-scale{n}-{uuid.uuid4().hex[:6]}"
        barrier = tempfile.mkdtemp(prefix="ioc-bench-barrier-")
        args = dict(
            bootstrap=bootstrap,
            domain_path="processor",
            domain=domain,
            index=index,
            totals=totals,
            ownership=not totals,
            group=group,
            barrier={"dir": barrier, "workers": n},
            start_timeout=30.0,
        )
        cmd = [sys.executable, "-m", "bench.worker", "domain", orjson.dumps(args).decode()]
        files = [result_file() for _ in range(n)]
        procs = [
            subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**child_env, **(env or {})},
            )
            for child_env, _ in files
        ]
        workers = []
        for p, (_, file) in zip(procs, files, strict=True):
            out, err = p.communicate(timeout=600)
            workers.append(read_result(file, out) or {"error": err[-1500:]})
        rows[str(n)] = combine_workers(workers, truth if totals else {}, None if n == 1 else rows.get("1"))
    one = (rows.get("1") or {}).get("events_per_s")
    for r in rows.values():
        if one and r.get("events_per_s"):
            r["x_one_worker"] = round(r["events_per_s"] / one, 2)
    best = rows[str(WORKERS[-1])]
    exact = {k: r.get("exact") for k, r in rows.items()}
    if not totals:  # the one-worker run is the reference the others are checked against
        exact["1"] = "reference" if rows["1"].get("events") else False
    return {
        "broker": broker,
        "events": best.get("events"),
        "events_per_s": best.get("events_per_s"),
        "cpu_s_per_million": best.get("cpu_s_per_million"),
        "x_one_worker_by_workers": {k: r.get("x_one_worker") for k, r in rows.items()},
        "exact_by_workers": exact,
        "scale": rows,
    }


class ApacheBroker:
    """A single-node Apache Kafka (KRaft) for the run's Apache Kafka rows, started on first use."""

    def __init__(self) -> None:
        self.cluster = None
        self.error: str | None = None
        self.copied: set[str] = set()  # topics copied from the embedded broker so far

    def start(self):
        if self.cluster is None and self.error is None:
            from shared.embedded.apache_kafka import KafkaCluster

            try:
                self.cluster = KafkaCluster(
                    Path(tempfile.mkdtemp(prefix="ioc-bench-kafka-")),
                    nodes=1,
                    heap_mb=512,
                    broker_config=SINGLE_NODE,
                ).start()
            except Exception as exc:  # no Java/Maven here: the rows say so instead of failing the run
                self.error = f"Apache Kafka unavailable: {exc}"[:500]
        return self.cluster

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


def copy_topic(src_bootstrap: str, dst_bootstrap: str, topic: str = READINGS, partitions: int = 4) -> int:
    """Every record of ``topic`` from one broker to the other (same partition, key, value, headers, timestamp),
    after creating IOC's topics there; the records copied."""
    import asyncio

    from confluent_kafka import Consumer, Producer

    from shared.config import KafkaSettings
    from shared.kafka import ensure_topics

    asyncio.run(ensure_topics(KafkaSettings(bootstrap_servers=dst_bootstrap, partitions_override=partitions)))
    c = Consumer(
        {
            "bootstrap.servers": src_bootstrap,
            "group.id": f"bench-copy-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 10000,
        }
    )
    p = Producer({"bootstrap.servers": dst_bootstrap, "linger.ms": 20, "compression.type": "zstd"})
    from confluent_kafka import TopicPartition

    records = 0
    for part in range(partitions):
        low, high = c.get_watermark_offsets(TopicPartition(topic, part), timeout=10)
        records += max(0, high - low)
    if not records:  # nothing to wait for
        c.close()
        return 0
    c.subscribe([topic])
    copied, idle_since = 0, time.perf_counter()
    try:
        while copied < records and time.perf_counter() - idle_since < (3.0 if copied else 60.0):
            batch = [r for r in c.consume(num_messages=20000, timeout=0.2) if r.error() is None]
            if not batch:
                continue
            for r in batch:
                partition = r.partition()
                assert partition is not None  # a consumed record without error has its partition
                while True:
                    try:
                        p.produce(
                            topic,
                            r.value(),
                            r.key(),
                            partition=partition,
                            timestamp=r.timestamp()[1],
                            headers=r.headers(),
                        )
                        break
                    except BufferError:
                        p.poll(0.05)
            p.poll(0)
            copied += len(batch)
            idle_since = time.perf_counter()
    finally:
        c.close()
        p.flush(60)
    return copied


def apache_rows(
    embedded_bootstrap: str, truth: dict, apache: ApacheBroker, run_child, console, only: tuple[str, ...]
) -> dict[str, dict]:
    """On the Apache Kafka broker: IOC's meter processor beside Kafka Streams (same readings), and scale-out."""
    wanted = lambda key: not only or key.startswith(only)  # noqa: E731
    out: dict[str, dict] = {}
    if not (wanted("meter_kstreams_peer") or wanted("meter_scaleout_apache")):
        return out
    cluster = apache.start()
    if cluster is None:  # no Java/Maven here: each wanted row says why it is missing
        keys = [k for k in ("meter_kstreams_peer", "meter_scaleout_apache") if wanted(k)]
        return {k: {"label": k, "error": apache.error or "Apache Kafka unavailable"} for k in keys}
    bs = cluster.bootstrap_servers
    console.print(f"… Apache Kafka {bs}: copying {READINGS}")
    copied = copy_topic(embedded_bootstrap, bs)
    apache.copied.add(READINGS)
    child = functools.partial(run_child, "domain", timeout=900, bootstrap=bs)
    if wanted("meter_kstreams_peer"):
        console.print("… meter-kpi processor and Kafka Streams on Apache Kafka")
        ioc = check_totals(
            child(domain_path="processor", domain="meter", totals=True), truth, valid_only=True
        )
        ks = check_totals(child(domain_path="kstreams_meter"), truth)
        row = {"label": "peer: Kafka Streams (group by district, 15 min + day windows), Apache Kafka", **ks}
        if ks.get("cpu_s_per_million") and ioc.get("cpu_s_per_million"):
            row["x_ioc_cpu"] = round(ks["cpu_s_per_million"] / ioc["cpu_s_per_million"], 2)
            row["x_ioc_events_per_s"] = round(ks["events_per_s"] / ioc["events_per_s"], 2)
        row["ioc_same_broker"] = {
            k: ioc.get(k)
            for k in ("events", "events_per_s", "cpu_s_per_million", "peak_rss_mib", "totals", "error")
        }
        row["copied_records"] = copied
        out["meter_processor_apache"] = {"label": "meter-kpi processor (Faust driver), Apache Kafka", **ioc}
        out["meter_kstreams_peer"] = row
        # IOC's state is exactly-once; Kafka Streams' counterpart is its exactly_once_v2 (transactions)
        eos = check_totals(child(domain_path="kstreams_meter", guarantee="exactly_once_v2"), truth)
        eos_row = {"label": "peer: Kafka Streams, exactly_once_v2, Apache Kafka", **eos}
        if eos.get("cpu_s_per_million") and ioc.get("cpu_s_per_million"):
            eos_row["x_ioc_cpu"] = round(eos["cpu_s_per_million"] / ioc["cpu_s_per_million"], 2)
            eos_row["x_ioc_events_per_s"] = round(eos["events_per_s"] / ioc["events_per_s"], 2)
        out["meter_kstreams_peer_eos"] = eos_row
    if wanted("meter_scaleout_apache"):
        console.print("… scale-out on Apache Kafka: 1, 2, 3 meter-kpi workers")
        out["meter_scaleout_apache"] = {
            "label": "meter-kpi processor, 1 → 2 → 3 workers, Apache Kafka",
            **scale_out(bs, truth, "apache"),
        }
    return out


def topic_bytes(run_child) -> dict:
    """Bytes per reading in the readings' log segments on an Apache Kafka broker of its own (on the one the other
    rows loaded, the consumer's offset lookup once timed out), uncompressed and with each codec IOC offers
    (``bench.producer_compression``)."""
    broker = ApacheBroker()
    cluster = broker.start()
    if cluster is None:
        return {"error": broker.error or "Apache Kafka unavailable"}
    try:
        node = next(iter(cluster.nodes.values()))
        return run_child(
            "domain",
            timeout=900,
            bootstrap=cluster.bootstrap_servers,
            domain_path="topic_bytes",
            data_dir=str(node.data_dir),
            codecs=["none", "lz4", "zstd"],
            # in requests of 1,000 as a head-end posts them: the batches, hence the ratio, are those of any count
            n=20_000,
        )
    finally:
        broker.stop()


def state_memory(meters: int = 100_000) -> dict:
    """``bench.meter_state_memory`` with tracemalloc in a child process: the Python objects the meter service's
    registry and register state hold per meter (what the RSS per meter is made of)."""
    import subprocess
    import sys

    import orjson

    from bench.__main__ import ROOT

    r = subprocess.run(
        [sys.executable, "-m", "bench.meter_state_memory", "--meters", str(meters), "--tracemalloc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("{")), None)
    return orjson.loads(line) if line else {"error": (r.stderr or r.stdout)[-1000:]}


#: the processors besides the meter-kpi one whose scale-out ``make bench`` measures: (domain, index, row name)
OTHER_SCALE_OUT = (
    ("meter", 1, "meter_feeder"),
    ("traffic", 0, "traffic"),
    ("kiosk", 0, "kiosk"),
    ("dossier", 0, "dossier"),
)


def other_scale_out(
    embedded_bootstrap: str, apache: ApacheBroker, console, wanted, copied: set[str]
) -> dict[str, dict]:
    """Scale-out 1 → 2 → 3 workers of every other KPI processor, on the embedded broker and on Apache Kafka (its
    source topics copied there first), each checked against its one-worker run."""
    from bench.domain_processors import build_processor
    from shared.config import KafkaSettings

    out: dict[str, dict] = {}
    for domain, index, name in OTHER_SCALE_OUT:
        for broker in ("embedded", "apache"):
            key = f"{name}_scaleout_{broker}"
            if not wanted(key):
                continue
            label = f"{name.replace('_', '-')} processor, 1 → 2 → 3 workers, " + (
                "embedded broker" if broker == "embedded" else "Apache Kafka"
            )
            console.print(f"… {label}")
            bootstrap = embedded_bootstrap
            if broker == "apache":
                cluster = apache.start()
                if cluster is None:
                    out[key] = {"label": label, "error": apache.error or "Apache Kafka unavailable"}
                    continue
                bootstrap = cluster.bootstrap_servers
                topics = build_processor(
                    domain, index, KafkaSettings(bootstrap_servers=embedded_bootstrap)
                ).topics
                for topic in topics:
                    if topic not in copied:
                        copy_topic(embedded_bootstrap, bootstrap, topic)
                        copied.add(topic)
            out[key] = {"label": label, **scale_out(bootstrap, {}, broker, domain=domain, index=index)}
    return out
