"""Unit tests of the traffic domain: formulas, the measures engine on hand-built cycles, ingest screening."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.traffic.domain import (
    IngestScreen,
    MeasureParams,
    MeasuresEngine,
    classify_arrivals,
    config_from_registry,
    fold_signal_state,
    is_split_failure,
    may_report,
    new_signal_state,
    occupied_ms,
    parse_detector_rows,
    signal_state_phases,
    split_failure_ratios,
    stop_bar_time_ms,
    to_ms,
)

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
BASE = to_ms(T0)


def s(seconds: float) -> int:
    """Epoch ms of T0 + seconds."""
    return BASE + round(seconds * 1000)


# --- formulas -----------------------------------------------------------------------------------------------
def test_stop_bar_shift_uses_distance_over_speed():
    # 50 m at 36 km/h = 10 m/s → 5 s
    assert stop_bar_time_ms(1000, 50, 36) == 6000
    # 120 m at 40 km/h = 11.111 m/s → 10.8 s
    assert stop_bar_time_ms(0, 120, 40) == 10800
    assert stop_bar_time_ms(1000, None, 40) == 1000


def test_arrivals_before_during_and_after_green():
    # cycle: green at 30 s, yellow at 60 s, next red at 64 s
    arrivals = [s(15), s(25), s(35), s(55), s(61), s(67)]
    c = classify_arrivals(arrivals, s(30), s(60), s(64))
    assert (c.on_red, c.on_green, c.on_yellow) == (2, 2, 1)  # 67 s belongs to the next cycle
    assert c.delay_s == pytest.approx(15 + 5)  # red arrivals wait until green


def test_occupancy_merges_overlaps_and_clips():
    intervals = [[0, 10_000], [5_000, 12_000], [20_000, 30_000]]
    # merged: [0,12] and [20,30]; clipped to [2, 25) → 10 + 5 = 15 s
    assert occupied_ms(intervals, 2_000, 25_000) == 15_000
    assert occupied_ms([], 0, 10) == 0


def test_split_failure_needs_both_ratios_over_080():
    # green [30, 60), red from 64: occupied 25→58 and 62→70
    gor, ror5 = split_failure_ratios([[s(25), s(58)], [s(62), s(70)]], s(30), s(60), s(64))
    assert gor == pytest.approx(28 / 30)
    assert ror5 == pytest.approx(1.0)
    assert is_split_failure(gor, ror5)
    # the same green with a queue that cleared: red occupied only 1 of 5 s
    gor, ror5 = split_failure_ratios([[s(25), s(58)], [s(64), s(65)]], s(30), s(60), s(64))
    assert ror5 == pytest.approx(0.2)
    assert not is_split_failure(gor, ror5)
    # the published thresholds are inclusive: GOR >= 0.80 and ROR5 >= 0.80 (was "> 0.80" before issue #35)
    assert is_split_failure(0.81, 0.80) and is_split_failure(0.80, 0.80)
    assert not is_split_failure(0.81, 0.79) and not is_split_failure(0.79, 1.0)


# --- the measures engine on a hand-built sequence ------------------------------------------------------------
REGISTRY = {
    "phases": [2, 4],
    "detectors": [
        {"channel": 1, "phase": 2, "function": "advance", "distance_m": 50.0, "speed_kmh": 36.0},
        {"channel": 2, "phase": 2, "function": "presence"},
        {"channel": 3, "phase": 2, "function": "presence"},
        {"channel": 9, "phase": 4, "function": "count"},
    ],
}


def two_cycles() -> list[tuple[int, int, int]]:
    """Phase 2: red at 0 s, two cycles (green 30-60 / red 64, green 94-124 / red 128), then green again at 150 s.

    Cycle 1 is a split failure (queue occupies the stop bar through green and the first 5 s of red); cycle 2
    is not. Advance actuations at 10, 20, 30, 50, 56, 62, 100 s reach the stop bar 5 s later.
    """
    ev = [
        (0, 9, 2),
        (0, 10, 2),
        (10, 82, 1),
        (10.3, 81, 1),
        (20, 82, 1),
        (20.3, 81, 1),
        (25, 82, 2),  # queue at the stop bar
        (30, 1, 2),
        (30, 82, 1),
        (30.3, 81, 1),
        (40, 82, 3),
        (50, 81, 3),  # second stop-bar detector, overlapping: adds nothing
        (50, 82, 1),
        (50.3, 81, 1),
        (56, 82, 1),
        (56.3, 81, 1),
        (58, 81, 2),
        (60, 4, 2),
        (60, 7, 2),
        (60, 8, 2),
        (62, 82, 1),
        (62.3, 81, 1),
        (62, 82, 2),
        (64, 9, 2),
        (64, 10, 2),
        (70, 81, 2),
        (70, 90, 2),
        (80, 90, 2),  # ped button pressed twice: the first press counts
        (94, 1, 2),
        (94, 21, 2),
        (95, 82, 2),
        (100, 82, 1),
        (100, 81, 2),
        (100.3, 81, 1),
        (101, 22, 2),
        (110, 23, 2),
        (124, 5, 2),
        (124, 7, 2),
        (124, 8, 2),
        (128, 9, 2),
        (128, 10, 2),  # begin red clearance: the cycle's red start (issue #35; code 9 no longer counts)
        (128, 82, 2),
        (129, 81, 2),
        (135, 82, 9),
        (135.5, 81, 9),
        (150, 1, 2),  # the next green closes cycle 2 for its split-failure evaluation (green-to-green cycle)
    ]
    return [(s(t), code, param) for t, code, param in ev]


def run_engine(events, params=MeasureParams()):
    data: dict = {}
    engine = MeasuresEngine(data, config_from_registry(REGISTRY), params)
    for e in sorted(events):
        engine.process(*e)
    engine.close_bins()  # as the processor does after each batch
    return engine, data


def test_measures_of_two_cycles_match_hand_computation():
    events = two_cycles()
    _, data = run_engine([*events, (s(1200), 43, 4)])  # event time passes bin end + 300 s grace
    assert len(data["closed"]) == 1
    closed = data["closed"][0]
    assert closed["bin_start"] == BASE
    assert closed["events"] == len(events)
    assert closed["data_completeness"] == pytest.approx(3 / 15)  # minutes 0, 1 and 2 of 15
    p2 = next(m for m in closed["phases"] if m["phase"] == 2)
    assert p2["volume"] == 7  # advance detector actuations
    assert p2["detector_volumes"] == {"1": 7, "2": 4, "3": 1}
    assert (p2["gap_outs"], p2["max_outs"], p2["force_offs"]) == (1, 1, 0)
    assert p2["cycles"] == 2
    assert p2["green_seconds"] == pytest.approx(60)
    assert p2["cycle_seconds"] == pytest.approx(128)
    # cycle 1: red 15, 25 (delay 15 + 5); green 35, 55; yellow 61. cycle 2: red 67 (delay 27); green 105
    assert (p2["arrivals"], p2["arrivals_on_green"], p2["arrivals_on_yellow"], p2["arrivals_on_red"]) == (
        7,
        3,
        1,
        3,
    )
    assert p2["total_delay_seconds"] == pytest.approx(47)
    assert p2["approach_delay_seconds"] == pytest.approx(47 / 7)
    assert p2["pct_arrivals_on_green"] == pytest.approx(3 / 7)
    assert p2["pct_green"] == pytest.approx(60 / 128)
    assert p2["platoon_ratio"] == pytest.approx((3 / 7) / (60 / 128))
    assert (p2["split_failure_cycles"], p2["split_failures"]) == (2, 1)
    assert p2["ped_samples"] == 1
    assert p2["ped_delay_seconds_avg"] == pytest.approx(24)  # first press at 70 s, walk at 94 s
    p4 = next(m for m in closed["phases"] if m["phase"] == 4)
    assert p4["volume"] == 1 and p4["cycles"] == 0 and p4["pct_arrivals_on_green"] is None


def test_bin_stays_open_during_grace_and_takes_late_cycle_data():
    engine, data = run_engine([*two_cycles(), (s(1199), 43, 4)])
    assert data["closed"] == []  # 1199 s < 900 s + 300 s grace
    engine.process(s(1200), 43, 4)
    engine.close_bins()
    assert len(data["closed"]) == 1


def test_open_bin_measures_hold_the_complete_cycles_and_the_elapsed_minutes():
    events = two_cycles()
    engine, data = run_engine([e for e in events if e[0] <= s(70)])  # cycle 1 (red 64 s) is complete
    b = data["bins"][str(BASE)]
    m = engine.open_bin_measures(BASE, b, s(70))
    p2 = next(p for p in m["phases"] if p["phase"] == 2)
    assert (p2["cycles"], p2["arrivals"], p2["arrivals_on_green"], p2["arrivals_on_red"]) == (1, 5, 2, 2)
    # A split-failure cycle runs green to green (atspm): cycle 1 is evaluated once the green at 94 s closes it
    # (before issue #35 it was evaluated at red + 5 s = 69 s).
    assert (p2["split_failure_cycles"], p2["split_failures"]) == (0, 0)
    assert m["data_completeness"] == pytest.approx(1.0)  # minute 0 over, with data
    # at 4 min 30 s event time, minutes 0-3 are over and 0, 1 and 2 had data
    for e in events:
        if e[0] > s(70):
            engine.process(*e)
    m = engine.open_bin_measures(BASE, b, s(270))
    assert m["data_completeness"] == pytest.approx(3 / 4)  # minutes 0, 1, 2 of 4
    assert engine.open_bin_measures(BASE, b, s(5000))["data_completeness"] == pytest.approx(3 / 15)
    assert data["closed"] == []  # nothing closed, nothing consumed


def test_partial_first_cycle_is_not_counted():
    # green before any red: the cycle has no start, so its arrivals are not classified
    ev = [
        (s(0), 1, 2),
        (s(5), 82, 1),
        (s(20), 8, 2),
        (s(24), 10, 2),  # begin red clearance starts the red (code 10, as atspm; issue #35)
        (s(30), 82, 1),
        (s(50), 1, 2),
        (s(80), 8, 2),
        (s(84), 10, 2),
    ]
    engine, data = run_engine(ev)
    engine.close_bins(through_ms=2**62)
    p2 = next(m for m in data["closed"][0]["phases"] if m["phase"] == 2)
    # only the cycle 24 → 84 s counts: arrival at 35 s (30 + 5) is on red, delay 15 s
    assert p2["cycles"] == 1 and p2["arrivals"] == 1 and p2["arrivals_on_red"] == 1
    assert p2["total_delay_seconds"] == pytest.approx(15)
    assert p2["volume"] == 2


def test_alarms_fault_flash_power_and_consecutive_max_outs():
    ev = [
        (s(1), 87, 2),
        (s(2), 87, 2),
        (s(3), 173, 5),
        (s(4), 182, 0),
        (s(5), 184, 0),
        (s(6), 173, 2),
        (s(10), 5, 4),
        (s(20), 5, 4),
        (s(30), 5, 4),
        (s(40), 5, 4),
        (s(50), 4, 4),
        (s(60), 82, 2),
    ]
    _, data = run_engine(ev)
    got = [(a["type"], a["key"], a["state"]) for a in data["alarms"]]
    assert got == [
        ("detector_fault", "detector_fault:2", "raised"),  # raised once, not twice
        ("controller_flash", "controller_flash", "raised"),
        ("power_failure", "power_failure", "raised"),
        ("power_failure", "power_failure", "cleared"),
        ("controller_flash", "controller_flash", "cleared"),
        ("consecutive_max_outs", "consecutive_max_outs:4", "raised"),  # third max-out in a row
        ("consecutive_max_outs", "consecutive_max_outs:4", "cleared"),  # gap-out
        ("detector_fault", "detector_fault:2", "cleared"),  # the detector actuates again
    ]


def test_stuck_detector_raises_after_threshold():
    params = MeasureParams(stuck_on_ms=60_000)
    _, data = run_engine([(s(0), 82, 9), (s(30), 43, 4), (s(61), 43, 4), (s(70), 81, 9)], params)
    assert [(a["type"], a["state"]) for a in data["alarms"]] == [
        ("stuck_detector", "raised"),
        ("stuck_detector", "cleared"),
    ]


# --- live signal state ---------------------------------------------------------------------------------------
def test_signal_state_follows_events_and_flash_overrides():
    st = new_signal_state([2, 4])
    assert fold_signal_state(st, s(0), 1, 2)
    assert fold_signal_state(st, s(0), 21, 2)
    assert not fold_signal_state(st, s(1), 43, 2)  # a call changes nothing visible
    phases = {p["phase"]: p for p in signal_state_phases(st)}
    assert phases[2]["color"] == "green" and phases[2]["movement_state"] == 6 and phases[2]["ped"] == "walk"
    assert phases[4]["color"] == "red" and phases[4]["movement_state"] == 3
    fold_signal_state(st, s(30), 8, 2)
    assert signal_state_phases(st)[0]["movement_state"] == 8
    fold_signal_state(st, s(40), 173, 4)
    assert {p["color"] for p in signal_state_phases(st)} == {"flashing"}
    fold_signal_state(st, s(50), 182, 0)
    assert {p["movement_state"] for p in signal_state_phases(st)} == {1}
    assert st["rev"] == 5


# --- ingest screening ----------------------------------------------------------------------------------------
def test_screen_rejects_unknown_future_out_of_order_and_counts_duplicates():
    screen = IngestScreen(future_tolerance_s=60, out_of_order_tolerance_s=5)
    now = T0 + timedelta(hours=1)
    items = [
        (0, "C1", s(100), 1, 2),
        (1, "C9", s(100), 1, 2),  # unknown controller
        (2, "C1", s(101), 400, 2),  # a vendor code: accepted and carried (issue #35)
        (3, "C1", to_ms(now) + 61_000, 1, 2),  # 61 s in the future
        (4, "C1", s(100), 1, 2),  # duplicate inside the batch
        (5, "C1", s(97), 8, 2),  # 3 s older than the batch's latest: inside the tolerance
        (6, "C1", s(90), 8, 2),  # 10 s older: out of order
    ]
    res = screen.screen(items, {"C1"}, now)
    assert [(e.index, e.code, e.field) for e in res.errors] == [
        (1, "unknown_entity", "controller_id"),
        (3, "future_timestamp", "timestamp"),
        (6, "out_of_order", "timestamp"),
    ]
    assert res.duplicates == 1
    assert res.accepted == {"C1": [(s(97), 8, 2), (s(100), 1, 2), (s(101), 400, 2)]}  # time-ordered
    # resending the same events later is a duplicate, not an error
    again = screen.screen([(0, "C1", s(100), 1, 2), (1, "C1", s(102), 1, 4)], {"C1"}, now)
    assert again.duplicates == 1 and again.accepted == {"C1": [(s(102), 1, 4)]}
    # publishing failed: rolled back, so the retry is accepted
    screen.rollback(again)
    retry = screen.screen([(0, "C1", s(102), 1, 4)], {"C1"}, now)
    assert retry.accepted == {"C1": [(s(102), 1, 4)]}


def test_detector_rows_accept_atspm_names():
    rows = [
        {
            "DeviceId": "C1",
            "Phase": "2",
            "Parameter": "1",
            "Function": "Advance",
            "Distance": "120",
            "Speed": "40",
        },
        {"DeviceId": "C1", "Phase": "2", "Parameter": "2", "Function": "stop bar"},
        {"DeviceId": "C1", "Phase": "4", "Parameter": "9", "Function": "Count"},
        {"DeviceId": "C1", "Phase": "x", "Parameter": "9", "Function": "Count"},
        {"DeviceId": "C1", "Phase": "4", "Parameter": "9", "Function": "radar"},
    ]
    ok, errors = parse_detector_rows(rows)
    assert [(i, d["channel"], d["function"]) for i, _, d in ok] == [
        (0, 1, "advance"),
        (1, 2, "presence"),
        (2, 9, "count"),
    ]
    assert ok[0][2]["distance_m"] == 120.0 and ok[0][2]["speed_kmh"] == 40.0
    assert [(e.index, e.field) for e in errors] == [(3, "Parameter"), (4, "Function")]


# --- entity ownership --------------------------------------------------------------------------------------
def test_may_report_only_for_controllers_whose_gateway_it_is():
    registry = {
        "C-1": {"controller_id": "C-1", "gateway": "gw-a"},
        "C-2": {"controller_id": "C-2", "gateway": "gw-b"},
        "C-3": {"controller_id": "C-3", "gateway": None},
    }
    assert may_report("gw-a", False, "C-1", registry)
    assert not may_report("gw-a", False, "C-2", registry)  # another gateway's
    assert not may_report("gw-a", False, "C-3", registry)  # no gateway: privileged principals only
    assert may_report("gw-a", False, "C-9", registry)  # unregistered: rejected later as unknown_entity
    assert all(may_report("ops", True, c, registry) for c in ("C-1", "C-2", "C-3"))


def test_authorize_names_each_foreign_item_and_never_echoes_a_malformed_id():
    from services.traffic.service import authorize
    from shared.auth import ApiError, Principal

    registry = {"C-1": {"gateway": "gw-a"}, "C-2": {"gateway": "gw-b"}}
    items = [
        {"controller_id": "C-1"},
        {"controller_id": "C-2"},
        {"controller_id": "<x>\u202e"},
        "junk",
        {"controller_id": ["C-2"]},
        {"controller_id": "C-9"},
        {"controller_id": "C-2"},
    ]
    gateway = Principal("gw-a", "gateway", frozenset({"traffic:ingest"}))
    with pytest.raises(ApiError) as caught:
        authorize(gateway, items, registry)
    err = caught.value
    assert err.status == 403 and err.code == "forbidden"
    assert [(d["item"], d["id"], d["field"]) for d in err.details] == [
        (1, "C-2", "controller_id"),
        (6, "C-2", "controller_id"),
    ]
    assert "C-2" in err.message and "<x>" not in err.message
    authorize(gateway, items[:1] + items[2:6], registry)  # own, malformed and unknown ids only: allowed
    authorize(Principal("ops", "admin", frozenset({"traffic:ingest", "traffic:admin"})), items, registry)
    authorize(Principal("dev", "admin", frozenset({"*"})), items, registry)
