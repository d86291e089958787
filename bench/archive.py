"""The archive row of ``make bench`` (``python -m bench --only archive``).

Measured, each in a child process of its own (its own CPU time and peak memory):

- ``archive_from_broker``: the archiver consuming meter readings pre-produced on the benchmark's broker, from
  start to every record committed to Parquet (events/s, CPU seconds per million events: one process, one core);
- ``archive_cpu``: the same write path fed records in memory (no broker): the archiver's own ceiling;
- ``archive_month``: a generated month of one district's readings (``--meters`` meters, a reading every 15
  minutes) written in archiver-sized commits: bytes per reading on disk before and after compaction, the
  compaction's and the retention pass's cost, and the time of 30-day queries over it (DuckDB, median of 3).

python -m bench.archive PATH JSON_ARGS   → prints one ``RESULT {json}`` line
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.worker import Meter, _rss_mib

READING_TYPE = "ioc.meter.reading.recorded.v1"


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def reading_records(meters: int, days: int, start: datetime, *, district: str = "HN-BD"):
    """(topic, partition, offset, key, value, ts, headers) of a month of one district's readings, in time
    order: ``meters`` meters on 20 feeders and 10 communes, a cumulative register read every 15 minutes."""
    from shared.kafka.producer import partition_for

    offsets = [0] * 6
    common = [
        (b"ce_specversion", b"1.0"),
        ("ce_source", f"/hes/{district}".encode()),
        ("ce_type", READING_TYPE.encode()),
    ]
    keys = [f"MTR-{district}-{m:06d}".encode() for m in range(meters)]
    parts = [partition_for(k, 6) for k in keys]
    for step in range(days * 96):
        end = start + timedelta(minutes=15 * (step + 1))
        end_text = iso(end)
        ts = int(end.timestamp() * 1000)
        for m in range(meters):
            value = {
                "meter_id": keys[m].decode(),
                "obis": "1-0:1.8.0",
                "interval_end": end_text,
                "interval_seconds": 900,
                "value": round(1000.0 + m + step * (0.1 + (m % 7) * 0.05), 3),
                "unit": "kWh",
                "quality": "measured",
                "flags": [],
                "delta": round(0.1 + (m % 7) * 0.05, 3),
                "district": district,
                "commune": f"{district}-{m % 10:02d}",
                "feeder": f"F-{district}-{m % 20:02d}",
                "customers": 1,
            }
            p = parts[m]
            headers = [
                ("ce_id", f"{m}-{step}".encode()),
                ("ce_specversion", b"1.0"),
                common[1],
                common[2],
                ("ce_time", end_text.encode()),
                ("ce_dataschema", b"urn:ioc:schema:" + READING_TYPE.encode()),
                ("content-type", b"application/json"),
            ]
            yield ("ioc.meter.readings", p, offsets[p], keys[m], orjson.dumps(value), ts, headers)
            offsets[p] += 1


def _dir_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*.parquet")]
    return sum(p.stat().st_size for p in files), len(files)


def archive_cpu(args: dict) -> dict:
    from services.archive.store import ArchiveStore
    from services.archive.worker import write_records

    n = args.get("n", 200_000)
    meters = 2000
    records = list(reading_records(meters, days=1, start=datetime(2026, 11, 1, tzinfo=UTC)))[:n]
    root = Path(tempfile.mkdtemp(prefix="ioc-bench-archive-"))
    try:
        store = ArchiveStore(str(root))
        meter = Meter()
        meter.first()
        rows = 0
        for i in range(0, len(records), 100_000):  # archiver-sized commits
            rows += write_records(store, "bench", "e", records[i : i + 100_000])
        meter.last()
        size, files = _dir_bytes(root)
        return meter.result(rows, bytes_per_event=round(size / rows, 2), files=files)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _archive_from_broker(args: dict) -> dict:
    from aiokafka import TopicPartition

    from services.archive.settings import ArchiveSettings
    from services.archive.worker import Archiver
    from shared.config import KafkaSettings

    kafka = KafkaSettings(bootstrap_servers=args["bootstrap"], partitions_override=args.get("partitions"))
    ends = {TopicPartition("ioc.meter.readings", p): e for p, e in args["ends"].items()}
    root = Path(tempfile.mkdtemp(prefix="ioc-bench-archive-"))
    try:
        settings = ArchiveSettings(
            root=str(root), topics=["ioc.meter.readings"], flush_records=100_000, flush_seconds=5, kafka=kafka
        )
        archiver = Archiver(settings, kafka)
        await archiver.start()
        meter = Meter()
        meter.first()
        while not archiver.caught_up(ends):
            await asyncio.sleep(0.02)
        meter.last()
        await archiver.stop()
        size, files = _dir_bytes(root)
        return meter.result(
            archiver.archived, bytes_per_event=round(size / max(1, archiver.archived), 2), files=files
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def archive_month(args: dict) -> dict:
    from services.archive.query import connect
    from services.archive.settings import ArchiveSettings
    from services.archive.store import ArchiveStore
    from services.archive.worker import Archiver, write_records

    meters, days = args.get("meters", 500), args.get("days", 30)
    root = Path(tempfile.mkdtemp(prefix="ioc-bench-archive-month-"))
    out: dict = {"meters": meters, "days": days}
    try:
        store = ArchiveStore(str(root))
        batch, rows, t = [], 0, time.perf_counter()
        c = time.process_time()
        for rec in reading_records(meters, days, datetime(2026, 11, 1, tzinfo=UTC)):
            batch.append(rec)
            if len(batch) == 200_000:
                rows += write_records(store, "bench", "e", batch)
                batch = []
        if batch:
            rows += write_records(store, "bench", "e", batch)
        out["events"] = rows
        out["write_seconds"] = round(time.perf_counter() - t, 2)
        out["write_cpu_s_per_million"] = round((time.process_time() - c) / rows * 1e6, 2)
        size, files = _dir_bytes(root)
        out.update(bytes_before_compaction=size, files_before_compaction=files)
        out["bytes_per_reading_before_compaction"] = round(size / rows, 2)

        settings = ArchiveSettings(root=str(root), name="bench", compact_min_files=2)
        archiver = Archiver(settings)
        archiver.state = store.recover("bench")
        t = time.perf_counter()
        done = archiver.maintain(today=date(2026, 12, 2))
        out["compaction_seconds"] = round(time.perf_counter() - t, 2)
        out["files_merged"] = done["files_merged"]
        size, files = _dir_bytes(root)
        out.update(bytes_after_compaction=size, files_after_compaction=files)
        out["bytes_per_reading"] = round(size / rows, 2)

        con = connect(store)
        queries = {
            "feeder_daily_energy_30d": (
                "SELECT feeder, CAST(interval_end AS DATE) AS day, sum(delta) AS kwh FROM meter_readings "
                "WHERE date BETWEEN DATE '2026-11-01' AND DATE '2026-11-30' GROUP BY ALL"
            ),
            "one_meter_30d": (
                "SELECT interval_end, value, delta FROM meter_readings WHERE meter_id = 'MTR-HN-BD-000123' "
                "AND date BETWEEN DATE '2026-11-01' AND DATE '2026-11-30' ORDER BY interval_end"
            ),
            "district_completeness_30d": (
                "SELECT commune, count(*) * 1.0 / (count(DISTINCT meter_id) * 96 * 30) AS completeness "
                "FROM meter_readings WHERE date BETWEEN DATE '2026-11-01' AND DATE '2026-11-30' GROUP BY commune"
            ),
        }
        for name, sql in queries.items():
            times = []
            for _ in range(3):
                t = time.perf_counter()
                con.sql(sql).to_arrow_table()
                times.append(time.perf_counter() - t)
            out[f"query_{name}_ms"] = round(statistics.median(times) * 1000, 1)
        con.close()

        t = time.perf_counter()
        gone = store.expire("ioc.meter.readings", keep_days=0, today=date(2026, 12, 3))
        out["retention_expire_seconds"] = round(time.perf_counter() - t, 3)
        out["dates_expired"] = len(gone)
        out["peak_rss_mib"] = round(_rss_mib(), 1)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(bootstrap: str, console, *, n: int) -> dict:
    """The archive row: produce readings on the benchmark's broker, then each measurement in a child."""
    from bench.__main__ import ROOT  # noqa: F401  (same working directory as the other paths)

    results: dict[str, dict] = {}
    console.print("… archive: producing meter readings")
    ends = asyncio.run(_produce(bootstrap, n))
    for key, label, args, timeout in (
        (
            "archive_from_broker",
            "archiver: broker → Parquet (1 process)",
            {"bootstrap": bootstrap, "ends": ends, "partitions": 4},
            600,
        ),
        ("archive_cpu", "archiver write path, in memory (no broker)", {"n": n}, 600),
        ("archive_month", "archive: a month of one district's readings", {"meters": 500, "days": 30}, 1800),
    ):
        console.print(f"… {label}")
        results[key] = {"label": label, **_child(key, args, timeout)}
    return results


async def _produce(bootstrap: str, n: int) -> dict[int, int]:
    from aiokafka import AIOKafkaProducer

    from shared.config import KafkaSettings
    from shared.contracts import TOPICS
    from shared.kafka.admin import ensure_topics

    kafka = KafkaSettings(bootstrap_servers=bootstrap, partitions_override=4)
    await ensure_topics(kafka, [TOPICS["ioc.meter.readings"]])
    producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", linger_ms=0, max_batch_size=1024 * 1024)
    await producer.start()
    try:
        batches: dict[int, Any] = {}  # aiokafka BatchBuilders (aiokafka has no type information)
        futures, ends = [], {p: 0 for p in range(4)}
        records = reading_records(2000, days=1 + n // (2000 * 96), start=datetime(2026, 11, 1, tzinfo=UTC))
        for i, (_, _, _, key, value, ts, headers) in enumerate(records):
            if i >= n:
                break
            p = i % 4
            b = batches.get(p) or batches.setdefault(p, producer.create_batch())
            if b.append(key=key, value=value, timestamp=ts, headers=headers) is None:
                futures.append(await producer.send_batch(b, "ioc.meter.readings", partition=p))
                b = batches[p] = producer.create_batch()
                b.append(key=key, value=value, timestamp=ts, headers=headers)
            ends[p] += 1
        for p, b in batches.items():
            if b.record_count():
                futures.append(await producer.send_batch(b, "ioc.meter.readings", partition=p))
        for f in futures:
            await f
    finally:
        await producer.stop()
    return ends


def _child(path: str, args: dict, timeout: float) -> dict:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run(
        [sys.executable, "-m", "bench.archive", path, json.dumps(args)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (r.stderr or r.stdout)[-2000:]}


def main() -> None:
    path, args = sys.argv[1], json.loads(sys.argv[2])
    if path == "archive_from_broker":
        args["ends"] = {int(k): v for k, v in args["ends"].items()}
        result = asyncio.run(_archive_from_broker(args))
    elif path == "archive_cpu":
        result = archive_cpu(args)
    elif path == "archive_month":
        result = archive_month(args)
    else:
        raise SystemExit(f"unknown path {path}")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
