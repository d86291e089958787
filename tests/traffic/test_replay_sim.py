"""Unit tests of the replay CSV reader and the simulator's controller model."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from services.traffic.domain import KNOWN_CODES, MeasureParams, MeasuresEngine, config_from_registry
from services.traffic.replay import read_hires_csv
from services.traffic.simulator import build_intersections
from shared.areas import hanoi


def test_reads_atspm_and_udot_layouts_local_time_sorted(tmp_path):
    atspm = tmp_path / "atspm.csv"
    atspm.write_text(
        "TimeStamp,DeviceId,EventId,Parameter\n2024-05-01 08:00:01.5,C1,82,3\n2024-05-01 08:00:00.0,C1,1,2\n"
    )
    udot = tmp_path / "udot.csv"
    udot.write_text("Timestamp,SignalID,EventCode,EventParam\n5/1/2024 8:00:00.1,7115,1,2\n")
    rows = read_hires_csv(atspm)
    assert [(r[1], r[2], r[3]) for r in rows] == [("C1", 1, 2), ("C1", 82, 3)]
    assert rows[0][0] == datetime(2024, 5, 1, 1, 0, tzinfo=UTC)  # 08:00 in Hanoi (UTC+7)
    (row,) = read_hires_csv(udot, tz="UTC")
    assert row == (datetime(2024, 5, 1, 8, 0, 0, 100000, tzinfo=UTC), "7115", 1, 2)


def test_simulated_controller_logs_ordered_known_events_with_measures():
    start = datetime(2024, 5, 1, 8, 0, tzinfo=UTC).timestamp()
    items, sims = build_intersections(0.01, random.Random(3), start)
    # 10 intersections per top area at scale 1: 0.1 × 30 = 3 (2019), 0.1 × 126 = 12.6 → 13 (2025), one per area
    assert len(items) == {30: 3, 126: 13}[len(hanoi().top_areas)]
    assert len({i["district"] for i in items}) == len(items)
    sim = sims[0]
    events = []
    for k in range(1, 1800):
        events += sim.events_until(start + k)
    assert events == sorted(events)
    assert all(code in KNOWN_CODES for _, code, _ in events)
    engine = MeasuresEngine({}, config_from_registry(items[0]), MeasureParams())
    for t, code, param in events:
        engine.process(round(t * 1000), code, param)
    engine.close_bins(through_ms=2**62)
    closed = engine.d["closed"]
    assert closed and closed[0]["bin_start"] == round(
        (datetime(2024, 5, 1, 8, 0, tzinfo=UTC) + timedelta(0)).timestamp() * 1000
    )
    p2 = next(m for m in closed[0]["phases"] if m["phase"] == 2)
    assert p2["cycles"] > 0 and p2["arrivals"] > 0 and 0 < p2["pct_green"] < 1
