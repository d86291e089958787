"""Per-domain paths: ingest over HTTP, each domain's KPI processor(s), and the whole pipeline.

``run_all`` (called by ``python -m bench``) starts an embedded PostgreSQL beside the run's broker and runs each
path in its own child process (``python -m bench.worker domain {"domain_path": ...}``), so every result's CPU and
memory are that path's own. Services are measured as separate uvicorn processes (``ioc serve``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.config import KafkaSettings

# path name → "module:function" (async, (kafka, **args) → result dict)
DOMAIN_PATHS = {
    "meter_ingest": "bench.domain_meter:ingest",
    "traffic_ingest": "bench.domain_traffic:ingest",
    "kiosk_ingest": "bench.domain_kiosk:ingest",
    "dossier_ingest": "bench.domain_dossier:ingest",
    "processor": "bench.domain_processors:processor",
    "raw_sources": "bench.domain_processors:raw_sources",
    "librdkafka_sources": "bench.peers:librdkafka_sources",
    "meter_quix_peer": "bench.peers:quix_meter",
    "meter_truth": "bench.peers:meter_truth",
    "kstreams_meter": "bench.peers:kstreams_meter",
    "naive_processor": "bench.domain_processors:naive_processor",
    "dossier_events": "bench.domain_processors:produce_dossier_events",
    "meter_feeder_events": "bench.domain_processors:produce_feeder_supply_events",
    "pipeline": "bench.domain_pipeline:pipeline",
    "burst": "bench.domain_burst:burst",
    "topic_bytes": "bench.producer_compression:on_broker",
}


async def run_path(kafka: KafkaSettings, domain_path: str, **args) -> dict:
    """Entry point of ``bench.worker`` for the domain paths."""
    module, _, func = DOMAIN_PATHS[domain_path].partition(":")
    return await getattr(importlib.import_module(module), func)(kafka, **args)


def processor_pairs(runs: list[dict], ceilings: list[dict]) -> dict:
    """One processor's row from its runs interleaved with the ceiling's (``runs[i]`` beside ``ceilings[i]``).

    The row is the processor run of median events/s (its CPU, memory and latency with it), the median ceiling,
    and ``x_raw_same_topics``: the median of the per-pair ratios (a pair shares the machine's state of the
    moment, so its ratio is steadier than either figure). Every run's figures are kept beside it. A failed run
    of either side drops its pair; with no pair left, the first run is the row, with the ceiling's error.
    """
    pairs = [
        (r, c) for r, c in zip(runs, ceilings, strict=True) if r.get("events_per_s") and c.get("events_per_s")
    ]
    if not pairs:
        row = dict(runs[0])
        error = next((c["error"] for c in ceilings if c.get("error")), None)
        if error:
            row["raw_same_topics_error"] = error[-500:]
        return row
    ratios = [r["events_per_s"] / c["events_per_s"] for r, c in pairs]
    middle = (len(pairs) - 1) // 2  # the lower middle of an even count: a run that happened
    row = dict(sorted((r for r, _ in pairs), key=lambda r: r["events_per_s"])[middle])
    ceiling = sorted((c for _, c in pairs), key=lambda c: c["events_per_s"])[middle]
    row.update(
        {
            "raw_same_topics_events_per_s": ceiling["events_per_s"],
            "raw_same_topics_cpu_s_per_million": ceiling.get("cpu_s_per_million"),
            "x_raw_same_topics": round(statistics.median(ratios), 2),
            "pairs": len(pairs),
            "runs_events_per_s": [r["events_per_s"] for r, _ in pairs],
            "runs_cpu_s_per_million": [r.get("cpu_s_per_million") for r, _ in pairs],
            "raw_same_topics_runs_events_per_s": [c["events_per_s"] for _, c in pairs],
            "raw_same_topics_runs_cpu_s_per_million": [c.get("cpu_s_per_million") for _, c in pairs],
            "x_raw_same_topics_runs": [round(x, 2) for x in ratios],
        }
    )
    return row


def peer_ratio(peer: dict, ioc: dict) -> dict:
    """A peer's CPU per event and rate against IOC's processor on the same topics, measured in the same run."""
    if not (peer.get("cpu_s_per_million") and ioc.get("cpu_s_per_million")):
        return {}
    return {
        "x_ioc_cpu": round(peer["cpu_s_per_million"] / ioc["cpu_s_per_million"], 2),
        "x_ioc_events_per_s": round(peer["events_per_s"] / ioc["events_per_s"], 2)
        if ioc.get("events_per_s")
        else None,
    }


def librdkafka_ratio(row: dict, librdkafka: dict) -> dict:
    """The processor's CPU per event against a plain librdkafka loop's over the same topics (a target of the
    performance issue: at most 2.5 times)."""
    cpu, ceiling = row.get("cpu_s_per_million"), librdkafka.get("cpu_s_per_million")
    if not (cpu and ceiling):
        return {"librdkafka_error": str(librdkafka.get("error", ""))[-500:]}
    return {
        "librdkafka_events_per_s": librdkafka.get("events_per_s"),
        "librdkafka_cpu_s_per_million": ceiling,
        "x_librdkafka_cpu": round(cpu / ceiling, 2),
    }


@contextlib.contextmanager
def fresh_center(pg, database: str) -> Iterator[tuple[str, str]]:
    """A broker and a database of their own for a path that runs IOC's production services and processors (the
    burst, the pipeline): on the run's broker they would first fold every KPI observation the rows before them
    published, and load every meter the ingest rows registered."""
    from shared.embedded import EmbeddedBroker

    broker = EmbeddedBroker().start()
    try:
        pg.create_database(database)
        yield broker.bootstrap_servers, pg.url(database)
    finally:
        broker.stop()


def run_all(bootstrap: str, n: int, console, only: tuple[str, ...] = (), pairs: int = 3) -> dict[str, dict]:
    """Every per-domain path against ``bootstrap`` and a fresh embedded PostgreSQL; result rows by key.

    ``pairs``: how many times each processor and its ceiling run, interleaved (see :func:`processor_pairs`)."""
    from bench.__main__ import run_path as run_child
    from shared.embedded import EmbeddedPostgres

    results: dict[str, dict] = {}
    from bench import meter_rows

    apache = meter_rows.ApacheBroker()  # started by the first Apache Kafka row
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="ioc-bench-")) / "pgdata").start()
    try:
        pg.create_database("ioc_bench")
        db = pg.url("ioc_bench")
        ingest_n = max(n, 100_000)
        steps: list[tuple[str, str, dict[str, Any]]] = [
            # Ingest first: what the services publish is the processors' workload below.
            (
                "meter_ingest",
                "meter ingest: POST /v1/readings, 10k readings/request, 4 in flight",
                dict(n=ingest_n, database_url=db),
            ),
            (
                "traffic_ingest",
                "traffic ingest: POST /v1/events (hi-res), 10k/request, 4 in flight",
                dict(n=ingest_n, database_url=db),
            ),
            (
                "kiosk_ingest",
                "kiosk ingest: POST /v1/heartbeats, 5k/request, 4 in flight",
                dict(n=ingest_n // 2, database_url=db),
            ),
            (
                "dossier_ingest",
                "dossier ingest: POST /v1/dossiers (one per request), 16 in flight",
                dict(n=1000 if n <= 50_000 else 3000, database_url=db),
            ),
            ("dossier_events", "dossier: generated lifecycle events for the processor", dict(n=n)),
            (
                "meter_processor",
                "meter-kpi processor (Faust driver)",
                dict(path="processor", domain="meter", totals=True),
            ),
            (
                "meter_processor_librdkafka",
                "meter-kpi processor (librdkafka driver)",
                dict(path="processor", domain="meter", totals=True, driver="librdkafka"),
            ),
            (
                "meter_quix_peer",
                "peer: the meter aggregation in Quix Streams (group_by district, 15 min + day windows)",
                dict(mode="group_by"),
            ),
            (
                "meter_quix_peer_1h_grace",
                "peer: Quix Streams group_by with 1 h grace (what it drops as late)",
                dict(path="meter_quix_peer", mode="group_by", grace_s=3600),
            ),
            (
                "meter_quix_local_peer",
                "peer: Quix Streams, partition-local (no repartition; private _single_partition_groupby)",
                dict(path="meter_quix_peer", mode="partition_local"),
            ),
            (
                "meter_quix_local_peer_1h_grace",
                "peer: Quix Streams partition-local with 1 h grace (what it drops as late)",
                dict(path="meter_quix_peer", mode="partition_local", grace_s=3600),
            ),
            (
                "meter_feeder_events",
                "meter: generated feeder supply changes (outages) for the feeder processor",
                dict(n=n),
            ),
            (
                "meter_feeder_processor",
                "meter-feeder-outage processor (Faust driver)",
                dict(path="processor", domain="meter", index=1),
            ),
            (
                "traffic_processor",
                "traffic-signals processor (Faust driver; records = hi-res chunks)",
                dict(path="processor", domain="traffic"),
            ),
            ("kiosk_processor", "kiosk-kpi processor (Faust driver)", dict(path="processor", domain="kiosk")),
            (
                "dossier_processor",
                "dossier-kpi processor (Faust driver)",
                dict(path="processor", domain="dossier"),
            ),
        ]
        if only:
            steps = [s for s in steps if s[0].startswith(only)]
        truth: dict = {}  # the readings topic's exact meter totals (bench.meter_rows), read once when needed
        for key, label, args in steps:
            console.print(f"… {label}")
            path = args.pop("path", key)
            if key.startswith(("meter_processor", "meter_quix")) and not truth:
                truth = run_child("domain", timeout=900, bootstrap=bootstrap, domain_path="meter_truth")
            res = run_child("domain", timeout=900, bootstrap=bootstrap, domain_path=path, **args)
            if key.endswith("_events"):  # a workload, not a result
                console.print(f"  {res}")
                continue
            if path == "processor":
                # Beside it, on the same topics: a plain aiokafka loop (the ceiling on these payloads), run
                # ``pairs`` times interleaved with the processor because one run of either moves ±20% with
                # what else the 2 cores do; then, once, the newcomer's version of the same processor (a
                # per-event Faust agent doing the same work).
                baseline = functools.partial(
                    run_child,
                    "domain",
                    timeout=900,
                    bootstrap=bootstrap,
                    domain=args["domain"],
                    index=args.get("index", 0),
                )
                runs, ceilings = [res], []
                for i in range(pairs):
                    if i:
                        runs.append(
                            run_child("domain", timeout=900, bootstrap=bootstrap, domain_path=path, **args)
                        )
                    ceilings.append(baseline(domain_path="raw_sources"))
                res = processor_pairs(runs, ceilings)
                res.update(librdkafka_ratio(res, baseline(domain_path="librdkafka_sources")))
                # the per-event Faust agent once per processor, beside its default driver's row
                naive = baseline(domain_path="naive_processor") if "driver" not in args else {}
                if naive.get("events_per_s") and res.get("events_per_s"):
                    res["naive_same_work_events_per_s"] = naive["events_per_s"]
                    res["naive_same_work_cpu_s_per_million"] = naive.get("cpu_s_per_million")
                    res["x_naive_same_work"] = round(res["events_per_s"] / naive["events_per_s"], 1)
                elif naive.get("error"):
                    res["naive_same_work_error"] = naive["error"][-500:]
            if key.startswith(("meter_processor", "meter_quix")):
                meter_rows.check_totals(res, truth, valid_only=key.startswith("meter_processor"))
            if key.startswith("meter_quix"):
                res.update(peer_ratio(res, results.get("meter_processor", {})))
            results[key] = {"label": label, **res}
            ingest = results.get("traffic_ingest", {})
            if key == "traffic_processor" and res.get("seconds") and ingest.get("hires_records"):
                # A traffic record is a chunk of one controller's hi-res events: say what that is in events.
                events = ingest["hires_records"] * ingest["events_per_record"]
                results[key]["hires_events_per_s"] = round(events / res["seconds"])
                results[key]["cpu_s_per_million_hires_events"] = (
                    round(res["cpu_s_per_million"] * res["events"] / events, 2)
                    if res.get("cpu_s_per_million")
                    else None
                )
        wanted = lambda key: not only or key.startswith(only)  # noqa: E731
        if wanted("meter_scaleout") or wanted("meter_kstreams"):
            truth = truth or run_child("domain", timeout=900, bootstrap=bootstrap, domain_path="meter_truth")
        if wanted("meter_scaleout_embedded"):
            console.print("… scale-out on the embedded broker: 1, 2, 3 meter-kpi workers")
            results["meter_scaleout_embedded"] = {
                "label": "meter-kpi processor, 1 → 2 → 3 workers, embedded broker",
                **meter_rows.scale_out(bootstrap, truth, "embedded"),
            }
        results.update(meter_rows.apache_rows(bootstrap, truth, apache, run_child, console, only))
        results.update(meter_rows.other_scale_out(bootstrap, apache, console, wanted, apache.copied))
        if wanted("meter_topic_bytes"):
            console.print("… bytes per reading on the topic, Apache Kafka log segments, per codec")
            results["meter_topic_bytes"] = {
                "label": "meter readings on the topic: bytes per reading (Apache Kafka, one replica)",
                **meter_rows.topic_bytes(run_child),
            }
        if wanted("meter_memory"):
            console.print(
                "… what the meter service's registry and register state hold per meter (tracemalloc)"
            )
            results["meter_memory"] = {
                "label": "meter service state per meter, in process (tracemalloc)",
                **meter_rows.state_memory(),
            }
        if not only or "burst".startswith(only):
            from bench.domain_burst import LABEL as BURST_LABEL

            console.print(f"… {BURST_LABEL}")
            readings = int(
                os.environ.get("IOC_BENCH_BURST_READINGS") or (100_000 if n <= 50_000 else 300_000)
            )
            with fresh_center(pg, "ioc_bench_burst") as (burst_bootstrap, burst_db):
                res = run_child(
                    "domain",
                    timeout=1200,
                    bootstrap=burst_bootstrap,
                    domain_path="burst",
                    database_url=burst_db,
                    readings=readings,
                )
            results["burst"] = {"label": BURST_LABEL, **res}
        # The whole pipeline last: every service and processor as subprocesses, driven at a target rate.
        from bench.domain_pipeline import LABEL as PIPELINE_LABEL

        if only and not "pipeline".startswith(only):
            return results

        console.print(f"… {PIPELINE_LABEL}")
        seconds = float(os.environ.get("IOC_BENCH_PIPELINE_SECONDS") or (15 if n <= 50_000 else 60))
        rate = int(os.environ.get("IOC_BENCH_PIPELINE_RATE") or 20_000)
        meters = int(os.environ.get("IOC_BENCH_PIPELINE_METERS") or 20_000)
        with fresh_center(pg, "ioc_bench_pipeline") as (pipeline_bootstrap, pipeline_db):
            res = run_child(
                "domain",
                timeout=max(900, seconds + 600),
                bootstrap=pipeline_bootstrap,
                domain_path="pipeline",
                database_url=pipeline_db,
                seconds=seconds,
                rate=rate,
                meters=meters,
            )
        results["pipeline"] = {"label": PIPELINE_LABEL, **res}
    finally:
        apache.stop()
        pg.stop()
    return results
