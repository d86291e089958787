"""The Purdue coordination diagram per vehicle and the phase terminations per cycle (``kind=pcd``).

Definitions (docs/traffic-measures.md): the coordination diagram's cycle is the red-to-red cycle of arrivals on
green (begin red clearance, code 10, to the next; complete with exactly one begin green, 1, and one begin yellow,
8; the partial first cycle left out), binned by its begin green; each advance-detector actuation (82) is an
arrival at the stop bar ``t_on + distance / speed`` and is plotted at its time after the cycle's start: before
the green on red, before the yellow on green, else on yellow (Purdue; UDOT ATSPM's PCD). A phase termination is
the controller's gap out (4), max out (5) or force off (6) of the phase, plotted per cycle (ATSPM's phase
termination chart), binned by its own time.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import orjson

from services.traffic.measures import pcd_export
from shared.contracts.traffic import HiResEventsLogged, IntersectionConfigured
from shared.testing import received

from .test_atspm_reference import bin_key, generate, ioc_measures, run_in_memory_now

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
BASE = round(T0.timestamp() * 1000)


def iso(seconds: float) -> str:
    return datetime.fromtimestamp((BASE + seconds * 1000) / 1000, UTC).isoformat()


# Phase 2, one bin (08:00-08:15). Signal: red clearance 0 (opens cycle A; the log's first cycle has no start
# before it), green 20, gap out 44, yellow 45, red clearance 60 (ends A, opens B), green 80, max out 109,
# yellow 110, red clearance 115 (ends B), green 120, force off 130, yellow 131, and the log ends (C incomplete).
SIGNAL = [
    (0, 10, 2),
    (20, 1, 2),
    (44, 4, 2),
    (45, 8, 2),
    (60, 10, 2),
    (80, 1, 2),
    (109, 5, 2),
    (110, 8, 2),
    (115, 10, 2),
    (120, 1, 2),
    (130, 6, 2),
    (131, 8, 2),
]
# Channel 1: advance, at the stop bar (no distance). Channel 3: advance 50 m upstream at 36 km/h = 10 m/s, so an
# actuation reaches the stop bar 50 / 10 = 5 s later.
ACTUATIONS = [(1, t) for t in (5, 25, 46, 62, 85, 112)] + [(3, t) for t in (12, 57)]
REGISTRY = {
    "intersection_id": "I-PCD",
    "controller_id": "C-PCD",
    "name": "PCD golden",
    "district": "BD",
    "lat": 21.03,
    "lon": 105.82,
    "phases": [2],
    "detectors": [
        {"channel": 1, "phase": 2, "function": "advance"},
        {"channel": 3, "phase": 2, "function": "advance", "distance_m": 50.0, "speed_kmh": 36.0},
    ],
    "revision": 1,
}


def run(events):
    """The intersection and phase measures of a finished log through the stream processor (a final backfill)."""
    records = [
        received(IntersectionConfigured, REGISTRY),
        received(
            HiResEventsLogged,
            {
                "controller_id": "C-PCD",
                "intersection_id": "I-PCD",
                "district": "BD",
                "backfill": True,
                "final": True,
                "events": [{"t": iso(t), "code": c, "param": p} for t, c, p in sorted(events)],
            },
            offset=1,
        ),
    ]
    _, out = run_in_memory_now(records)
    phases, intersection = [], []
    for ev in out:
        kind = dict(ev.headers)["ce_type"].decode()
        payload = orjson.loads(ev.value)
        if kind.endswith("intersection_measures.computed.v1"):
            intersection.append(payload)
        elif kind.endswith("phase_measures.computed.v1"):
            phases.append(payload)
    return phases, intersection


def test_each_arrivals_offset_and_each_cycles_termination_of_a_hand_made_log():
    events = list(SIGNAL)
    for ch, t in ACTUATIONS:
        events += [(t, 82, ch), (t + 0.5, 81, ch)]
    phases, intersection = run(events)
    pcd = pcd_export(intersection)
    cycles = [c for c in pcd["cycles"] if c["phase"] == 2]
    # Cycle A: 0 → 60 s; green at 20 s, yellow at 45 s after its start. Arrivals (stop-bar times): ch 1 at 5,
    # 25, 46; ch 3 at 12 + 5 = 17; ch 1 at 62 and ch 3 at 57 + 5 = 62 are at/after 60: cycle B's. Offsets
    # 5, 17, 25, 46 → on red (< 20): 5, 17; on green (< 45): 25; on yellow: 46. Ended by the gap out at 44 s
    # (in the green begun at 20).
    # Cycle B: 60 → 115 s (55 s); green 80 - 60 = 20 s, yellow 110 - 60 = 50 s in. Arrivals 62, 62, 85, 112 →
    # offsets 2, 2, 25, 52 → on red 2, on green 1 (25 < 50), on yellow 1 (52 >= 50). Ended by the max out at
    # 109 s. Cycle C (green 120) has no closing red clearance: no cycle of the diagram.
    assert [
        (
            c["cycle_start"][:19],
            c["green_offset_seconds"],
            c["yellow_offset_seconds"],
            c["cycle_seconds"],
            c["arrival_offsets_seconds"],
            (c["arrivals_on_red"], c["arrivals_on_green"], c["arrivals_on_yellow"]),
            c["termination"],
        )
        for c in cycles
    ] == [
        ("2024-05-01T08:00:00", 20.0, 45.0, 60.0, [5.0, 17.0, 25.0, 46.0], (2, 1, 1), "gap_out"),
        ("2024-05-01T08:01:00", 20.0, 50.0, 55.0, [2.0, 2.0, 25.0, 52.0], (2, 1, 1), "max_out"),
    ]
    # Every termination, each with the begin green of the cycle it ended: gap out 44 s (green 20), max out
    # 109 s (green 80), force off 130 s (green 120: a cycle the diagram leaves out, the chart still shows it).
    assert [(x["at"][:19], x["termination"], x["cycle_start"][:19]) for x in pcd["terminations"]] == [
        ("2024-05-01T08:00:44", "gap_out", "2024-05-01T08:00:20"),
        ("2024-05-01T08:01:49", "max_out", "2024-05-01T08:01:20"),
        ("2024-05-01T08:02:10", "force_off", "2024-05-01T08:02:00"),
    ]
    # the bin's phase measures count the same cycles, arrivals and terminations
    (m,) = [p for p in phases if p["phase"] == 2]
    assert (m["cycles"], m["arrivals_on_red"], m["arrivals_on_green"], m["arrivals_on_yellow"]) == (
        2,
        4,
        2,
        2,
    )
    assert (m["gap_outs"], m["max_outs"], m["force_offs"]) == (1, 1, 1)
    assert pcd["dropped"] == 0


def test_per_cycle_terminations_and_arrivals_add_up_to_the_bins_atspm_agrees_with():
    """On test_atspm_reference's messy log (partial cycles, missing 8s and 10s, chatter): the terminations listed
    one by one, counted per bin, phase and type, are the per-bin counts that the atspm reference comparison
    checks bin for bin; and the diagram's cycles and their arrivals, counted per bin of their green, are the
    bins' cycles and arrivals on red / green / yellow."""
    events = generate()
    phases, intersection = ioc_measures(events)
    rows = list(intersection.values())
    pcd = pcd_export(rows)
    assert pcd["dropped"] == 0
    per_cycle = Counter((bin_key(x["bin_start"]), x["phase"], x["termination"]) for x in pcd["terminations"])
    per_bin = Counter()
    for (b, phase), m in phases.items():
        for field, name in (("gap_outs", "gap_out"), ("max_outs", "max_out"), ("force_offs", "force_off")):
            if m[field]:
                per_bin[(b, phase, name)] = m[field]
    assert per_cycle == per_bin and sum(per_bin.values()) > 100
    assert {t for _, _, t in per_cycle} == {"gap_out", "max_out", "force_off"}
    arrivals = Counter()
    for c in pcd["cycles"]:
        key = (bin_key(c["bin_start"]), c["phase"])
        arrivals[(*key, "cycles")] += 1
        arrivals[(*key, "arrivals_on_red")] += c["arrivals_on_red"]
        arrivals[(*key, "arrivals_on_green")] += c["arrivals_on_green"]
        arrivals[(*key, "arrivals_on_yellow")] += c["arrivals_on_yellow"]
    want = Counter()
    for (b, phase), m in phases.items():
        for field in ("cycles", "arrivals_on_red", "arrivals_on_green", "arrivals_on_yellow"):
            if m[field]:
                want[(b, phase, field)] = m[field]
    assert +arrivals == want and want
    # cycles whose green a termination ended carry it; every such termination is in the list
    ended = [c for c in pcd["cycles"] if c["termination"]]
    assert ended and len(ended) <= len(pcd["terminations"])
