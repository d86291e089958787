"""``python -m bench`` (``make bench``): one run, one generated workload, baselines and IOC paths side by side.

Each path runs in its own child process (so CPU seconds and peak memory are its own) against the same
broker and the same pre-produced topic. Results: a table on stdout and ``bench-results/bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
# A log (CI, `make bench > file`) is no terminal: rich would fold the wide tables into 80 columns.
console = Console(width=None if sys.stdout.isatty() else 220)


def run_path(path: str, timeout: float = 300, **args) -> dict:
    cmd = [sys.executable, "-m", "bench.worker", path, json.dumps(args)]
    profile_dir = os.environ.get("IOC_BENCH_PYSPY")  # profile each path with py-spy (dev tool, not installed)
    if profile_dir:
        out = Path(profile_dir) / f"{args.get('domain', '')}{path}-{int(time.time())}.txt"
        cmd = ["py-spy", "record", "--format", "raw", "--rate", "200", "-o", str(out), "--", *cmd]
    from bench.worker import read_result, result_file

    env, out = result_file()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    return read_result(out, r.stdout) or {"error": (r.stderr or r.stdout)[-2000:]}


def run_parallel(path: str, copies: int, timeout: float = 300, **args) -> list[dict]:
    from bench.worker import read_result, result_file

    cmd = [sys.executable, "-m", "bench.worker", path, json.dumps(args)]
    files = [result_file() for _ in range(copies)]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for env, _ in files
    ]
    out = []
    for p, (_, file) in zip(procs, files, strict=True):
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(read_result(file, stdout) or {"error": stderr[-2000:]})
    return out


async def produce(bootstrap: str, events) -> float:
    from shared.config import KafkaSettings
    from shared.kafka import EventPublisher, ensure_topics

    kafka = KafkaSettings(bootstrap_servers=bootstrap, partitions_override=4)
    await ensure_topics(kafka)
    pub = EventPublisher(kafka, client_id="bench-producer")
    t = time.perf_counter()
    for i in range(0, len(events), 20000):
        await pub.publish(events[i : i + 20000])
    rate = len(events) / (time.perf_counter() - t)
    await pub.stop()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="smaller workload")
    ap.add_argument("--skip-domains", action="store_true")
    ap.add_argument(
        "--pairs",
        type=int,
        default=3,
        help="runs of each KPI processor, each beside a run of its "
        "raw ceiling (interleaved); the row shows the median ratio and the range",
    )
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated path-name prefixes, e.g. 'meter' or "
        "'kiosk,dossier' (the raw aiokafka ceiling always runs; a processor's workload is what its "
        "domain's ingest published, so keep the domain's prefix whole)",
    )
    ap.add_argument(
        "--broker",
        choices=("embedded", "apache-kafka"),
        default="embedded",
        help="the embedded Tansu broker, or a 3-node Apache Kafka cluster started for the run",
    )
    opts = ap.parse_args()
    n = 50_000 if opts.quick else opts.events
    os.environ["IOC_KAFKA_PARTITIONS"] = "4"

    from bench.workload import AUDIT, small_events
    from shared.embedded import EmbeddedBroker

    if opts.broker == "apache-kafka":  # the 3-node KRaft cluster of tests/kafka (needs java 17+ and mvn)
        import tempfile

        from shared.embedded.apache_kafka import KafkaCluster

        cluster = KafkaCluster(Path(tempfile.mkdtemp(prefix="ioc-bench-kafka-")))
        cluster.start()
        broker: KafkaCluster | EmbeddedBroker = cluster
    else:
        broker = EmbeddedBroker().start()
    bs = broker.bootstrap_servers
    results: dict[str, dict] = {}
    try:
        console.print(
            f"[bold]IOC benchmark[/bold]: {n:,} events of ~100 bytes on 4 partitions, {opts.broker} broker {bs}"
        )
        events = small_events(n)
        results["produce_batched"] = {"events": n, "events_per_s": round(asyncio.run(produce(bs, events)))}
        topic = AUDIT.topic
        steps: list[tuple[str, str, dict[str, Any]]] = [
            ("raw_aiokafka", "baseline: raw aiokafka getmany + orjson + dict", dict(topic=topic, n=n)),
            # The same loop with the collector settings IOC's processes run with (shared.gc_tuning): the ceiling
            # the "× raw" figures would have if the plain consumer were tuned too.
            (
                "raw_aiokafka_tuned_gc",
                "raw aiokafka, collector tuned as IOC's",
                dict(topic=topic, n=n, tune_gc=True),
            ),
            ("naive_faust", "baseline: naive Faust agent, table per event", dict(topic=topic, n=n)),
            (
                "ioc_stream",
                "IOC stream base (Faust driver, batch drain)",
                dict(topic=topic, n=n, driver="faust"),
            ),
            (
                "ioc_stream_aiokafka",
                "IOC stream base (aiokafka driver)",
                dict(topic=topic, n=n, driver="aiokafka"),
            ),
            # Durability modes side by side (docs/stream-design.md): commit markers, and one Kafka transaction
            # per partition and batch (the embedded broker refuses transactions: that row says so).
            (
                "ioc_stream_markers",
                "IOC stream base, commit markers",
                dict(topic=topic, n=n, driver="faust", durability="markers"),
            ),
            (
                "ioc_stream_transactions",
                "IOC stream base, Kafka transactions",
                dict(topic=topic, n=n, driver="faust", durability="transactions"),
            ),
        ]
        only = tuple(x.strip() for x in opts.only.split(",") if x.strip())
        for key, label, args in steps:
            if only and key != "raw_aiokafka" and not key.startswith(only):
                continue
            console.print(f"… {label}")
            path = (
                "ioc_stream"
                if key.startswith("ioc_stream")
                else "raw_aiokafka"
                if key.startswith("raw")
                else key
            )
            results[key] = {"label": label, **run_path(path, bootstrap=bs, **args)}
        if not only or "ioc_stream_2_workers".startswith(only):
            console.print("… scale-out: two IOC workers, one consumer group, 2 partitions each")
            both = run_parallel("ioc_stream_until_idle", 2, bootstrap=bs, topic=topic, group="bench-scale")
            results["ioc_stream_2_workers"] = {
                "label": "IOC stream base, 2 worker processes",
                "events": sum(r.get("events", 0) for r in both),
                "events_per_s": round(
                    sum(r.get("events", 0) for r in both) / max(max(r.get("seconds", 0) for r in both), 1e-9)
                ),
                "workers": both,
            }
        if not only or "archive".startswith(only):
            from bench import archive

            # A broker of its own: the archive rows write a month of one district's readings to the readings
            # topic, whose event times would move the meter rows' windows past their retention.
            archive_broker = EmbeddedBroker().start()
            try:
                results.update(archive.run(archive_broker.bootstrap_servers, console, n=n))
            finally:
                archive_broker.stop()
        if not opts.skip_domains:
            from bench import domains

            results.update(domains.run_all(bs, n, console, only=only, pairs=max(1, opts.pairs)))
    finally:
        broker.stop()
    report(results, n, only)


def run_metadata(n: int) -> dict:
    """Which machine, commit and command the figures come from (docs/performance.md shows it)."""
    import platform

    import psutil

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit + (" (uncommitted changes)" if dirty.strip() else ""),
        "machine": f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, {platform.system()}",
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "workload": f"{n:,} events of ~100 bytes on 4 partitions, embedded broker",
    }


def _exact_cell(r: dict) -> str:
    """Whether a meter row counted exactly the readings topic's totals (scale-out: per worker count)."""
    if isinstance(r.get("totals"), dict):
        return "yes" if r["totals"].get("exact") else "NO"
    by_workers = r.get("exact_by_workers")
    if by_workers:
        return " ".join(f"{n}:{'yes' if ok else 'NO'}" for n, ok in by_workers.items())
    return ""


def report(results: dict, n: int, only: tuple[str, ...] = ()) -> None:
    raw = results.get("raw_aiokafka", {}).get("events_per_s") or 0
    naive = results.get("naive_faust", {}).get("events_per_s") or 0
    table = Table(title=f"IOC benchmark ({n:,} events, 4 partitions, same run)")
    for col in (
        "path",
        "events/s",
        "× raw",
        "× raw, same topics",
        "× naive Faust",
        "× naive, same work",
        "× librdkafka CPU",
        "CPU s / M events",
        "peak RSS MiB",
        "p50 ms",
        "p99 ms",
        "totals exact",
    ):
        table.add_column(col, justify="right" if col != "path" else "left")
    for key, r in results.items():
        if key.startswith("_"):  # the run's metadata (bench.report)
            continue
        eps = r.get("events_per_s")
        same = str(r.get("x_raw_same_topics", ""))
        if len(r.get("x_raw_same_topics_runs", ())) > 1:  # median of the pairs, and their range
            same += f" ({min(r['x_raw_same_topics_runs'])}–{max(r['x_raw_same_topics_runs'])})"
        table.add_row(
            r.get("label", key),
            f"{eps:,}" if eps else r.get("error", "—")[:40],
            f"{eps / raw:.2f}" if eps and raw else "",
            same,
            f"{eps / naive:.1f}" if eps and naive else "",
            str(r.get("x_naive_same_work", "")),
            str(r.get("x_librdkafka_cpu", "")),
            str(r.get("cpu_s_per_million", "")),
            str(r.get("peak_rss_mib", "")),
            str(r.get("latency_p50_ms", "")),
            str(r.get("latency_p99_ms", "")),
            _exact_cell(r),
        )
    console.print(table)
    print_targets(results)
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    results = {"_run": run_metadata(n), **results}
    name = "bench.json" if not only else f"bench-{'-'.join(only)}.json"
    (out / name).write_text(json.dumps(results, indent=2))
    console.print(f"written {out / name}")


def print_targets(results: dict) -> None:
    """Issue #42's targets: met, or the distance and the profile that explains it (``bench.targets``)."""
    from bench.targets import evaluate

    rows = evaluate(results, os.cpu_count() or 1)
    if not rows:
        return
    table = Table(title="Targets (issue #42), this run", show_lines=True)
    for col in ("target", "measured", "status", "distance", "what explains it"):
        table.add_column(col, overflow="fold")
    colour = {"met": "green", "not met": "red"}
    for t in rows:
        status = f"[{colour[t.status]}]{t.status}[/]" if t.status in colour else t.status
        table.add_row(t.target, t.measured, status, t.distance, t.explanation)
    console.print(table)


if __name__ == "__main__":
    main()
