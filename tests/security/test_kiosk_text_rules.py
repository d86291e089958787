"""Unit tests of the kiosk's hostile-input rules (pure functions of services/kiosk/domain.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.kiosk import domain
from services.kiosk.domain import KioskInfo
from shared.contracts.kiosk import HeartbeatReceived

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["Tòa nhà Keangnam", "Phố Hàng Bài 🏛️", "𠀀 CJK ext B", "a-b, c/d (e)"])
def test_display_text_of_any_script_is_fine(text):
    assert domain.unsafe_text_reason(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "a\x00b",
        "tab\there",
        "line\nbreak",
        "del\x7f",
        "c1\x85",
        "rtl\u202eover",
        "lre\u202a",
        "iso\u2066late\u2069",
        "mark\u200f",
        "arabic mark\u061c",
    ],
)
def test_control_and_bidi_characters_are_refused(text):
    assert domain.unsafe_text_reason(text) == "contains control or bidirectional-override characters"


def test_a_service_start_may_be_at_most_the_clock_skew_ahead():
    assert domain.check_service_start(None, NOW, 300) is None
    assert domain.check_service_start(NOW + timedelta(seconds=300), NOW, 300) is None
    assert (
        domain.check_service_start(NOW + timedelta(seconds=301), NOW, 300)
        == "is more than 300 s in the future"
    )
    assert domain.check_service_start(NOW - timedelta(days=3650), NOW, 300) is None


def test_an_uptime_over_twenty_years_is_refused_and_named():
    registry = {"K1": KioskInfo("K1", "HK", frozenset({"printer"}), True, None)}
    ok = HeartbeatReceived(kiosk_id="K1", at=NOW, app_version="1.0", uptime_seconds=20 * 365 * 86400)
    too_long = HeartbeatReceived(
        kiosk_id="K1", at=NOW - timedelta(seconds=1), app_version="1.0", uptime_seconds=20 * 365 * 86400 + 1
    )
    huge = HeartbeatReceived(
        kiosk_id="K1", at=NOW - timedelta(seconds=2), app_version="1.0", uptime_seconds=2**70
    )
    accepted, errors, dups = domain.check_heartbeats(
        [(0, ok), (1, too_long), (2, huge)], registry, NOW, max_skew_s=300, max_age_s=86400
    )
    assert accepted == [ok] and dups == 0
    assert [(e.index, e.field, e.reason) for e in errors] == [
        (1, "uptime_seconds", "is more than 20 years"),
        (2, "uptime_seconds", "is more than 20 years"),
    ]
