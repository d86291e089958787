"""The meter aggregation written idiomatically in Quix Streams, a peer of IOC's meter KPI processor.

Run by ``bench.peers.quix_meter`` in a virtualenv of its own (Quix pins another confluent-kafka than IOC's dev
dependencies), so this file imports nothing of IOC. Same topic content as the processor: every import-energy
reading is summed per district into 15-minute and daily tumbling windows by event time (the interval's start),
with the reading count and the energy. Two ways to key by district:

- ``group_by`` (the idiomatic one): ``sdf.group_by("district")`` re-keys every reading through a repartition
  topic, so each district's windows live in one partition;
- ``partition_local``: no repartition. Readings arrive keyed by meter id and co-partitioned, so every partition
  sums the districts of its own meters, and a district's total is the sum over partitions (what IOC's
  processor does, and why its KPIs are mergeable). Quix 3.28 has no public "re-key in place"; the one it uses
  itself when a topic has a single partition is ``StreamingDataFrame._single_partition_groupby(name, key)``
  (a transform that swaps the key, no topic), and that private method is what this mode calls.

Windows drop a reading whose window closed (grace passed); ``on_late`` counts them. After the run, the final
value of every 15-minute window (per partition, district and window start) is printed for the bench to check
against the topic's content and IOC's totals.

python bench/peer_quix.py BOOTSTRAP TOPIC EXPECTED STATE_DIR [group_by|partition_local [GRACE_S]] → ``RESULT {json}``
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
    from quixstreams import Application, message_context

    bootstrap, topic_name, expected, state_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    mode = sys.argv[5] if len(sys.argv) > 5 else "group_by"
    grace = timedelta(seconds=int(sys.argv[6])) if len(sys.argv) > 6 else timedelta(days=1)
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
    if mode == "partition_local":
        sdf = sdf._single_partition_groupby("district", "district")
    else:
        sdf = sdf.group_by("district")

    def add(agg: dict, v: dict) -> dict:
        # the clock stops at the last window update, after the repartition's second pass
        seen["t1"], seen["c1"] = time.perf_counter(), time.process_time()
        agg["readings"] += 1
        agg["kwh"] += v.get("delta") or 0.0
        return agg

    def first(v: dict) -> dict:
        return add({"readings": 0, "kwh": 0.0}, v)

    late = {"quarter": 0, "day": 0}

    def on_late(window: str):
        def count_late(*_args, **_kwargs) -> bool:
            late[window] += 1
            return False  # counted here, not logged per reading

        return count_late

    quarters: dict[tuple[int, str, int], list] = {}

    def keep_quarter(value, key, timestamp, headers) -> None:
        # The window's latest value (per source partition: with partition_local a district is in several)
        quarters[(message_context().partition, key, value["start"])] = [
            value["value"]["readings"],
            value["value"]["kwh"],
        ]

    # Grace (default): the head-end forwards a day late at worst; IOC's processor keeps windows revisable that
    # long.
    quarter = sdf.tumbling_window(timedelta(minutes=15), grace_ms=grace, on_late=on_late("quarter"))
    quarter.reduce(add, first).current().update(keep_quarter, metadata=True)
    day = sdf.tumbling_window(timedelta(days=1), grace_ms=grace, on_late=on_late("day"))
    day.reduce(add, first).current()
    app.run(timeout=5.0)
    totals: dict[str, list] = {}
    for (_, district, start), (readings, kwh) in quarters.items():
        t = totals.setdefault(f"{district}|{start}", [0, 0.0])
        t[0] += readings
        t[1] += kwh
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
                "mode": mode,
                "grace_s": int(grace.total_seconds()),
                "late_dropped_quarter": late["quarter"],
                "late_dropped_day": late["day"],
                "quarters": totals,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
