"""Hand-worked event sequences for each measure rule of issue #35 (messy field data).

Each expected value is worked out here from the published definitions (docs/traffic-measures.md cites them):
- split failure (Purdue; atspm ``split_failures.sql``): a cycle runs begin green (1) to the next begin green; GOR =
  detector occupancy from begin green to begin yellow (8) / that green time; ROR5 = occupancy of the 5 s after
  begin red clearance (10) / 5 s; a split failure when GOR >= 0.80 and ROR5 >= 0.80; cycles without exactly one
  8 and one 10, or with the detector state unknown at their green, are left out; binned by the end of the red
  window;
- detector chatter (atspm imputation): two "on" within 2 s without an "off": occupied throughout; more than 2 s
  apart: an "off" halfway; two "off" in a row: an "on" halfway; a first event "off": an "on" 1 ms before it;
- arrivals on green by cycle (Purdue coordination diagram): red-to-red cycles from begin red clearance (10), binned
  by their begin green; a cycle without one 1 and one 8 is incomplete and left out; by actuation time (atspm
  ``arrival_on_green.sql``): each advance actuation classified by the phase's state at its own time, binned by it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.traffic.measures import MeasureParams, MeasuresEngine, config_from_registry

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
BASE = round(T0.timestamp() * 1000)
BIN = 900_000

REGISTRY = {
    "phases": [2, 4],
    "detectors": [
        {"channel": 1, "phase": 2, "function": "advance"},  # no distance: actuations are arrivals as they are
        {"channel": 2, "phase": 2, "function": "presence"},
        {"channel": 5, "phase": 2, "function": "yellow_red"},
        {"channel": 9, "phase": 4, "function": "count"},
    ],
}


def s(seconds: float) -> int:
    return BASE + round(seconds * 1000)


def run(events, params=MeasureParams(), registry=REGISTRY):
    """Every bin of a finished log: {bin index: (phase measures by phase, intersection measures)}."""
    data: dict = {}
    engine = MeasuresEngine(data, config_from_registry(registry), params)
    for t, code, param in sorted((s(t), c, p) for t, c, p in events):
        engine.process(t, code, param)
    engine.finish()
    engine.close_bins(through_ms=2**62)
    return {
        (b["bin_start"] - BASE) // BIN: ({m["phase"]: m for m in b["phases"]}, b["intersection"])
        for b in data["closed"]
    }


def phase2(bins, index=0):
    return bins[index][0][2]


# Phase 2 signal: red clearance at 0 s (before any green: the partial first cycle), then
# cycle 1: green 10, yellow 40, red clearance 44 (end 46); cycle 2 opens with the green at 70 s.
SIGNAL = [(0, 10, 2), (10, 1, 2), (40, 8, 2), (43, 9, 2), (44, 10, 2), (46, 11, 2), (70, 1, 2)]


def with_stop_bar(*detector_events, known=True):
    """SIGNAL plus stop-bar events; ``known``: the stop bar logs an "off" at 1 s, so that its state is known
    before cycle 1's green (an "on" is imputed 1 ms before a first "off": occupied 0.999-1 s, outside every
    window below)."""
    first = [(1, 81, 2)] if known else []
    return [*SIGNAL, *first, *((t, code, 2) for t, code in detector_events)]


# --- split failures -------------------------------------------------------------------------------------------
def test_chatter_keeps_the_first_occupied_interval():
    # on 14, on again 15.5 s (no off between, 1.5 s <= 2 s: occupied throughout), off 38; on 44 - off 50.
    # GOR = (38 - 14) / (40 - 10) = 24 / 30 = 0.80; ROR5 = [44, 49) fully occupied = 1.0 -> split failure
    # (the old engine overwrote the first on: (38 - 15.5) / 30 = 0.75, no split failure).
    m = phase2(run(with_stop_bar((14, 82), (15.5, 82), (38, 81), (44, 82), (50, 81))))
    assert (m["split_failure_cycles"], m["split_failures"]) == (1, 1)
    assert m["green_occupancy_avg"] == pytest.approx(0.80)
    assert m["red_occupancy_avg"] == pytest.approx(1.0)
    assert m["split_failure_green_seconds_avg"] == pytest.approx(30.0)


def test_repeated_on_far_apart_and_repeated_off_are_split_halfway():
    # on 14, on 20 (6 s later, > 2 s): off imputed at 17 -> [14, 17] + [20, 26]; off 26, off 32 (a missing on):
    # on imputed at 29 -> [29, 32]. GOR = (3 + 6 + 3) / 30 = 0.40; ROR5 = 0 -> no split failure.
    m = phase2(run(with_stop_bar((14, 82), (20, 82), (26, 81), (32, 81), (60, 82), (61, 81))))
    assert m["green_occupancy_avg"] == pytest.approx(12 / 30)
    assert m["red_occupancy_avg"] == pytest.approx(0.0)
    assert m["split_failures"] == 0


def test_detector_state_unknown_at_green_leaves_the_cycle_out():
    # The stop bar's first event is an off at 38 s (it was on since before the log): an on is imputed 1 ms
    # before it, so its state is known only from 37.999 s, after cycle 1's green (10 s): cycle 1 is left out.
    bins = run(
        [
            *with_stop_bar((38, 81), (80, 82), (105, 81), known=False),
            (100, 8, 2),
            (104, 10, 2),
            (130, 1, 2),
        ]
    )
    m = phase2(bins)
    # only cycle 2 (green 70, yellow 100, red 104) counts: GOR = (100 - 80) / 30 = 0.6667, ROR5 = 1 / 5 = 0.2
    assert m["split_failure_cycles"] == 1
    assert m["green_occupancy_avg"] == pytest.approx(20 / 30)
    assert m["red_occupancy_avg"] == pytest.approx(1 / 5)


def test_thresholds_are_inclusive_at_exactly_080():
    # GOR: on 16 -> off 40 = 24 s of a 30 s green = 0.80; ROR5: on 45 -> off 49 = 4 s of 5 = 0.80 -> a failure
    m = phase2(run(with_stop_bar((16, 82), (40, 81), (45, 82), (49, 81))))
    assert (m["split_failure_cycles"], m["split_failures"]) == (1, 1)
    assert (m["green_occupancy_avg"], m["red_occupancy_avg"]) == (0.80, 0.80)
    # 0.1 s less occupancy in the red window: ROR5 = 3.9 / 5 = 0.78 -> not a failure
    m = phase2(run(with_stop_bar((16, 82), (40, 81), (45.1, 82), (49, 81))))
    assert m["red_occupancy_avg"] == pytest.approx(0.78) and m["split_failures"] == 0


def test_red_window_starts_at_begin_red_clearance_not_end_of_yellow():
    # end yellow (9) at 43, begin red clearance (10) at 44. Occupied 10 -> 47.5 s.
    # From code 10: [44, 49) holds 3.5 s -> ROR5 = 0.70 (no failure); from code 9 it would be 4.5 / 5 = 0.90.
    m = phase2(run(with_stop_bar((10, 82), (47.5, 81))))
    assert (m["split_failure_cycles"], m["split_failures"]) == (1, 0)
    assert m["green_occupancy_avg"] == pytest.approx(1.0)
    assert m["red_occupancy_avg"] == pytest.approx(0.70)
    assert m["split_failures"] == 0


def test_cycle_without_begin_yellow_is_left_out_not_counted_as_green():
    # cycle 2 (green 70) has no begin yellow before its red clearance at 104 and the green at 130
    events = [*with_stop_bar((14, 82), (38, 81), (75, 82), (110, 81)), (104, 10, 2), (130, 1, 2)]
    events += [(t, 82, 1) for t in (20, 50, 80, 90)] + [(t + 0.2, 81, 1) for t in (20, 50, 80, 90)]
    m = phase2(run(events))
    assert m["split_failure_cycles"] == 1  # cycle 1 only
    # red-to-red cycles: 0 -> 44 (green 10, yellow 40): arrivals 20 (green) -- complete; 44 -> 104: no yellow,
    # left out with its arrivals at 50, 80, 90 (the old engine counted them on green, the cycle 60 s of green)
    assert (m["cycles"], m["arrivals"], m["arrivals_on_green"]) == (1, 1, 1)
    assert m["green_seconds"] == pytest.approx(30.0)
    # by actuation time nothing is left out: 20 (green since 10 s), 50 (red since 44 s), 80 and 90 (green since
    # 70 s: with no begin yellow the phase stays green until its red clearance at 104 s, as atspm classifies)
    assert (m["actuations"], m["actuations_on_green"]) == (4, 3)


def test_partial_first_cycle_is_left_out():
    # Arrivals before the first begin red clearance (at 0.5 s and 5 s, the phase green since before the log)
    # belong to no complete red-to-red cycle.
    events = [(0.5, 82, 1), (0.7, 81, 1), (1, 8, 2), (5, 10, 2), (10, 1, 2), (40, 8, 2), (44, 10, 2)]
    events += [(20, 82, 1), (20.2, 81, 1)]
    m = phase2(run(events))
    assert (m["cycles"], m["arrivals"], m["arrivals_on_green"]) == (1, 1, 1)
    assert m["cycle_seconds"] == pytest.approx(44 - 5)
    # by time, the actuation at 0.5 s came while the phase's state was unknown: counted, not on green
    assert (m["actuations"], m["actuations_on_green"]) == (2, 1)


# --- bin edges ----------------------------------------------------------------------------------------------------
def test_bin_edges_of_each_convention():
    # cycle: red clearance 840, green 870, yellow 895, red clearance 898, green 930 (closes it).
    events = [(840, 10, 2), (870, 1, 2), (895, 8, 2), (898, 10, 2), (930, 1, 2), (960, 8, 2), (964, 10, 2)]
    events += [(868, 82, 2), (899, 81, 2)]  # stop bar occupied 868 -> 899
    events += [(880, 82, 1), (880.2, 81, 1), (900, 82, 1), (900.2, 81, 1), (940, 82, 1), (940.2, 81, 1)]
    bins = run(events)
    first, second = phase2(bins, 0), phase2(bins, 1)
    # split failure: the red window [898, 903) ends in the second bin: evaluated there (GOR 25/25 = 1, ROR5 1/5);
    # the cycle of the green at 930 s, ended by the log (yellow 960, red 964, window to 969 s), is complete too
    # and unoccupied (GOR 0, ROR5 0): mean ROR5 (0.2 + 0) / 2
    assert first["split_failure_cycles"] == 0 and second["split_failure_cycles"] == 2
    assert second["red_occupancy_avg"] == pytest.approx(0.1)
    assert second["green_occupancy_avg"] == pytest.approx(0.5)
    # by cycle: the red-to-red cycle 840 -> 898 has its green (870) in the first bin, with its arrivals
    # 880 (green); the cycle 898 -> 964 (green 930) holds 900 (red, delay 30) and 940 (green): second bin
    assert (first["cycles"], first["arrivals"], first["arrivals_on_green"]) == (1, 1, 1)
    assert (second["cycles"], second["arrivals_on_red"], second["arrivals_on_green"]) == (1, 1, 1)
    assert second["total_delay_seconds"] == pytest.approx(30.0)
    # by actuation time: 880 in the first bin (green); 900.0 exactly at the edge goes to the second bin (red)
    assert (first["actuations"], first["actuations_on_green"]) == (1, 1)
    assert (second["actuations"], second["actuations_on_green"]) == (2, 1)


# --- the other measures ---------------------------------------------------------------------------------------
def test_yellow_and_red_actuations_splits_ped_and_phase_wait():
    events = [*SIGNAL]
    # yellow/red detector: 12 (green), 41 (yellow), 44 (at begin red clearance: red), 60 (red)
    events += [(t, 82, 5) for t in (12, 41, 44, 60)] + [(t + 0.3, 81, 5) for t in (12, 41, 44, 60)]
    # ped button: 5, 12 (7 s later: the same person), 30 (18 s after the previous: a new one); walk at 35
    events += [(5, 90, 2), (12, 90, 2), (30, 90, 2), (35, 21, 2)]
    events += [(60, 43, 2)]  # a call on red, served by the green at 70 s
    m = phase2(run(events))
    assert (m["yellow_actuations"], m["red_actuations"]) == (1, 2)
    assert (m["splits"], m["split_seconds_avg"], m["split_seconds_max"]) == (1, 36.0, 36.0)  # 46 - 10
    assert (m["ped_actuations"], m["unique_ped_actuations"], m["ped_services"]) == (3, 2, 1)
    assert m["ped_delay_seconds_avg"] == pytest.approx(30.0)  # first press 5 s, walk 35 s
    assert (m["phase_wait_samples"], m["phase_wait_seconds_avg"]) == (1, pytest.approx(10.0))


def test_yellow_and_red_actuations_of_an_incomplete_cycle_are_left_out():
    # no begin yellow in the cycle: its actuations cannot be told apart and are not counted
    events = [(10, 1, 2), (44, 10, 2), (70, 1, 2), (50, 82, 5), (50.3, 81, 5)]
    m = phase2(run(events))
    assert (m["yellow_actuations"], m["red_actuations"]) == (0, 0)


def test_intersection_measures_preemption_priority_coordination_and_every_channel():
    events = [
        (5, 82, 33),  # a channel nobody configured: counted, not dropped
        (6, 81, 33),
        (100, 102, 1),
        (101, 105, 1),
        (130, 104, 1),
        (200, 112, 3),
        (210, 114, 3),
        (250, 115, 3),
        (300, 131, 2),  # the pattern in force (first logged): not a change
        (400, 131, 3),
        (410, 132, 120),
        (500, 316, 7),  # a vendor code: carried, unused by the measures
    ]
    (_, ix) = run(events)[0]
    det = {d["channel"]: d for d in ix["detectors"]}
    assert det[33]["actuations"] == 1 and det[33]["phase"] is None and det[33]["functions"] == []
    assert det[33]["longest_on_seconds"] == pytest.approx(1.0)
    assert sorted(det) == [1, 2, 5, 9, 33]  # configured channels are listed with zero actuations
    assert ix["preempts"] == [{"number": 1, "calls": 1, "entries": 1, "seconds": 30.0}]
    assert ix["transit_priority"] == [
        {"number": 3, "check_ins": 1, "early_greens": 0, "extended_greens": 1, "check_outs": 1}
    ]
    assert (ix["pattern_changes"], ix["pattern"], ix["cycle_length_seconds"]) == (1, 3, 120)
    assert ix["unused_events"] == 1


def test_detector_health_stuck_on_stuck_off_chattering():
    events = [*SIGNAL, (1, 82, 9)]  # count detector on at 1 s and never off: on 899 s at the bin end >= 600 s
    events += [(20 + 0.5 * k, 82, 2) for k in range(12)] + [(30, 81, 2)]  # 11 "on" after an "on": chatter
    (_, ix) = run(events)[0]
    status = {d["channel"]: d["status"] for d in ix["detectors"]}
    # channel 1 (advance, phase 2) never actuated in a bin where phase 2 turned green: stuck off
    assert status == {1: "stuck_off", 2: "chattering", 5: "stuck_off", 9: "stuck_on"}
    assert ix["detectors_unhealthy"] == 4
    assert {d["channel"]: d["repeated_events"] for d in ix["detectors"]}[2] == 11


def test_detector_far_from_its_usual_count():
    # 8 bins of 20 actuations make the usual count 20; then 60 in a bin: |60 - 20| = 40 > 4 * sqrt(20) + 5 = 22.9
    events = []
    for b in range(10):
        n = 60 if b == 9 else 20
        events += [(b * 900 + 10 + k * 10, 82, 9) for k in range(n)]
        events += [(b * 900 + 10 + k * 10 + 1, 81, 9) for k in range(n)]
    bins = run(events)
    by_bin = [{d["channel"]: d for d in bins[b][1]["detectors"]}[9] for b in range(10)]
    assert [d["status"] for d in by_bin] == ["ok"] * 9 + ["unusual"]
    assert by_bin[8]["usual_actuations"] == pytest.approx(20.0)
