"""CPU of the dossier KPI processor's own steps per event, in this process, no broker: decoding and validating
fetched records, folding them into the partition state, emitting, and taking the changelog changes.

    python -m bench.dossier_processor_cpu [events] [batch]

The events: the ``make bench`` dossier workload (``bench.domain_processors.dossier_lifecycle_payloads``:
received, in processing, resolved, for ``events // 3`` dossiers), encoded as IOC publishes them, unpacked
into the bare records the stream runtime reads, spread over three partitions by key. Each partition is
processed in batches of ``batch`` records (decode, apply, changes) with one emit every ``emit_every`` batches
(the runtime emits every 0.5 s, not after every batch). Seven runs on fresh states under the stream
runtime's garbage collector settings; the minimum CPU per event of each step is printed.
"""

from __future__ import annotations

import sys
import time
import zlib
from datetime import UTC, datetime

from aiokafka.structs import TopicPartition

from bench.record_unpack_cpu import record_batch, unpack
from shared.kafka.records import BareRecords

PARTITIONS = 3


def fetched_batches(n: int) -> dict[TopicPartition, list]:
    """The workload as bare records per partition (keys spread by CRC-32, order kept per key)."""
    from bench.domain_processors import dossier_lifecycle_payloads
    from shared.contracts.base import event_type_of
    from shared.contracts.cloudevents import encode_many
    from shared.contracts.dossier import LIFECYCLE_TOPIC, DossierStatusChanged

    events = encode_many(
        event_type_of(DossierStatusChanged), dossier_lifecycle_payloads(n, prefix="cpu"), source="/ioc/bench"
    )
    by_partition: list[list] = [[] for _ in range(PARTITIONS)]
    for ev in events:
        by_partition[zlib.crc32(ev.key) % PARTITIONS].append(ev)
    return {
        TopicPartition(LIFECYCLE_TOPIC.name, p): unpack(BareRecords, record_batch(evs))
        for p, evs in enumerate(by_partition)
    }


def run_once(batches: dict[TopicPartition, list], batch: int, emit_every: int) -> dict[str, float]:
    from services.dossier.processors import DossierKpiProcessor
    from shared.contracts.cloudevents import decode_batch
    from shared.stream import State

    proc = DossierKpiProcessor()
    spent = dict.fromkeys(("decode + validate", "apply", "emit", "changelog changes"), 0.0)
    now = datetime.now(UTC)
    clock = time.process_time
    for tp, records in batches.items():
        state = State(tp.partition)
        for i, start in enumerate(range(0, len(records), batch)):
            t0 = clock()
            events, failed = decode_batch(records[start : start + batch], tp)
            t1 = clock()
            proc.apply_batch(events, state)
            t2 = clock()
            if i % emit_every == emit_every - 1 or start + batch >= len(records):
                list(proc.emit(state, now))
            t3 = clock()
            state.take_changes()
            t4 = clock()
            assert not failed
            spent["decode + validate"] += t1 - t0
            spent["apply"] += t2 - t1
            spent["emit"] += t3 - t2
            spent["changelog changes"] += t4 - t3
    return spent


def main() -> None:
    from shared.gc_tuning import tune_gc

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 60_000
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 2_000
    batches = fetched_batches(n)
    events = sum(len(r) for r in batches.values())
    tune_gc()  # the collector settings the stream runtime runs with (what it collects is part of the cost)
    best: dict[str, float] = {}
    for _ in range(7):
        for step, seconds in run_once(batches, batch, emit_every=10).items():
            best[step] = min(best.get(step, float("inf")), seconds / events * 1e6)
    for step, us in best.items():
        print(f"{step:20s} {us:6.2f} µs CPU per event")
    print(
        f"{'total':20s} {sum(best.values()):6.2f} µs CPU per event ({events:,} events, batches of {batch:,})"
    )


if __name__ == "__main__":
    main()
