"""CPU to turn one fetched batch into Python records: aiokafka's ``ConsumerRecord`` path against the bare records
the stream runtime reads (``shared/kafka/records.py``), on the same bytes, in this process, no broker.

    python -m bench.record_unpack_cpu [records]

The batch: ``records`` meter readings encoded as IOC publishes them (CloudEvents headers, the contract's
JSON payload, keyed by meter id), one uncompressed v2 record batch, as a fetch answer holds it. Each path is
timed 7 times, interleaved, under the stream runtime's garbage collector settings; the minimum CPU per
record is printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable

from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from shared.contracts.cloudevents import EncodedEvent
from shared.kafka.records import BareRecords

TP = TopicPartition("ioc.meter.readings", 0)


def record_batch(events: Iterable[EncodedEvent]) -> bytes:
    """``events`` as one uncompressed v2 record batch from offset 0, the bytes a fetch answer holds."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 30,
    )
    for i, event in enumerate(events):
        builder.append(
            i, timestamp=1_795_000_000_000 + i, key=event.key, value=event.value, headers=list(event.headers)
        )
    return bytes(builder.build())


def fetched_bytes(n: int) -> bytes:
    from shared.contracts.base import event_type_of
    from shared.contracts.cloudevents import encode
    from shared.contracts.meter import MeterReadingRecorded

    etype = event_type_of(MeterReadingRecorded)
    return record_batch(
        encode(
            etype,
            {**etype.examples[0], "meter_id": f"MTR-{i % 20_000:06d}", "value": 12345.678 + i},
            source="/ioc/meter",
        )
        for i in range(n)
    )


def unpack(cls: type, data: bytes) -> list:
    return list(iter(cls(TP, MemoryRecords(data), [], 0, None, None, False, 0)))


def main() -> None:
    from shared.gc_tuning import tune_gc

    tune_gc()  # the collector settings the stream runtime runs with (what it collects is part of the cost)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    data = fetched_bytes(n)
    paths = {"aiokafka ConsumerRecord": PartitionRecords, "bare records (IOC)": BareRecords}
    assert [r.offset for r in unpack(BareRecords, data)] == [r.offset for r in unpack(PartitionRecords, data)]
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(7):
        for name, cls in paths.items():
            started = time.process_time()
            unpack(cls, data)
            best[name] = min(best[name], (time.process_time() - started) / n * 1e6)
    base = best["aiokafka ConsumerRecord"]
    for name, us in best.items():
        print(f"{name:26s} {us:6.2f} µs CPU per record  ({us / base:.2f}×)")


if __name__ == "__main__":
    main()
