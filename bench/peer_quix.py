"""The meter aggregation written idiomatically in Quix Streams, a peer of IOC's meter KPI processor.

Run by ``bench.peers.quix_meter`` in a virtualenv of its own (Quix pins another confluent-kafka than IOC's dev
dependencies), so this file imports nothing of IOC. Same topic content as the processor: every import-energy
reading is grouped by district (a repartition through Kafka, as ``group_by`` does) and summed into 15-minute and
daily tumbling windows by event time (the interval's start), with the reading count and the energy.

python bench/peer_quix.py BOOTSTRAP TOPIC EXPECTED STATE_DIR → one ``RESULT {json}`` line
"""

from __future__ import annotations

import json
import resource
import sys
import time
import uuid
from datetime import datetime, timedelta

ENERGY_IMPORT = "1-0:1.8.0"


def _epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from quixstreams import Application

    bootstrap, topic_name, expected, state_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        use_changelog_topics=True,
    )
    seen: dict[str, float] = {"n": 0, "t0": 0.0, "c0": 0.0, "t1": 0.0, "c1": 0.0}

    def start_of_interval(value, headers, timestamp, timestamp_type) -> int:
        return _epoch_ms(value["interval_end"]) - value["interval_seconds"] * 1000

    source = app.topic(topic_name, value_deserializer="json", timestamp_extractor=start_of_interval)
    sdf = app.dataframe(source)

    def count(value):
        if not seen["t0"]:
            seen["t0"], seen["c0"] = time.perf_counter(), time.process_time()
        seen["n"] += 1
        return value

    sdf = sdf.update(count)
    sdf = sdf.filter(lambda v: v["obis"] == ENERGY_IMPORT)
    sdf = sdf.group_by("district")

    def add(agg: dict, v: dict) -> dict:
        # the clock stops at the last window update, after the repartition's second pass
        seen["t1"], seen["c1"] = time.perf_counter(), time.process_time()
        agg["readings"] += 1
        agg["kwh"] += v.get("delta") or 0.0
        return agg

    def first(v: dict) -> dict:
        return add({"readings": 0, "kwh": 0.0}, v)

    # Grace: the head-end forwards a day late at worst; IOC's processor keeps windows revisable that long.
    sdf.tumbling_window(timedelta(minutes=15), grace_ms=timedelta(days=1)).reduce(add, first).current()
    sdf.tumbling_window(timedelta(days=1), grace_ms=timedelta(days=1)).reduce(add, first).current()
    app.run(timeout=5.0)
    wall, cpu, n = seen["t1"] - seen["t0"], seen["c1"] - seen["c0"], int(seen["n"])
    print(
        "RESULT "
        + json.dumps(
            {
                "events": n,
                "expected": expected,
                "seconds": round(wall, 3),
                "events_per_s": round(n / wall) if wall else None,
                "cpu_s_per_million": round(cpu / n * 1e6, 2) if n else None,
                "peak_rss_mib": round(_peak_rss_mib(), 1),
                "client": "quixstreams (confluent-kafka)",
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
