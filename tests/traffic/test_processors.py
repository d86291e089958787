"""Unit tests of the traffic stream processor with run_in_memory: measures, state, alarms, KPIs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.traffic.processors import TrafficSignalProcessor
from services.traffic.settings import TrafficSettings
from shared.contracts.traffic import HiResEventsLogged, IntersectionConfigured
from shared.stream import run_in_memory
from shared.testing import received

from .test_domain import REGISTRY, T0, two_cycles

PROC = TrafficSignalProcessor(TrafficSettings())


def registry_event(cid="C1", iid="I1", district="BD"):
    return received(IntersectionConfigured, {
        "intersection_id": iid, "controller_id": cid, "name": "Kim Mã - Giảng Võ", "district": district,
        "lat": 21.03, "lon": 105.82, "revision": 1, **REGISTRY})


def hires(events, cid="C1", iid="I1", district="BD", offset=0):
    return received(HiResEventsLogged, {
        "controller_id": cid, "intersection_id": iid, "district": district,
        "events": [{"t": datetime.fromtimestamp(t / 1000, UTC).isoformat(), "code": c, "param": p}
                   for t, c, p in events]}, offset=offset)


def payloads(out, type_suffix):
    res = []
    for ev in out:
        ce_type = dict(ev.headers)["ce_type"].decode()
        if ce_type.endswith(type_suffix):
            res.append(orjson.loads(ev.value))
    return res


def end_of_bin_event():
    # event time 1206 s: past the bin end + 300 s grace + 5 s reorder hold
    return [(round((T0 + timedelta(seconds=1200)).timestamp() * 1000), 43, 4),
            (round((T0 + timedelta(seconds=1206)).timestamp() * 1000), 43, 4)]


def test_measures_and_kpis_from_chunks_split_across_records():
    events = two_cycles()
    half = len(events) // 2
    evs = [registry_event(), hires(events[:half], offset=1), hires(events[half:], offset=2),
           hires(end_of_bin_event(), offset=3)]
    _, out = run_in_memory(PROC, evs, now=T0 + timedelta(seconds=1210))
    measures = payloads(out, "phase_measures.computed.v1")
    p2 = next(m for m in measures if m["phase"] == 2)
    assert p2["intersection_id"] == "I1" and p2["district"] == "BD"
    assert p2["bin_start"].startswith("2024-05-01T08:00:00")
    assert (p2["arrivals"], p2["arrivals_on_green"], p2["split_failures"], p2["split_failure_cycles"]) == (7, 3, 1, 2)
    assert p2["ped_delay_seconds_avg"] == pytest.approx(24)
    kpis = {(k["kpi"], k["scope_level"], k["scope_code"]): k for k in payloads(out, "kpi.observed.v1")}
    aog = kpis[("traffic.arrivals_on_green_ratio", "district", "BD")]
    assert (aog["numerator"], aog["denominator"]) == (3.0, 7.0)
    assert aog["value"] == pytest.approx(300 / 7)
    sf = kpis[("traffic.split_failure_ratio", "city", "HN")]
    assert sf["value"] == pytest.approx(50.0) and sf["window_seconds"] == 900
    assert kpis[("traffic.volume_vehicles", "city", "HN")]["numerator"] == 8.0  # 7 advance + 1 count
    assert kpis[("traffic.intersections_reporting", "district", "BD")]["numerator"] == 1.0
    assert kpis[("traffic.ped_delay_seconds", "district", "BD")]["value"] == pytest.approx(24)
    assert kpis[("traffic.signals_in_fault", "city", "HN")]["numerator"] == 0.0
    assert all(k["partition"] == 0 for k in kpis.values())
    states = payloads(out, "signal_state.changed.v1")
    assert states and states[-1]["intersection_id"] == "I1"


def test_events_wait_for_registry_then_use_detector_config():
    # hi-res arrives before the registry record: arrivals still classified once the configuration is known
    evs = [hires(two_cycles(), offset=1), registry_event(), hires(end_of_bin_event(), offset=2)]
    _, out = run_in_memory(PROC, evs, now=T0 + timedelta(seconds=1210))
    p2 = next(m for m in payloads(out, "phase_measures.computed.v1") if m["phase"] == 2)
    assert p2["arrivals"] == 7


def test_without_registry_events_wait_30_s_of_arrival_time_then_count_anyway():
    ev = hires([*two_cycles(), *end_of_bin_event()])
    states, out = run_in_memory(PROC, [ev], now=datetime.fromtimestamp(ev.timestamp_ms / 1000 + 10, UTC))
    assert payloads(out, "phase_measures.computed.v1") == []  # held: the configuration may still come
    later = list(PROC.emit(states[0], datetime.fromtimestamp(ev.timestamp_ms / 1000 + 31, UTC)))
    p2 = next(m for m in payloads(later, "phase_measures.computed.v1") if m["phase"] == 2)
    assert p2["cycles"] == 2 and p2["arrivals"] == 0  # no detector configuration: no arrivals known


def test_open_bin_is_not_published_before_grace():
    evs = [registry_event(), hires(two_cycles(), offset=1)]
    _, out = run_in_memory(PROC, evs, now=T0 + timedelta(seconds=200))
    assert payloads(out, "phase_measures.computed.v1") == []


def test_alarms_and_signals_in_fault():
    t = round(T0.timestamp() * 1000)
    evs = [registry_event(), hires([(t, 1, 2), (t + 1000, 173, 1), (t + 20_000, 87, 2), (t + 30_000, 43, 2)])]
    states, out = run_in_memory(PROC, evs, now=T0 + timedelta(seconds=40))
    alarms = payloads(out, "alarm.changed.v1")
    assert {(a["alarm_id"], a["state"], a["severity"]) for a in alarms} == {
        ("traffic:controller_flash:I1", "raised", "major"),
        ("traffic:detector_fault:I1:2", "raised", "minor")}
    assert all(a["source_id"] == "I1" and a["district"] == "BD" for a in alarms)
    faults = {(k["scope_level"], k["scope_code"]): k["numerator"] for k in payloads(out, "kpi.observed.v1")
              if k["kpi"] == "traffic.signals_in_fault"}
    assert faults == {("district", "BD"): 1.0, ("city", "HN"): 1.0}
    state = payloads(out, "signal_state.changed.v1")[-1]
    assert state["flash"] is True and {p["color"] for p in state["phases"]} == {"flashing"}
    # a second emit with nothing new publishes nothing again
    assert list(PROC.emit(states[0], T0 + timedelta(seconds=41))) == []


def test_comm_loss_raised_on_silence_and_cleared_on_next_event():
    t = round(T0.timestamp() * 1000)
    ev = hires([(t, 1, 2)])
    states, _ = run_in_memory(PROC, [registry_event(), ev], now=T0)
    st = states[0]
    silent_until = datetime.fromtimestamp(ev.timestamp_ms / 1000 + 301, UTC)
    out = list(PROC.emit(st, silent_until))
    raised = payloads(out, "alarm.changed.v1")
    assert [(a["alarm_type"], a["state"]) for a in raised] == [("comm_loss", "raised")]
    again = hires([(t + 400_000, 8, 2)])
    PROC.apply(again, st)
    soon_after = datetime.fromtimestamp(again.timestamp_ms / 1000 + 1, UTC)
    cleared = payloads(list(PROC.emit(st, soon_after)), "alarm.changed.v1")
    assert [(a["alarm_type"], a["state"]) for a in cleared] == [("comm_loss", "cleared")]


def test_every_published_kpi_is_defined_with_its_unit():
    from pathlib import Path

    import shared.kpis as kpis_pkg
    from shared.kpis import load_file

    defs = {d.id: d for d in load_file(Path(kpis_pkg.__file__).parent / "traffic.yaml")}
    evs = [registry_event(), hires([*two_cycles(), *end_of_bin_event()])]
    _, out = run_in_memory(PROC, evs, now=T0 + timedelta(seconds=1210))
    seen = {(k["kpi"], k["unit"]) for k in payloads(out, "kpi.observed.v1")}
    assert {kpi for kpi, _ in seen} == set(defs)
    for kpi, unit in seen:
        assert defs[kpi].unit == unit
        assert defs[kpi].combine in ("sum", "ratio")
