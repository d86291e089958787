"""Producer compression for meter readings: bytes per reading on the topic and CPU per reading, per codec.

    python -m bench.producer_compression [readings]

Readings as the meter service publishes them (``services.meter.publishing.reading_events``: CloudEvents headers,
the contract's JSON payload, keyed by meter id) for 20,000 meters, in requests of 1,000 (what a head-end system
posts), through IOC's own ``EventPublisher`` with each codec, to a fresh 12-partition topic:

- on the real Apache Kafka cluster (3 KRaft nodes, RF 3, ``shared/embedded/apache_kafka.py``): the bytes of
  the topic's log segments on one node (one replica) per reading;
- on the embedded Tansu broker: that it accepts the codec and a consumer reads every reading back;
- producer CPU (this process, publishing) and consumer CPU (aiokafka ``getmany``, decompression included) per
  reading. One row per codec; results also in ``bench-results/producer-compression.json``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CODECS = ("none", "lz4", "zstd", "gzip", "snappy")
PARTITIONS = 12
REQUEST = 1000


def readings(n: int) -> list:
    from datetime import UTC, datetime, timedelta

    from services.meter.publishing import reading_events

    meters = 20_000
    start = datetime(2026, 12, 1, tzinfo=UTC)
    payloads = []
    for i in range(n):
        m = i % meters
        end = start + timedelta(minutes=15 * (i // meters + 1))
        payloads.append(
            {
                "meter_id": f"MTR-{m:06d}",
                "obis": "1-0:1.8.0",
                "interval_end": end.isoformat().replace("+00:00", "Z"),
                "interval_seconds": 900,
                "value": round(10_000 + m * 0.37 + (i // meters) * 0.25, 3),
                "unit": "kWh",
                "quality": "measured",
                "flags": [],
                "delta": 0.25,
                "district": f"D{m % 30:02d}",
                "commune": f"D{m % 30:02d}-{m % 19:02d}",
                "feeder": f"F-{m // 40:04d}",
                "customers": 1 + m % 3,
            }
        )
    return reading_events(payloads, "/ioc/meter")


async def run_codec(kafka, codec: str, events: list, topic: str) -> dict:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared.contracts.base import TopicSpec
    from shared.kafka import EventPublisher
    from shared.kafka.admin import ensure_topics

    settings = kafka.model_copy(update={"compression_type": codec})
    spec = TopicSpec(topic, PARTITIONS, "meter_id", "bench", "compression bench", retention_ms=None)
    await ensure_topics(settings, [spec])
    events = [retopic(e, topic) for e in events]
    publisher = EventPublisher(settings, client_id=f"bench-{codec}")
    await publisher.start()
    cpu = time.process_time()
    for i in range(0, len(events), REQUEST):
        await publisher.publish(events[i : i + REQUEST])
    produce_cpu = time.process_time() - cpu
    await publisher.stop()

    consumer = AIOKafkaConsumer(**settings.client_kwargs(), group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    target = sum(ends.values())
    got = 0
    cpu = time.process_time()
    async with asyncio.timeout(120):
        while got < len(events):
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            got += sum(len(v) for v in batch.values())
    consume_cpu = time.process_time() - cpu
    await consumer.stop()
    return {
        "codec": codec,
        "readings": len(events),
        "read_back": got,
        "end_offsets": target,
        "producer_cpu_us_per_reading": round(produce_cpu / len(events) * 1e6, 2),
        "consumer_cpu_us_per_reading": round(consume_cpu / len(events) * 1e6, 2),
    }


async def on_broker(kafka, data_dir: str, codecs: list[str], n: int = 100_000) -> dict:
    """``make bench``'s row (``python -m bench.worker domain``): bytes per reading in the log segments of a
    single-node Apache Kafka whose data directory is ``data_dir``, for each codec, and IOC's default codec."""
    from shared.config import KafkaSettings

    events = readings(n)
    rows = []
    for codec in codecs:
        topic = f"bench.compression.{codec}.{int(time.time())}"
        row = await run_codec(kafka, codec, events, topic)
        await asyncio.sleep(1)  # the last batch reaches the segment file
        row["disk_bytes_per_reading_one_replica"] = round(topic_bytes(Path(data_dir), topic) / n, 1)
        rows.append(row)
    return {
        "readings": n,
        "default_codec": KafkaSettings.model_fields["compression_type"].default,
        "codecs": rows,
    }


def retopic(event, topic: str):
    from shared.contracts.cloudevents import EncodedEvent

    return EncodedEvent(topic, event.key, event.value, event.headers, event.id, event.type)


def topic_bytes(node_data_dir: Path, topic: str) -> int:
    return sum(f.stat().st_size for f in node_data_dir.glob(f"{topic}-*/*.log"))


async def main(n: int) -> None:
    from shared.config import KafkaSettings
    from shared.embedded import EmbeddedBroker
    from shared.embedded.apache_kafka import KafkaCluster, KafkaUnavailable

    events = readings(n)
    raw = sum(len(e.key) + len(e.value) + sum(len(k) + len(v) for k, v in e.headers) for e in events) / n
    rows: dict = {"raw_record_bytes_per_reading": round(raw, 1), "apache_kafka": [], "tansu": []}
    work = Path(tempfile.mkdtemp(prefix="ioc-bench-compression-"))
    cluster = None
    try:
        cluster = KafkaCluster(work / "kafka").start()
    except KafkaUnavailable as exc:
        print(f"Apache Kafka not available ({exc}); Tansu only", file=sys.stderr)
    try:
        if cluster is not None:
            kafka = cluster.kafka_settings()
            for codec in CODECS:
                topic = f"bench.compression.{codec}.{int(time.time())}"
                row = await run_codec(kafka, codec, events, topic)
                await asyncio.sleep(1)
                row["disk_bytes_per_reading_one_replica"] = round(
                    topic_bytes(cluster.nodes[1].data_dir, topic) / n, 1
                )
                rows["apache_kafka"].append(row)
                print(json.dumps(row), flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
    broker = EmbeddedBroker(log_file=work / "tansu.log").start()
    try:
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers)
        for codec in CODECS:
            try:
                row = await run_codec(kafka, codec, events, f"bench.compression.{codec}")
            except Exception as exc:  # a codec the embedded broker refuses is a finding, not a crash
                row = {"codec": codec, "error": f"{type(exc).__name__}: {exc}"}
            rows["tansu"].append(row)
            print(json.dumps(row), flush=True)
    finally:
        broker.stop()
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "producer-compression.json").write_text(json.dumps(rows, indent=2))
    print(f"raw record bytes per reading (key + value + headers): {raw:.1f}")
    print(f"{'codec':8} {'disk B/reading':>15} {'produce µs':>11} {'consume µs':>11}   tansu")
    for row in rows["apache_kafka"] or rows["tansu"]:
        t = next(r for r in rows["tansu"] if r["codec"] == row["codec"])
        print(
            f"{row['codec']:8} {row.get('disk_bytes_per_reading_one_replica', '-'):>15} "
            f"{row.get('producer_cpu_us_per_reading', '-'):>11} {row.get('consumer_cpu_us_per_reading', '-'):>11}"
            f"   {'ok' if t.get('read_back') == n else t.get('error', t)}"
        )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
