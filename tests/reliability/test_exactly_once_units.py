"""Pure checks of the idempotent effects the fault scenarios rely on (no broker, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.kiosk.processors import KioskKpiProcessor
from shared.contracts.kiosk import KioskRegistered, SessionEnded
from shared.stream import State
from shared.testing import received
from tests.reliability.harness import Ledger, sessions_total

NOW = datetime(2026, 3, 10, 5, 0, tzinfo=UTC)  # 12:00 in Hanoi


def _registration(kiosk: str) -> KioskRegistered:
    return KioskRegistered(
        kiosk_id=kiosk,
        building="b",
        address="a",
        district="HK",
        opening_hours=[{"days": [1, 2, 3, 4, 5, 6, 7], "open": "00:00", "close": "24:00"}],
        peripherals=["touchscreen"],
        software_version="1",
        in_service_since=NOW - timedelta(days=2),
        active=True,
        version=1,
    )


def _session(kiosk: str, sid: str) -> SessionEnded:
    return SessionEnded(
        session_id=sid,
        kiosk_id=kiosk,
        journey="check_status",
        started_at=NOW - timedelta(minutes=9),
        ended_at=NOW - timedelta(minutes=8),
        outcome="completed",
    )


def test_a_session_redelivered_under_a_new_event_id_is_counted_once():
    processor = KioskKpiProcessor(name="unit", source="/unit")
    state = State(0)
    processor.apply(received(KioskRegistered, _registration("K1")), state)
    # s1 three times (a retry without Idempotency-Key, a replay after a worker restart: new offsets, and an
    # in-memory dedup window that no longer knows the id), s2 once: 2 sessions.
    for sid in ("s1", "s1", "s2", "s1"):
        processor.apply(received(SessionEnded, _session("K1", sid)), state)
    out = processor.emit(state, NOW)
    daily = [
        e
        for e in out
        if b'"kiosk.sessions"' in e.value
        and b'"window_seconds":86400' in e.value
        and b'"scope_level":"district"' in e.value
    ]
    assert len(daily) == 1 and b'"numerator":2.0' in daily[0].value


def test_seen_session_ids_are_pruned_with_their_day():
    processor = KioskKpiProcessor(name="unit", source="/unit")
    state = State(0)
    processor.apply(received(KioskRegistered, _registration("K1")), state)
    processor.apply(received(SessionEnded, _session("K1", "s1")), state)
    assert state.keys("x:")
    processor.emit(state, NOW + timedelta(days=3))
    assert not state.keys("x:")


class _Obs:
    def __init__(self, source, **data):
        self.source, self.data = source, data


def test_kpi_total_is_the_latest_observation_per_partition_and_window_summed():
    def obs(partition, window_start, n, kpi="kiosk.sessions", source="/p", code="HK", window=86400):
        return _Obs(
            source,
            kpi=kpi,
            scope_level="district",
            scope_code=code,
            window_seconds=window,
            partition=partition,
            window_start=window_start,
            numerator=n,
        )

    observations = [
        obs(0, "d1", 5),
        obs(1, "d1", 7),
        obs(0, "d1", 9),  # partition 0 grew from 5 to 9
        obs(0, "d2", 1),  # the next day
        obs(2, "d1", 100, source="/other"),
        obs(2, "d1", 100, code="BD"),
        obs(2, "d1", 100, window=3600),
        obs(2, "d1", 100, kpi="kiosk.session_success_rate"),
    ]
    assert sessions_total(observations, "/p", "HK") == 9 + 7 + 1


def test_ledger_counts_only_2xx_and_keeps_retry_after_of_refusals():
    import httpx

    ledger = Ledger()
    ledger.record(httpx.Response(200), ["a", "b"])
    ledger.record(httpx.Response(503, headers={"Retry-After": "5"}), ["c"])
    ledger.record(httpx.Response(429), ["d"])
    assert ledger.accepted == ["a", "b"]
    assert ledger.refusals == [(503, "5"), (429, None)]
    assert ledger.statuses == {200: 1, 503: 1, 429: 1}
