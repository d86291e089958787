"""The kiosk KPI processor, in memory: offline from silence, alarms, availability and session rates."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from services.kiosk.processors import KioskKpiProcessor
from shared.contracts.kiosk import (
    HeartbeatReceived,
    KioskRegistered,
    PeripheralStatusChanged,
    SessionEnded,
)
from shared.stream import run_in_memory
from shared.testing import received

MON = datetime(2024, 5, 6, tzinfo=UTC).timestamp()  # a Monday
H = 3600
ALL_DAY = [{"days": [1, 2, 3, 4, 5, 6, 7], "open": "00:00", "close": "24:00"}]


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def reg(kiosk, district, partition, hours=ALL_DAY):
    return received(KioskRegistered, {
        "kiosk_id": kiosk, "building": "Tòa nhà", "address": "1 Phố", "district": district, "commune": None,
        "opening_hours": hours, "peripherals": ["touchscreen", "printer"], "software_version": "2.1",
        "in_service_since": iso(MON - 30 * 24 * H), "active": True, "version": 1}, partition=partition)


def hbs(kiosk, start, end, partition):
    out, t = [], start
    while t <= end:
        out.append(received(HeartbeatReceived, {"kiosk_id": kiosk, "at": iso(t), "app_version": "2.1"},
                            partition=partition))
        t += 60
    return out


def session(kiosk, i, start, outcome, rating=None, partition=0):
    return received(SessionEnded, {
        "session_id": f"s{i}", "kiosk_id": kiosk, "journey": "print_result", "started_at": iso(start),
        "ended_at": iso(start + 90), "outcome": outcome, "rating": rating,
        "failure_reason": "device_fault" if outcome == "failed" else None}, partition=partition)


def printer(kiosk, t, paper, partition=0):
    return received(PeripheralStatusChanged, {"kiosk_id": kiosk, "peripheral": "printer", "state": "online",
                                              "paper": paper, "at": iso(t)}, partition=partition)


def payloads(events, topic):
    return [orjson.loads(e.value) for e in events if e.topic == topic]


def kpi(events, kpi_id, code, window_seconds=H, window_start=MON + H):
    """The one observation of a KPI for an area and window (the hour 01:00 UTC by default)."""
    start = iso(window_start).replace("+00:00", "Z")
    found = [p for p in payloads(events, "ioc.kiosk.kpis")
             if p["kpi"] == kpi_id and p["scope_code"] == code and p["window_seconds"] == window_seconds
             and p["window_start"] == start]
    assert len(found) == 1, (kpi_id, code, found)
    return found[0]


@pytest.fixture
def scenario():
    """K-A (district BD, partition 0) works all hour; K-B (HK, partition 1) goes silent at 01:30 UTC."""
    now = MON + H + 3540
    events = [reg("K-A", "BD", 0), reg("K-B", "HK", 1)]
    events += hbs("K-A", MON + H, now, 0) + hbs("K-B", MON + H, MON + 1.5 * H, 1)
    outcomes = ["completed"] * 7 + ["abandoned"] * 2 + ["failed"]
    ratings = [5, 4, 3] + [None] * 7
    events += [session("K-A", i, MON + H + i * 60, o, r) for i, (o, r) in enumerate(zip(outcomes, ratings, strict=True))]
    events += [printer("K-A", MON + 1.25 * H, "out"), printer("K-A", MON + 1.75 * H, "full")]
    proc = KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=30)
    states, out = run_in_memory(proc, events, datetime.fromtimestamp(now, UTC))
    return proc, states, out, now


def test_kpis_per_district_and_partition(scenario):
    _, _, out, _ = scenario
    assert kpi(out, "kiosk.technical_availability", "BD")["value"] == 100.0
    hk = kpi(out, "kiosk.technical_availability", "HK")
    assert (hk["numerator"], hk["denominator"]) == (1800.0, 3540.0)  # 01:00-01:30 of 01:00-01:59
    assert hk["value"] == pytest.approx(1800 / 3540 * 100)
    assert kpi(out, "kiosk.session_success_rate", "BD")["value"] == 70.0
    assert kpi(out, "kiosk.abandonment_rate", "BD")["value"] == 20.0
    assert kpi(out, "kiosk.satisfaction_score", "BD")["value"] == 4.0
    f = kpi(out, "kiosk.faults_per_1000_sessions", "BD")
    assert (f["numerator"], f["denominator"], f["value"]) == (1.0, 10.0, 100.0)
    assert kpi(out, "kiosk.mttr_seconds.paper_out", "BD")["value"] == 1800.0
    spk = kpi(out, "kiosk.sessions_per_kiosk_hour", "BD")
    assert spk["value"] == pytest.approx(10 / (3540 / 3600))
    # No paper for 30 of the 59 minutes: printing unavailable then; looking up procedures was fine.
    assert kpi(out, "kiosk.functional_availability.print_result", "BD")["value"] == pytest.approx(1740 / 3540 * 100)
    assert kpi(out, "kiosk.functional_availability.lookup_procedure", "BD")["value"] == 100.0
    # City observations are per partition, marked with it, and mergeable by sum of parts.
    cities = [p for p in payloads(out, "ioc.kiosk.kpis")
              if p["kpi"] == "kiosk.technical_availability" and p["scope_level"] == "city" and p["window_seconds"] == H]
    # The hour before (closed on this first emit) is published too: in service, scheduled, never heard from.
    assert sorted((p["window_start"][11:16], p["partition"], p["numerator"], p["denominator"]) for p in cities) == [
        ("00:00", 0, 0.0, 3600.0), ("00:00", 1, 0.0, 3600.0), ("01:00", 0, 3540.0, 3540.0), ("01:00", 1, 1800.0, 3540.0)]
    assert kpi(out, "kiosk.kiosks_offline", "HK")["value"] == 1.0
    assert kpi(out, "kiosk.kiosks_offline", "BD")["value"] == 0.0
    # Monday's Hanoi day started at 17:00 UTC on Sunday.
    assert kpi(out, "kiosk.sessions", "BD", 86400, MON - 7 * H)["numerator"] == 10.0
    # No kiosk id anywhere in KPI observations.
    assert not any("K-A" in e.value.decode() or "K-B" in e.value.decode()
                   for e in out if e.topic == "ioc.kiosk.kpis")


def test_silence_declares_offline_and_heartbeats_bring_it_back(scenario):
    proc, states, out, now = scenario
    changes = {p["kiosk_id"]: p["state"] for p in payloads(out, "ioc.kiosk.state")}
    assert changes == {"K-A": "online", "K-B": "offline"}
    alarms = payloads(out, "ioc.kiosk.alarms")
    assert [(a["alarm_type"], a["state"], a["source_id"], a["severity"]) for a in alarms] == [
        ("kiosk_offline", "raised", "K-B", "major")]
    # Nothing new while it stays silent.
    st = states[1]
    assert payloads(proc.emit(st, datetime.fromtimestamp(now + 5, UTC)), "ioc.kiosk.alarms") == []
    # Heartbeats return 10 minutes after detection: online again, alarm cleared, repair time measured.
    back = now + 600
    for ev in hbs("K-B", back, back, 1):
        proc.apply(ev, st)
    out2 = proc.emit(st, datetime.fromtimestamp(back + 1, UTC))
    assert [p["state"] for p in payloads(out2, "ioc.kiosk.state")] == ["online"]
    assert [(a["alarm_type"], a["state"]) for a in payloads(out2, "ioc.kiosk.alarms")] == [("kiosk_offline", "cleared")]
    mttr = [p for p in payloads(out2, "ioc.kiosk.kpis") if p["kpi"] == "kiosk.mttr_seconds.kiosk_offline"
            and p["scope_code"] == "HK" and p["window_seconds"] == H]
    assert [(p["numerator"], p["denominator"]) for p in mttr] == [(600.0, 1.0)]


def test_offline_after_hours_raises_no_alarm_until_opening():
    # Open 08:00-17:00 local (01:00-10:00 UTC); the kiosk stops at 10:30 UTC (after closing).
    hours = [{"days": [1, 2, 3, 4, 5], "open": "08:00", "close": "17:00"}]
    proc = KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=30)
    events = [reg("K-C", "TH", 0, hours), *hbs("K-C", MON + 10 * H, MON + 10.5 * H, 0)]
    states, out = run_in_memory(proc, events, datetime.fromtimestamp(MON + 12 * H, UTC))
    assert [p["state"] for p in payloads(out, "ioc.kiosk.state")] == ["offline"]
    assert payloads(out, "ioc.kiosk.alarms") == []
    tuesday_open = MON + 25 * H + 60
    later = proc.emit(states[0], datetime.fromtimestamp(tuesday_open, UTC))
    assert [(a["alarm_type"], a["state"]) for a in payloads(later, "ioc.kiosk.alarms")] == [("kiosk_offline", "raised")]


def test_peripheral_faults_raise_and_clear_alarms():
    proc = KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=30)
    st_events = [reg("K-D", "BD", 0), printer("K-D", MON + H, "out")]
    states, out = run_in_memory(proc, st_events, datetime.fromtimestamp(MON + H + 10, UTC))
    assert [(a["alarm_id"], a["state"], a["severity"]) for a in payloads(out, "ioc.kiosk.alarms")] == [
        ("kiosk:paper_out:K-D:printer", "raised", "minor")]
    proc.apply(printer("K-D", MON + H + 900, "full"), states[0])
    out2 = proc.emit(states[0], datetime.fromtimestamp(MON + H + 920, UTC))
    cleared = payloads(out2, "ioc.kiosk.alarms")
    assert [(a["state"], a["at"]) for a in cleared] == [("cleared", iso(MON + H + 900).replace("+00:00", "Z"))]
    assert "a:K-D" not in states[0]


def test_old_windows_are_pruned():
    proc = KioskKpiProcessor(heartbeat_timeout_s=180, kpi_interval_s=30)
    events = [reg("K-E", "BD", 0), session("K-E", 1, MON + H, "completed")]
    states, _ = run_in_memory(proc, events, datetime.fromtimestamp(MON + 1.5 * H, UTC))
    assert states[0].keys("s:3600:")
    proc.emit(states[0], datetime.fromtimestamp(MON + 3.5 * H, UTC))
    assert not states[0].keys("s:3600:")  # two hours later the hour is neither current nor previous
    assert states[0].keys("s:86400:")
