"""One benchmark path, run in its own process so its CPU time and peak memory are its own.

python -m bench.worker PATH JSON_ARGS   → prints one JSON result line
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson

from shared.config import KafkaSettings


def _rss_mib() -> float:
    """Peak resident memory of this process (VmHWM; ru_maxrss would include the parent before exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Meter:
    """Wall and CPU time between the first and the last event of a path (excludes group joins)."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.c0: float | None = None
        self.t1: float | None = None
        self.c1: float | None = None
        self.latencies: list[float] = []

    def first(self):
        if self.t0 is None:
            self.t0, self.c0 = time.perf_counter(), time.process_time()

    def last(self):
        self.t1, self.c1 = time.perf_counter(), time.process_time()

    def result(self, events: int, **extra) -> dict:
        wall = (self.t1 or time.perf_counter()) - (self.t0 or time.perf_counter())
        cpu = (self.c1 or time.process_time()) - (self.c0 or time.process_time())
        out = {
            "events": events,
            "seconds": round(wall, 3),
            "events_per_s": round(events / wall) if wall else None,
            "cpu_s_per_million": round(cpu / events * 1e6, 2) if events else None,
            "peak_rss_mib": round(_rss_mib(), 1),
        }
        if self.latencies:
            lat = sorted(self.latencies)
            out.update(
                {
                    f"latency_p{p}_ms": round(lat[min(len(lat) - 1, int(len(lat) * p / 100))] * 1000, 1)
                    for p in (50, 95, 99)
                }
            )
        out.update(extra)
        return out


async def raw_aiokafka(kafka: KafkaSettings, topic: str, n: int) -> dict:
    """The ceiling: aiokafka getmany + orjson decode + dict aggregation."""
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        topic,
        **kafka.client_kwargs(),
        group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        session_timeout_ms=10000,
        heartbeat_interval_ms=3000,
    )
    await c.start()
    m, got, agg = Meter(), 0, dict[str, int]()
    try:
        while got < n:
            batch = await c.getmany(timeout_ms=500, max_records=20000)
            if batch:
                m.first()
            for recs in batch.values():
                for r in recs:
                    a = orjson.loads(r.value)["action"]
                    agg[a] = agg.get(a, 0) + 1
                got += len(recs)
        m.last()
        await c.commit()
    finally:
        await c.stop()
    return m.result(got, checksum=sum(agg.values()))


def naive_app(kafka: KafkaSettings, name: str):
    """A Faust app as a newcomer would configure it, with the settings this broker needs (short group joins,
    ``../shared/README.md``) and the best measured ones (in-memory tables, producer linger); its datadir is
    the caller's to remove."""
    import faust

    return faust.App(
        f"{name}-{uuid.uuid4().hex[:6]}",
        broker=f"kafka://{kafka.bootstrap_servers}",
        broker_session_timeout=10,
        broker_heartbeat_interval=3,
        broker_rebalance_timeout=10,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="ioc-bench-naive-"),
        topic_disable_leader=True,
        producer_linger=0.05,
    )


async def naive_faust(kafka: KafkaSettings, topic: str, n: int, limit_s: float = 25.0) -> dict:
    """What a newcomer writes: a Faust agent iterating the stream, updating a table per event."""
    app = naive_app(kafka, "bench-naive")
    source = app.topic(topic, value_serializer="raw")
    counts = app.Table("counts", default=int, partitions=4)
    m = Meter()
    state = {"n": 0}
    done = asyncio.Event()

    @app.agent(source)
    async def count(stream):
        async for value in stream:
            m.first()
            counts[orjson.loads(value)["action"]] += 1
            state["n"] += 1
            if state["n"] >= n:
                m.last()
                done.set()

    await app.start()
    try:
        await asyncio.wait_for(done.wait(), limit_s)
    except TimeoutError:
        m.last()
    finally:
        m.last() if not done.is_set() else None
        await app.stop()
        shutil.rmtree(app.conf.datadir, ignore_errors=True)
    return m.result(state["n"], note="time-boxed" if state["n"] < n else "")


async def ioc_stream(
    kafka: KafkaSettings, topic: str, n: int, driver: str = "faust", durability: str | None = None
) -> dict:
    """IOC's stream base: ProcessorRuntime with the same aggregation, batch drain, state changelog.
    ``durability``: ``markers`` or ``transactions`` (default: the runtime's, ``auto``)."""
    from bench.processors import ActionCounts
    from shared.stream.runtime import ProcessorRuntime

    proc = ActionCounts(f"bench-ioc-{driver}-{uuid.uuid4().hex[:6]}")
    rt = ProcessorRuntime(proc, kafka, driver=driver, durability=durability)
    m = Meter()
    await rt.start()
    deadline = time.perf_counter() + 180  # a stuck group join must not hang the whole benchmark
    try:
        while rt.core.processed == 0 and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        m.first()
        while rt.core.processed < n and time.perf_counter() < deadline:
            await asyncio.sleep(0.005)
        m.last()
        states = {p: pr.state.snapshot() for p, pr in rt.core.partitions.items()}
    finally:
        await rt.stop()
    counts: dict[str, int] = {}
    for st in states.values():
        for k, v in st.items():
            if not k.startswith("changed:"):
                counts[k] = counts.get(k, 0) + v
    return m.result(
        rt.core.processed, checksum=sum(counts.values()), counts=counts, transactions=rt.core.transactional
    )


async def ioc_stream_until_idle(kafka: KafkaSettings, topic: str, group: str) -> dict:
    """One of several workers of one group: process until the assigned partitions are drained."""
    from bench.processors import ActionCounts
    from shared.stream.runtime import ProcessorRuntime

    rt = ProcessorRuntime(ActionCounts(group), kafka, driver="faust")
    m = Meter()
    await rt.start()
    started = time.perf_counter()
    try:
        last, idle_since = 0, started
        while True:
            await asyncio.sleep(0.01)
            p = rt.core.processed
            if p and m.t0 is None:
                m.first()
            if p != last:
                last, idle_since = p, time.perf_counter()
                m.last()
            elif p and time.perf_counter() - idle_since > 3:
                break
            elif not p and time.perf_counter() - started > 120:
                break
    finally:
        await rt.stop()
    return m.result(rt.core.processed, partitions=sorted(rt.core.partitions))


PATHS: dict[str, Callable[..., Coroutine[Any, Any, dict]]] = {
    "ioc_stream_until_idle": ioc_stream_until_idle,
    "raw_aiokafka": raw_aiokafka,
    "naive_faust": naive_faust,
    "ioc_stream": ioc_stream,
    # Per-domain paths (bench/domains.py dispatches on args["path"]).
    "domain": lambda kafka, **args: __import__("bench.domains", fromlist=["run_path"]).run_path(
        kafka, **args
    ),
}


def main() -> None:
    path, args = sys.argv[1], json.loads(sys.argv[2])
    kafka = KafkaSettings(bootstrap_servers=args.pop("bootstrap"))
    from shared.gc_tuning import tune_gc

    if args.pop("tune_gc", path.startswith("ioc")):
        tune_gc()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(PATHS[path](kafka, **args))
    text = json.dumps(result)
    out = os.environ.get(RESULT_FILE)
    if out:  # first, whole: a large result on stdout was once cut short (bench.worker.read_result)
        Path(out + ".part").write_text(text)
        os.replace(out + ".part", out)
    print("RESULT " + text, flush=True)


#: the environment variable naming the file a worker writes its result to (besides its ``RESULT`` line)
RESULT_FILE = "IOC_BENCH_RESULT_FILE"


def result_file() -> tuple[dict[str, str], Path]:
    """An environment for a worker process that writes its result to a fresh file, and that file."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix="ioc-bench-result-", suffix=".json")
    os.close(fd)
    os.unlink(name)
    return {**os.environ, RESULT_FILE: name}, Path(name)


def read_result(path: Path, stdout: str) -> dict | None:
    """A worker's result: its result file, or else its ``RESULT`` line on stdout (None if neither is whole).

    The file is what counts: a result of over 128 KiB (the meter totals of a large run) once reached the parent
    cut at 131,052 characters of its stdout line."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    finally:
        path.unlink(missing_ok=True)
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            try:
                return json.loads(line[7:])
            except ValueError:
                return None
    return None


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    main()
