"""Plain Parquet against an Iceberg table for the same archive commits (docs/archive.md, "Why plain Parquet").

Not part of ``make bench``: pyiceberg is not a dependency. Run it where it is installed::

    pip install 'pyiceberg[sql-sqlite,pyiceberg-core]'   # into a scratch venv
    python -m bench.archive_iceberg [METERS]

Both sides get the same tables (the archiver's, one per commit of 100,000 readings of a generated month);
Iceberg's table is partitioned by day of ``ce_time`` in a SQL catalog (SQLite here; PostgreSQL in production
would cost a round trip more per commit). Prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.archive import reading_records


def main() -> None:
    from pyiceberg.catalog.sql import SqlCatalog
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform

    from services.archive.query import connect
    from services.archive.store import ArchiveStore
    from services.archive.tables import TopicBuffer
    from services.archive.worker import commit_tables

    meters = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    root = Path(tempfile.mkdtemp(prefix="ioc-bench-iceberg-"))
    out: dict = {"meters": meters, "days": 30}
    try:
        tables = []
        buf = TopicBuffer("ioc.meter.readings", "e")
        for _topic, p, o, key, value, ts, headers in reading_records(
            meters, 30, datetime(2026, 11, 1, tzinfo=UTC)
        ):
            buf.add(p, o, key, value, ts, headers)
            if len(buf) == 100_000:
                tables.append(buf.take())
        if len(buf):
            tables.append(buf.take())
        rows = sum(t.num_rows for t, _ in tables)
        out["events"], out["commits"] = rows, len(tables)

        store = ArchiveStore(str(root / "plain"))
        state, times = store.recover("b"), []
        for table, ranges in tables:
            t = time.perf_counter()
            state, _ = commit_tables(store, "b", state, "e", [("ioc.meter.readings", table, ranges)])
            times.append(time.perf_counter() - t)
        files = list((root / "plain").rglob("*"))
        out["plain_commit_ms_median"] = round(statistics.median(times) * 1000, 1)
        out["plain_files"] = sum(1 for f in files if f.is_file())
        out["plain_bytes"] = sum(f.stat().st_size for f in files if f.is_file())
        con = connect(store)
        t = time.perf_counter()
        con.sql("SELECT feeder, sum(delta) FROM meter_readings GROUP BY ALL").to_arrow_table()
        out["plain_query_feeder_energy_ms"] = round((time.perf_counter() - t) * 1000, 1)

        catalog = SqlCatalog(
            "bench", uri=f"sqlite:///{root}/catalog.db", warehouse=f"file://{root}/warehouse"
        )
        catalog.create_namespace("ioc")
        schema = tables[0][0].schema
        iceberg = catalog.create_table("ioc.meter_readings", schema=schema)
        field_id = iceberg.schema().find_field("ce_time").field_id
        with iceberg.update_spec() as spec:
            spec.add_field("ce_time", DayTransform(), "date")
        _ = (PartitionField, PartitionSpec, field_id)
        times = []
        for table, _ranges in tables:
            t = time.perf_counter()
            iceberg.append(table.sort_by([("kafka_key", "ascending"), ("ce_time", "ascending")]))
            times.append(time.perf_counter() - t)
        files = [f for f in (root / "warehouse").rglob("*") if f.is_file()]
        out["iceberg_commit_ms_median"] = round(statistics.median(times) * 1000, 1)
        out["iceberg_data_files"] = sum(1 for f in files if f.suffix == ".parquet")
        out["iceberg_metadata_files"] = sum(1 for f in files if f.suffix != ".parquet")
        out["iceberg_bytes"] = sum(f.stat().st_size for f in files)
        out["iceberg_metadata_bytes"] = sum(f.stat().st_size for f in files if f.suffix != ".parquet")
        t = time.perf_counter()
        scanned = (
            catalog.load_table("ioc.meter_readings").scan(selected_fields=("feeder", "delta")).to_arrow()
        )
        scanned.group_by("feeder").aggregate([("delta", "sum")])
        out["iceberg_query_feeder_energy_ms"] = round((time.perf_counter() - t) * 1000, 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
