"""How the bench checks that every meter aggregation (IOC's, Quix's, Kafka Streams') counted the same readings."""

from __future__ import annotations

from bench.meter_rows import check_totals, combine_workers, merge_partitions
from bench.meter_totals import compare, expected_quarters, ioc_quarters


def reading(district: str, end: str, delta: float | None, *, obis: str = "1-0:1.8.0", quality="measured"):
    return {
        "district": district,
        "obis": obis,
        "interval_end": end,
        "interval_seconds": 900,
        "delta": delta,
        "quality": quality,
        "value": 1000.0,
    }


READINGS = [
    # 2026-12-07T01:00:00Z ends the interval that starts 00:45:00Z = 1796604300 s (2026-12-07T00:00Z is 20,794 days × 86,400 s = 1,796,601,600; + 45 min)
    reading("HK", "2026-12-07T01:00:00Z", 0.25),
    reading("HK", "2026-12-07T01:00:00Z", 0.5),
    reading("HK", "2026-12-07T01:00:00Z", None, quality="estimated"),  # counted, no energy, not valid
    reading("HK", "2026-12-07T01:00:00Z", 0.125, quality="estimated"),  # not valid, its energy counts
    reading("BD", "2026-12-07T01:15:00Z", 1.0),  # its own window: starts 01:00:00Z
    reading("BD", "2026-12-07T01:15:00Z", 9.0, obis="1-0:2.8.0"),  # export energy: not this aggregation
]


def test_reference_totals_are_per_district_and_interval_start_in_epoch_ms():
    # HK, start 00:45Z: four import readings, 0.25 + 0.5 + 0 + 0.125 kWh; BD, start 01:00Z: one, 1.0 kWh.
    assert expected_quarters(READINGS) == {
        "HK|1796604300000": [4, 0.875],
        "BD|1796605200000": [1, 1.0],
    }
    # IOC counts valid intervals (quality "measured" with a value): the estimated readings are not; the energy
    # of the one with a delta is still energy used (services/meter/processors.py adds every delta): 0.875 kWh.
    assert expected_quarters(READINGS, valid_only=True)["HK|1796604300000"] == [2, 0.875]


def test_ioc_state_totals_sum_over_partitions():
    p0 = {
        "agg:900:1796604300:HK": {"valid": 2, "kwh": 0.5},
        "agg:86400:1796576400:HK": {"valid": 9, "kwh": 9},
    }
    p1 = {"agg:900:1796604300:HK": {"valid": 1, "kwh": 0.25}, "wm": 1796608800}
    assert ioc_quarters([p0, p1]) == {"HK|1796604300000": [3, 0.75]}


def test_compare_finds_missing_extra_and_wrong_windows():
    expected = {"A|0": [2, 1.5], "B|0": [1, 0.25]}
    assert compare(expected, {"A|0": [2, 1.5 + 1e-13], "B|0": [1, 0.25]})["exact"]  # summation order
    late = compare(expected, {"A|0": [1, 1.0], "C|0": [1, 0.5]})
    assert not late["exact"]
    assert (late["windows_missing"], late["windows_extra"], late["windows_wrong"]) == (1, 1, 1)
    assert (late["readings_expected"], late["readings_counted"]) == (3, 1)
    assert compare(expected, {**expected, "C|0": [0, 0.0]})["exact"]  # an empty window is no extra


def test_a_row_with_window_totals_gets_their_check_instead():
    truth = {"quarters": {"A|0": [2, 1.0]}, "quarters_valid": {"A|0": [1, 0.5]}}
    row = check_totals({"events": 2, "quarters": {"A|0": [2, 1.0]}}, truth)
    assert "quarters" not in row and row["totals"]["exact"]
    ioc = check_totals({"quarters_by_partition": {"0": {"A|0": [1, 0.5]}}}, truth, valid_only=True)
    assert ioc["totals"]["exact"]


def test_workers_partitions_are_merged_once_and_overlaps_reported():
    merged, overlap = merge_partitions(
        [{"0": {"A|0": [1, 1.0]}, "1": {"A|0": [2, 2.0]}}, {"1": {"A|0": [2, 2.0]}}]
    )
    assert merged == {"A|0": [3, 3.0]} and overlap == ["1"]


def test_a_scale_out_row_spans_the_group_and_checks_the_merged_totals():
    truth = {"quarters_valid": {"A|0": [3, 3.0]}}
    workers = [
        {
            "events": 100,
            "t0": 10.0,
            "t1": 12.0,
            "cpu_s_per_million": 10.0,
            "partitions": [0],
            "quarters_by_partition": {"0": {"A|0": [1, 1.0]}},
        },
        {
            "events": 300,
            "t0": 11.0,
            "t1": 14.0,
            "cpu_s_per_million": 20.0,
            "partitions": [1],
            "quarters_by_partition": {"1": {"A|0": [2, 2.0]}},
        },
    ]
    row = combine_workers(workers, truth)
    # 400 events from 10.0 s to 14.0 s: 100/s; CPU (100 × 10 + 300 × 20) µs / 400 events = 17.5 s per million
    assert (row["events"], row["seconds"], row["events_per_s"], row["cpu_s_per_million"]) == (
        400,
        4.0,
        100,
        17.5,
    )
    assert row["exact"] and row["every_worker_busy"]
    workers[1]["quarters_by_partition"]["1"]["A|0"] = [1, 1.0]  # a lost reading
    assert not combine_workers(workers, truth)["exact"]
    assert not combine_workers([*workers[:1], {"error": "boom"}], truth)["exact"]


def test_the_marginal_memory_per_meter_is_the_rss_slope_after_the_first_registration_request():
    from bench.domain_burst import marginal_bytes_per_meter

    # 100 MiB after the first 10,000 meters (parsing buffers included), then +2 MB per 10,000: 200 B a meter
    rss = [(10_000, 100 * 2**20), (20_000, 100 * 2**20 + 2_000_000), (30_000, 100 * 2**20 + 4_000_000)]
    assert marginal_bytes_per_meter(rss) == 200
    assert marginal_bytes_per_meter(rss[:1]) is None


def test_without_java_the_apache_kafka_rows_say_why_instead_of_failing_the_run():
    from bench.meter_rows import ApacheBroker, apache_rows

    class NoKafka(ApacheBroker):
        def start(self):
            self.error = "Apache Kafka unavailable: no java on PATH"

    rows = apache_rows("127.0.0.1:1", {}, NoKafka(), run_child=None, console=None, only=("meter_scaleout",))
    assert rows == {
        "meter_scaleout_apache": {
            "label": "meter_scaleout_apache",
            "error": "Apache Kafka unavailable: no java on PATH",
        }
    }
