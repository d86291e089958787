"""The per-cycle timeline (timing-and-actuation view), worked out by hand from the Indiana hi-res enumerations
(Sturdevant et al., 2012): 1 begin green, 8 begin yellow, 9 end yellow, 10 begin red clearance, 11 end red
clearance (red follows until the next begin green), 21 / 22 / 23 pedestrian begin walk / begin clearance (flashing
don't walk) / begin solid don't walk, 24 ped dark, 102 / 104 preempt call input on / off.

An interval runs from the event that opens it to the next event of its kind and is recorded in the bin of its end;
``cycle_start`` is the phase's begin green at the interval's start (none before the phase's first green)."""

from __future__ import annotations

from datetime import UTC, datetime

import services.traffic.measures as measures
from services.traffic.measures import MeasureParams, MeasuresEngine, config_from_registry
from shared.contracts.traffic import TimelineInterval

BASE = round(datetime(2024, 5, 1, 8, 0, tzinfo=UTC).timestamp() * 1000)
BIN = 900_000
REGISTRY = {"phases": [2, 4], "detectors": []}

EVENTS = [
    (2, 10, 4),  # phase 4 red clearance before any green of phase 4
    (4, 11, 4),
    (10, 1, 2),  # cycle A of phase 2
    (10, 21, 2),
    (17, 22, 2),
    (27, 23, 2),
    (40, 8, 2),
    (44, 9, 2),
    (44, 10, 2),
    (46, 11, 2),
    (100, 1, 2),  # cycle B
    (120, 102, 1),
    (121, 102, 1),  # a repeated call-on continues the call
    (130, 8, 2),
    (134, 9, 2),
    (134, 10, 2),
    (136, 11, 2),
    (150, 104, 1),
    (950, 1, 2),  # next bin: ends cycle B's red
]


def run(events, params=MeasureParams()):
    data: dict = {}
    engine = MeasuresEngine(data, config_from_registry(REGISTRY), params)
    for sec, code, param in events:  # listed in log order
        engine.process(BASE + sec * 1000, code, param)
    engine.finish()
    engine.close_bins(through_ms=2**62)
    return {(b["bin_start"] - BASE) // BIN: b["intersection"] for b in data["closed"]}


def sec(ms):
    return None if ms is None else (ms - BASE) / 1000


def intervals(ix):
    return sorted(
        (iv["kind"], iv["phase"], iv["preempt"], sec(iv["start"]), sec(iv["end"]), sec(iv["cycle_start"]))
        for iv in ix["timeline"]
    )


def test_hand_worked_cycles():
    bins = run(EVENTS)
    assert intervals(bins[0]) == sorted(
        [
            # phase 4: 10 at 2 s opens red clearance, 11 at 4 s ends it; no green yet, so no cycle
            ("red_clearance", 4, None, 2.0, 4.0, None),
            # phase 2, cycle A (begin green at 10 s): green 10→40 (8), yellow 40→44 (9),
            # red clearance 44→46 (10 → 11), red 46→100 (11 → next 1)
            ("green", 2, None, 10.0, 40.0, 10.0),
            ("yellow", 2, None, 40.0, 44.0, 10.0),
            ("red_clearance", 2, None, 44.0, 46.0, 10.0),
            ("red", 2, None, 46.0, 100.0, 10.0),
            # pedestrian: walk 10→17 (21 → 22), flashing don't walk 17→27 (22 → 23)
            ("walk", 2, None, 10.0, 17.0, 10.0),
            ("flashing_dont_walk", 2, None, 17.0, 27.0, 10.0),
            # cycle B (begin green at 100 s): green 100→130, yellow 130→134, red clearance 134→136
            ("green", 2, None, 100.0, 130.0, 100.0),
            ("yellow", 2, None, 130.0, 134.0, 100.0),
            ("red_clearance", 2, None, 134.0, 136.0, 100.0),
            # preempt 1: call on at 120 s (the second 102 at 121 s continues it), off at 150 s
            ("preempt", None, 1, 120.0, 150.0, None),
        ]
    )
    # cycle B's red, 136 s → the begin green at 950 s, ends in the second bin (900-1800 s)
    assert intervals(bins[1]) == [("red", 2, None, 136.0, 950.0, 100.0)]
    # still open at the end of the log (solid don't walk from 27 s, phase 4 red from 4 s, the green at 950 s):
    # no end, so not recorded
    assert bins[0]["timeline_dropped"] == bins[1]["timeline_dropped"] == 0


def test_out_of_place_end_events_do_not_close():
    # 9 without an open yellow and 11 without an open red clearance close nothing; 24 (ped dark) ends the
    # don't walk without opening an interval; 104 without a call on is ignored
    bins = run([(10, 1, 2), (12, 9, 2), (13, 11, 2), (20, 23, 2), (25, 24, 2), (26, 104, 3), (30, 8, 2)])
    assert intervals(bins[0]) == [
        ("dont_walk", 2, None, 20.0, 25.0, 10.0),
        ("green", 2, None, 10.0, 30.0, 10.0),
    ]


def test_bounded_per_bin(monkeypatch):
    monkeypatch.setattr(measures, "TIMELINE_MAX_PER_BIN", 3)
    # 10 greens of phase 2, each followed by a yellow: 19 closed intervals in the bin, 3 kept
    events = [(10 * i + d, code, 2) for i in range(10) for d, code in ((0, 1), (5, 8))]
    ix = run(events)[0]
    assert len(ix["timeline"]) == 3
    assert ix["timeline_dropped"] == 16


def test_contract_accepts_the_engine_output():
    from services.traffic.domain import iso_ms

    for iv in run(EVENTS)[0]["timeline"]:
        TimelineInterval.model_validate(
            {
                **iv,
                "start": iso_ms(iv["start"]),
                "end": iso_ms(iv["end"]),
                "cycle_start": None if iv["cycle_start"] is None else iso_ms(iv["cycle_start"]),
            }
        )
