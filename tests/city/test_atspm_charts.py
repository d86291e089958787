"""The chart builder on hand-made timelines: which cycles the ATSPM charts draw, by the traffic service's
completeness rules (docs/traffic-measures.md, Indiana enumerations: 1 begin green, 8 begin yellow, 10 begin red
clearance, 11 end red clearance). The timeline's intervals run from the event that opens them to the next event of
their kind; ``cycle_start`` is the phase's begin green at the interval's start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.city.atspm_charts import atspm_charts, latest_phase_states

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)


def at(sec: float) -> str:
    return (T0 + timedelta(seconds=sec)).isoformat()


def iv(kind: str, start: float, end: float, cycle: float | None, phase: int = 2) -> dict:
    return {
        "kind": kind,
        "phase": phase,
        "preempt": None,
        "start": at(start),
        "end": at(end),
        "cycle_start": None if cycle is None else at(cycle),
    }


def test_a_cycle_whose_red_clearance_is_cut_short_has_no_split_and_a_cycle_without_yellow_no_timing():
    timeline = [
        # the partial first cycle: a red clearance before any green (no cycle start)
        iv("red_clearance", 0, 10, None),
        # cycle A: green 10, yellow 40, red clearance 44, end red clearance 46, red to the green at 70:
        # split 46 - 10 = 36 s; red-to-red 0 -> 44: green at 10 s, yellow at 40 s, 44 s long
        iv("green", 10, 40, 10),
        iv("yellow", 40, 44, 10),
        iv("red_clearance", 44, 46, 10),
        iv("red", 46, 70, 10),
        # cycle B: green 70, yellow 100, red clearance 104 cut short by the green at 130 (no 11): no split;
        # red-to-red 44 -> 104: green 26 s in, yellow 56 s in, 60 s long
        iv("green", 70, 100, 70),
        iv("yellow", 100, 104, 70),
        iv("red_clearance", 104, 130, 70),
        # cycle C: no begin yellow (green straight to red clearance at 160): neither split nor timing
        iv("green", 130, 160, 130),
        iv("red_clearance", 160, 162, 130),
        iv("red", 162, 190, 130),
        # the last red clearance closes the red-to-red cycle 104 -> 160 (no yellow in it): left out
        iv("green", 190, 200, 190),
        iv("ped", 0, 1, None),  # not a signal interval (ignored)
    ]
    timeline[-1]["kind"] = "walk"
    (p2,) = atspm_charts([], timeline)["phases"]
    assert p2["split_monitor"]["cycles"] == [{"cycle_start": at(10), "split_seconds": 36.0}]
    assert p2["coordination"]["cycles"] == [
        {"cycle_start": at(0), "green_seconds": 10.0, "yellow_seconds": 40.0, "cycle_seconds": 44.0},
        {"cycle_start": at(44), "green_seconds": 26.0, "yellow_seconds": 56.0, "cycle_seconds": 60.0},
    ]
    # the latest signal interval of the phase: the green that began at 190 s
    assert latest_phase_states(timeline) == [{"phase": 2, "kind": "green", "start": at(190), "end": at(200)}]


def test_per_bin_figures_are_the_measures_as_given_with_means_per_cycle():
    measures = [
        {
            "phase": 4,
            "bin_start": at(0),
            "cycles": 4,
            "arrivals": 30,
            "arrivals_on_green": 18,
            "arrivals_on_yellow": 2,
            "arrivals_on_red": 10,
            "pct_arrivals_on_green": 0.6,
            "cycle_seconds": 360.0,
            "green_seconds": 120.0,
            "splits": 4,
            "split_seconds_avg": 40.0,
            "split_seconds_max": 44.0,
            "gap_outs": 3,
            "max_outs": 0,
            "force_offs": 1,
        },
        # a bin without cycles or terminations: no mean, no share (not zero)
        {"phase": 4, "bin_start": at(900), "cycles": 0, "gap_outs": 0, "max_outs": 0, "force_offs": 0},
    ]
    (p4,) = atspm_charts(measures, [])["phases"]
    first, empty = p4["coordination"]["bins"]
    # 18 / 4 = 4.5 on green, 10 / 4 = 2.5 on red per cycle; 360 / 4 = 90 s cycles, 120 / 4 = 30 s greens
    assert (first["arrivals_on_green_per_cycle"], first["arrivals_on_red_per_cycle"]) == (4.5, 2.5)
    assert (first["cycle_seconds_avg"], first["green_seconds_avg"]) == (90.0, 30.0)
    assert empty["arrivals_on_green_per_cycle"] is None and empty["cycle_seconds_avg"] is None
    t1, t2 = p4["terminations"]["bins"]
    assert (t1["gap_outs"], t1["max_outs"], t1["force_offs"], t1["pct_max_or_force"]) == (3, 0, 1, 0.25)
    assert t2["pct_max_or_force"] is None
    assert p4["split_monitor"]["bins"][0] == {
        "bin_start": at(0),
        "splits": 4,
        "split_seconds_avg": 40.0,
        "split_seconds_max": 44.0,
    }
