"""In-process: what the meter service keeps per meter for its register state, and the validation CPU per reading.

    python -m bench.meter_state_memory [--meters 200000] [--store table|dict] [--tracemalloc]

Registers ``--meters`` meters in a registry table (ids parsed from JSON, as the API does), then validates two
quarter hours of readings (one energy-import reading per meter each, 10,000-reading request bodies parsed as the
service parses them) into ``--store``: ``table`` (:class:`RegisterTable`, the service's) or ``dict`` (a plain
dict of tuples, as before). Prints the RSS growth per meter over each phase and, with ``--tracemalloc``, the
bytes Python's allocator still holds per meter (slow: tracing multiplies the CPU). No I/O.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from datetime import UTC, date, datetime

import orjson
import psutil

from services.meter.domain import Limits, MeterInfo, MeterTable, RegisterTable, validate_readings
from services.meter.service import READINGS

QUARTER = 900
REQUEST = 10_000


def _held() -> int:
    gc.collect()
    if tracemalloc.is_tracing():
        return tracemalloc.get_traced_memory()[0]
    return psutil.Process().memory_info().rss


def _bodies(meters: int, end: int, base: float) -> list[bytes]:
    iso = datetime.fromtimestamp(end, UTC).isoformat().replace("+00:00", "Z")
    return [
        orjson.dumps(
            {
                "items": [
                    {
                        "meter_id": f"U12345-{j:07d}",
                        "obis": "1-0:1.8.0",
                        "interval_end": iso,
                        "value": base + 0.25 * (j % 8),
                        "unit": "kWh",
                    }
                    for j in range(lo, min(meters, lo + REQUEST))
                ]
            }
        )
        for lo in range(0, meters, REQUEST)
    ]


def run(meters: int, store: str, trace: bool) -> dict:
    now = datetime.now(UTC)
    end = int(now.timestamp()) // QUARTER * QUARTER - QUARTER
    primes, bursts = _bodies(meters, end - QUARTER, 1000.0), _bodies(meters, end, 1001.0)
    if trace:
        tracemalloc.start()
    start = _held()
    table = MeterTable()
    for lo in range(0, meters, REQUEST):
        ids = orjson.loads(orjson.dumps([f"U12345-{j:07d}" for j in range(lo, min(meters, lo + REQUEST))]))
        for mid in ids:
            table.put(
                MeterInfo(
                    mid, 1, "00004", "00004", f"F-00004-{len(table) % 4}", None, date(2020, 1, 1), QUARTER
                )
            )
    registered = _held()
    registers = RegisterTable(table) if store == "table" else {}
    cpu = 0.0
    for bodies in (primes, bursts):
        for raw in bodies:
            valid, errors = READINGS.parse(raw, limit=REQUEST, noun="readings")
            t0 = time.process_time()
            out = validate_readings(valid, table, registers, now, Limits())
            cpu += time.process_time() - t0
            assert not out.errors and not errors, out.errors[:3]
            del valid, out
    del primes, bursts
    after = _held()
    if trace:
        tracemalloc.stop()
    return {
        "store": store,
        "meters": meters,
        "measure": "tracemalloc" if trace else "rss",
        "registry_bytes_per_meter": round((registered - start) / meters),
        "registers_bytes_per_meter": round((after - registered) / meters),
        "total_bytes_per_meter": round((after - start) / meters),
        "validation_cpu_us_per_reading": round(cpu / (2 * meters) * 1e6, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=200_000)
    ap.add_argument("--store", choices=("table", "dict"), default="table")
    ap.add_argument("--tracemalloc", action="store_true")
    opts = ap.parse_args()
    print(orjson.dumps(run(opts.meters, opts.store, opts.tracemalloc)).decode())


if __name__ == "__main__":
    main()
