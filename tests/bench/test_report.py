"""docs/performance.md is generated from bench.json: the run's metadata and every path's figures reach it."""

from __future__ import annotations

from bench.report import render


def test_the_report_names_the_run_and_shows_each_path_with_its_ratio_and_pair_range():
    results = {
        "_run": {
            "date": "2026-12-07 03:00 UTC",
            "commit": "abc1234",
            "machine": "2 cores",
            "command": "make bench",
        },
        "raw_aiokafka": {"label": "baseline: raw", "events_per_s": 200_000, "cpu_s_per_million": 5.0},
        "meter": {
            "label": "meter KPI processor",
            "events_per_s": 120_000,
            "x_raw_same_topics": 0.61,
            "x_raw_same_topics_runs": [0.57, 0.61, 0.63],
        },
        "broken": {"label": "a path that failed", "error": "Traceback: boom"},
    }
    doc = render(results)
    assert "| measured | 2026-12-07 03:00 UTC |" in doc
    assert "`abc1234`" in doc
    # 120,000 / 200,000 = 0.60 of the raw ceiling; the pair range is the min and max of the three pairs
    assert "| meter KPI processor | 120,000 | 0.60 | 0.61 (0.57–0.63) |" in doc
    assert "| baseline: raw | 200,000 |  |" in doc
    assert "Traceback: boom" in doc
    assert "_run" not in doc


def test_the_report_says_whether_each_meter_aggregation_counted_the_same_readings_and_how_workers_scaled():
    exact = {
        "exact": True,
        "readings_counted": 110,
        "readings_expected": 110,
        "windows_wrong": 0,
        "windows_missing": 0,
    }
    results = {
        "meter_quix_peer": {
            "label": "Quix",
            "events_per_s": 2000,
            "late_dropped_quarter": 0,
            "totals": exact,
        },
        "scale": {
            "label": "meter, 1 → 2 workers",
            "scale": {
                "1": {
                    "events_per_s": 100,
                    "x_one_worker": 1.0,
                    "per_worker": [{"events": 110}],
                    "exact": True,
                },
                "2": {
                    "events_per_s": 150,
                    "x_one_worker": 1.5,
                    "per_worker": [{"events": 60}, {"events": 50}],
                    "exact": False,
                    "partition_overlap": ["1"],
                },
            },
        },
    }
    doc = render(results)
    assert "| Quix | yes | 110 / 110 | 0 / 0 | 0 |" in doc
    assert "| 2 | 150 | 1.50 |  | 60, 50 | NO (partitions held by several workers) |" in doc
