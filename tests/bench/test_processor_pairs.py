"""How a KPI processor's row is made from its runs interleaved with its raw ceiling's."""

from __future__ import annotations

from bench.domains import processor_pairs


def run(eps: int, cpu: float = 10.0) -> dict:
    return {"events": 60_000, "events_per_s": eps, "cpu_s_per_million": cpu}


def test_the_ratio_is_the_median_of_the_pairs_not_of_the_medians():
    runs = [run(50_000, 16.0), run(60_000, 15.0), run(45_000, 17.0)]
    ceilings = [run(100_000, 7.0), run(150_000, 6.0), run(80_000, 8.0)]
    row = processor_pairs(runs, ceilings)
    # pair ratios 0.5, 0.4, 0.5625 → median 0.5; median runs 50,000 / 100,000
    assert row["x_raw_same_topics"] == 0.5
    assert row["x_raw_same_topics_runs"] == [0.5, 0.4, 0.56]
    assert (row["events_per_s"], row["cpu_s_per_million"]) == (50_000, 16.0)
    assert (row["raw_same_topics_events_per_s"], row["raw_same_topics_cpu_s_per_million"]) == (100_000, 7.0)
    assert row["runs_events_per_s"] == [50_000, 60_000, 45_000]
    assert row["raw_same_topics_runs_events_per_s"] == [100_000, 150_000, 80_000]
    assert row["pairs"] == 3


def test_an_even_count_takes_the_lower_middle_run_and_averages_the_middle_ratios():
    row = processor_pairs([run(40_000), run(60_000)], [run(100_000), run(100_000)])
    assert row["events_per_s"] == 40_000  # a run that happened, not an average of two
    assert row["x_raw_same_topics"] == 0.5


def test_a_failed_run_drops_its_pair():
    runs = [run(50_000), {"error": "processor crashed"}, run(54_000)]
    ceilings = [run(100_000), run(120_000), {"error": "no records"}]
    row = processor_pairs(runs, ceilings)
    assert row["pairs"] == 1
    assert row["x_raw_same_topics"] == 0.5
    assert row["x_raw_same_topics_runs"] == [0.5]


def test_with_no_pair_left_the_first_run_is_the_row_with_the_ceilings_error():
    row = processor_pairs([run(50_000)], [{"error": "x" * 600 + "timed out"}])
    assert row["events_per_s"] == 50_000
    assert "x_raw_same_topics" not in row
    assert row["raw_same_topics_error"].endswith("timed out") and len(row["raw_same_topics_error"]) == 500
