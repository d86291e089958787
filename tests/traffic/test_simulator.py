"""The traffic simulator: calibrated fault rates, pedestrian delay within a red, scripted power failures."""

from __future__ import annotations

import random

from services.traffic import simulator
from shared.areas import hanoi
from tests.areas import HOAN_KIEM


def _controllers(n=60, seed=5):
    """``n`` controllers: the simulator builds BASE_INTERSECTIONS × scale for 30 areas, as many per area for more."""
    per_scale = simulator.BASE_INTERSECTIONS * len(hanoi().top_areas) / 30
    items, sims = simulator.build_intersections(n / per_scale, random.Random(seed), 1_000_000.0)
    assert len(items) == n
    return items, sims


def test_a_healthy_hour_has_few_faults_and_short_pedestrian_waits():
    _, sims = _controllers(20)
    end = 1_000_000.0 + 7200
    faults = 0
    waits = []
    for sim in sims:
        calls: dict[int, float] = {}
        for t, code, param in sim.events_until(end):
            if code in (84, 86, 87, 173, 182):
                faults += 1
            elif code == 45:
                calls.setdefault(param, t)
            elif code == 21 and param in calls:
                waits.append(t - calls.pop(param))
    # 20 controllers for 2 hours: (6 detector faults + 1 flash + 2 power failures a year each) × 20 × 2 / 8,760
    # ≈ 0.04 expected (the earlier 0.3 % a cycle gave ~4.4)
    assert faults <= 2
    # Calls wait for the next walk at most one red (cycles of 90-120 s): on average well under 60 s
    assert waits and sum(waits) / len(waits) < 45 and max(waits) < 120


def test_a_scripted_incident_cuts_the_districts_signals_for_its_duration():
    items, sims = _controllers()
    t0 = 1_000_000.0 + 600
    t1 = t0 + 1200
    done: set[int] = set()
    assert any(item["district"] == HOAN_KIEM for item in items)
    simulator.apply_incidents(items, sims, [(HOAN_KIEM, t0, t1)], t0 - 100, done)
    assert done == {0}
    for item, sim in zip(items, sims, strict=True):
        events = sim.events_until(t1 + 300)
        inside = [e for e in events if t0 < e[0] < t1]
        if item["district"] == HOAN_KIEM:
            assert (t0, 182, 0) in events and (t1, 184, 0) in events and inside == []
        else:
            assert inside
    assert simulator.parse_incidents(f"{HOAN_KIEM}@1970-01-12T13:46:40Z/20") == [
        (HOAN_KIEM, 1_000_000.0, 1_001_200.0)
    ]
