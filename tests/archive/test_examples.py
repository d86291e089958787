"""The worked examples of docs/archive.md, on archives written without a broker (the archiver's own write
path, fed records as the broker would give them), read back with SQL.

- a feeder's readings for a month;
- an agency's dossier timelines (the events carry no personal data, and neither does the archive);
- an intersection's 15-minute measures recomputed from archived raw hi-res events with the traffic engine.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from services.archive.query import connect
from services.archive.schema import topic_schema
from services.archive.store import ArchiveStore
from services.archive.worker import write_records
from services.traffic.domain import MeasureParams, MeasuresEngine, config_from_registry, to_ms
from shared.contracts import EVENT_TYPES
from shared.contracts.cloudevents import encode
from tests.archive.helpers import READING, STATUS, as_records, iso

ROOT = Path(__file__).resolve().parents[2]
NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)


def month_of_readings() -> list:
    """November 2026 of one district: 3 feeders x 4 meters, a reading every 15 minutes, 0.25 kWh each."""
    events = []
    for step in range(30 * 96):
        end = NOVEMBER + timedelta(minutes=15 * (step + 1))
        for m in range(12):
            payload = {
                **READING.examples[0],
                "meter_id": f"MTR-BD-{m:03d}",
                "feeder": f"F-BD-{m // 4 + 1}",
                "district": "HN-BD",
                "commune": f"HN-BD-0{m % 2 + 1}",
                "interval_end": iso(end),
                "value": 1000.0 + 0.25 * (step + 1),
                "delta": 0.25,
            }
            events.append(encode(READING, payload, source="/hes/bd", id=f"r-{m}-{step}", time=iso(end)))
    return events


def test_a_feeders_readings_for_a_month(tmp_path):
    store = ArchiveStore(str(tmp_path))
    assert write_records(store, "examples", "e1", as_records(month_of_readings())) == 12 * 30 * 96
    con = connect(store)
    rows, kwh, first, last = con.sql(
        """
        SELECT count(*), sum(delta), min(interval_end), max(interval_end)
        FROM meter_readings
        WHERE feeder = 'F-BD-2'
          AND interval_end > TIMESTAMPTZ '2026-11-01 00:00:00+00' AND interval_end <= TIMESTAMPTZ '2026-12-01 00:00:00+00'
        """
    ).fetchall()[0]
    # F-BD-2 has 4 meters (m = 4..7); 30 days x 96 quarter-hours each = 11,520 readings of 0.25 kWh = 2,880 kWh
    assert rows == 4 * 30 * 96 == 11_520
    assert kwh == 11_520 * 0.25 == 2_880.0
    assert first == datetime(2026, 11, 1, 0, 15, tzinfo=UTC) and last == datetime(2026, 12, 1, tzinfo=UTC)
    # one directory per UTC date of the event time: the readings ending at 2026-12-01T00:00Z land in December
    assert [d.isoformat() for d in store.dates("ioc.meter.readings")][:2] == ["2026-11-01", "2026-11-02"]
    assert len(store.dates("ioc.meter.readings")) == 31


def test_the_cli_and_a_second_engine_read_the_same_archive(tmp_path):
    store = ArchiveStore(str(tmp_path))
    write_records(store, "examples", "e1", as_records(month_of_readings()[: 12 * 96]))
    # DuckDB alone, no IOC code: the Hive layout is all it needs
    plain = duckdb.sql(
        f"SELECT count(*) AS n, count(DISTINCT meter_id) AS meters FROM read_parquet("
        f"'{tmp_path}/topic=ioc.meter.readings/date=*/*.parquet', hive_partitioning = true, union_by_name = true)"
    ).fetchall()[0]
    assert plain == (12 * 96, 12)
    # ioc query (the CLI) gives the same
    out = subprocess.run(
        [sys.executable, "-m", "ioc", "query", "--format", "csv", "SELECT count(*) AS n FROM meter_readings"],
        cwd=ROOT,
        env={"IOC_ARCHIVE_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.splitlines() == ['"n"', str(12 * 96)]


def test_an_agencys_dossier_timelines_without_personal_data(tmp_path):
    base = {**STATUS.examples[0], "agency_code": "UBND-BD", "district": "BD"}
    steps = [(2, "receive", "received"), (4, "process", "in_progress"), (9, "return", "returned")]
    events = []
    for d in range(3):
        code = f"H26.01-261102-{d:04d}"
        for i, (status, action, name) in enumerate(steps[: d + 1]):
            at = iso(datetime(2026, 11, 2, 2, tzinfo=UTC) + timedelta(days=i, hours=d))
            payload = {
                **base,
                "dossier_code": code,
                "status": status,
                "action": action,
                "status_name": name,
                "at": at,
            }
            events.append(encode(STATUS, payload, source="/dossier", time=at))
    other = {**base, "dossier_code": "H26.01-261102-9999", "agency_code": "UBND-HK", "at": iso(NOVEMBER)}
    events.append(encode(STATUS, other, source="/dossier", time=iso(NOVEMBER)))
    store = ArchiveStore(str(tmp_path))
    write_records(store, "examples", "e1", as_records(events))
    timelines = (
        connect(store)
        .sql(
            """
        SELECT dossier_code, list(status ORDER BY "at") AS statuses
        FROM dossier_lifecycle
        WHERE agency_code = 'UBND-BD' AND ce_type = 'ioc.dossier.status.changed.v1'
        GROUP BY dossier_code ORDER BY dossier_code
        """
        )
        .fetchall()
    )
    assert timelines == [
        ("H26.01-261102-0000", [2]),
        ("H26.01-261102-0001", [2, 4]),
        ("H26.01-261102-0002", [2, 4, 9]),
    ]
    # the archive's columns are the envelope and the contract's fields: nothing about the applicant
    columns = set(topic_schema("ioc.dossier.lifecycle").names)
    contract = {
        f for et in EVENT_TYPES.values() if et.topic == "ioc.dossier.lifecycle" for f in et.model.model_fields
    }
    assert columns - contract <= {
        *("ce_id", "ce_source", "ce_type", "ce_specversion", "ce_time", "ce_subject", "ce_dataschema"),
        *("kafka_key", "kafka_partition", "kafka_offset", "kafka_timestamp", "broker_epoch", "data_json"),
    }
    assert not {
        c for c in columns if any(w in c for w in ("name_of", "applicant", "phone", "email", "citizen"))
    }


HIRES = EVENT_TYPES["ioc.traffic.hires.logged.v1"]
REGISTRATION = {
    "intersection_id": "INT-BD-7",
    "controller_id": "CTL-BD-7",
    "phases": [2],
    "detectors": [{"channel": 5, "phase": 2, "function": "count"}],
}


def cycle(t0: datetime) -> list[tuple[datetime, int, int]]:
    """One 60 s cycle of phase 2 (Indiana codes): green at 0 s, vehicles at 10, 20 and 45 s on count detector
    channel 5 (82 on, 81 off a second later), gap-out and yellow at 30 s, red clearance 34-36 s."""
    s = lambda x: t0 + timedelta(seconds=x)  # noqa: E731
    return [
        (s(0), 1, 2),
        (s(10), 82, 5),
        (s(11), 81, 5),
        (s(20), 82, 5),
        (s(21), 81, 5),
        (s(30), 4, 2),
        (s(30), 8, 2),
        (s(34), 10, 2),
        (s(36), 11, 2),
        (s(45), 82, 5),
        (s(46), 81, 5),
    ]


def measures(events: list[tuple[int, int, int]], through_ms: int) -> list[dict]:
    engine = MeasuresEngine({}, config_from_registry(REGISTRATION), MeasureParams())
    for t, code, param in events:
        engine.process(t, code, param)
    engine.close_bins(through_ms)
    return engine.d["closed"]


def test_an_intersections_15_minute_measures_recomputed_from_archived_hires_events(tmp_path):
    start, days = datetime(2026, 11, 10, tzinfo=UTC), 2
    original: list[tuple[int, int, int]] = []
    records = []
    for chunk in range(days * 144):  # a record per 10 minutes of the controller's log, as gateways send them
        t0 = start + timedelta(minutes=10 * chunk)
        log = [e for c in range(10) for e in cycle(t0 + timedelta(minutes=c))]
        original += [(to_ms(t), code, param) for t, code, param in log]
        payload = {
            "controller_id": "CTL-BD-7",
            "intersection_id": "INT-BD-7",
            "district": "BD",
            "events": [{"t": iso(t), "code": code, "param": param} for t, code, param in log],
        }
        records.append(encode(HIRES, payload, source="/gateway/bd", time=iso(t0)))
    store = ArchiveStore(str(tmp_path))
    write_records(store, "examples", "e1", as_records(records))

    archived = (
        connect(store)
        .sql(
            """
        SELECT e.t, e.code, e.param
        FROM (SELECT unnest(events) AS e, ce_time FROM traffic_events WHERE intersection_id = 'INT-BD-7'
              AND ce_time >= TIMESTAMPTZ '2026-11-10 00:00:00+00' AND ce_time < TIMESTAMPTZ '2026-11-12 00:00:00+00')
        """
        )
        .fetchall()
    )
    archived_events = sorted(((to_ms(t), code, param) for t, code, param in archived), key=lambda e: e[0])
    assert len(archived_events) == len(original) == days * 1440 * 11
    # typed columns all the way down (a list of structs), nothing left as raw JSON
    assert connect(store).sql(
        "SELECT count(*) FROM traffic_events WHERE data_json IS NOT NULL"
    ).fetchall() == [(0,)]
    end_ms = to_ms(start + timedelta(days=days))
    recomputed = measures(archived_events, end_ms)
    assert recomputed == measures(sorted(original, key=lambda e: e[0]), end_ms)
    # By hand from the cycle (ATSPM, domain-notes §1): a 15-minute bin holds 15 cycles; volume counts detector-on
    # events (code 82) of count/advance detectors: 3 a cycle = 45; one gap-out (code 4) a cycle = 15.
    assert len(recomputed) == days * 96
    for b in recomputed:
        (phase,) = b["phases"]
        assert (phase["phase"], phase["volume"], phase["gap_outs"]) == (2, 45, 15)
        assert phase["detector_volumes"] == {"5": 45}
