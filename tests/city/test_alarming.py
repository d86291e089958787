"""Alarm management of the city layer (services/city/alarming.py), by hand-worked sequences.

Practice followed: ANSI/ISA-18.2-2016 (alarm deadband and on/off-delay, §10.4 and ISA-TR18.2.4; shelving,
§16) and EEMUA 191 (3rd ed.): one alarm per 10 minutes per operator is "very likely to be acceptable"
in steady operation, and an alarm annunciated repeatedly in a short time is chattering.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.city.alarming import (
    AlarmRule,
    default_rule,
    fold_source_change,
    is_shelved,
    judge,
    load_rules,
    rate_per_10_minutes,
    release_chattering,
    shelve,
    tidy,
)
from services.city.domain import LifecycleError

T0 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


def test_default_rule_from_the_definition(definitions):
    # citytest.availability: warning 0.95, critical 0.90 → deadband |0.90 - 0.95| / 10 = 0.005
    rule = default_rule(definitions["citytest.availability"])
    assert rule.deadband == pytest.approx(0.005)
    assert (rule.on_delay_seconds, rule.off_delay_seconds, rule.min_denominator) == (900, 900, 20.0)
    assert default_rule(definitions["citytest.energy_kwh"]) is None  # no thresholds: no alarm
    assert set(load_rules(definitions, None)) == {"citytest.availability", "citytest.peak_mw"}


def test_lower_is_better_with_deadband_and_delays(definitions):
    """citytest.peak_mw: lower is better, warning 0.5, critical 0.8 → deadband 0.03. Delays of 60 s here."""
    d = definitions["citytest.peak_mw"]
    rule = replace(default_rule(d), on_delay_seconds=60, off_delay_seconds=120)
    mem = None

    def step(value, seconds):
        nonlocal mem
        v = judge(d, rule, mem, value=value, denominator=None, at=T0 + timedelta(seconds=seconds))
        mem = v.memory
        return (v.action, v.severity)

    assert step(0.49, 0) == (None, None)  # normal
    assert step(0.55, 10) == (None, None)  # warning pending since 10 s
    assert step(0.85, 40) == (None, None)  # critical: same way (worse), still pending since 10 s
    assert step(0.52, 70) == ("raise", "warning")  # 70 - 10 = 60 s ≥ on-delay: raised at today's level
    # 0.49 is below 0.5, but 0.49 + 0.03 = 0.52 > 0.5: inside the deadband, the alarm holds
    assert step(0.49, 80) == (None, None)
    assert mem["cand"] is None
    assert step(0.46, 90) == (
        None,
        None,
    )  # 0.46 + 0.03 = 0.49 ≤ 0.5: back to normal, clear pending since 90 s
    assert step(0.55, 100) == (None, None)  # breach again: the pending clear is forgotten
    assert step(0.40, 110) == (None, None)  # normal again: pending since 110 s
    assert step(0.40, 229) == (None, None)  # 119 s < 120 s off-delay
    assert step(0.40, 230) == ("clear", "warning")


def test_too_little_data_leaves_the_memory_as_it_was(definitions):
    d = definitions["citytest.availability"]
    rule = default_rule(d)
    mem = {"lvl": 2, "cand": None, "since": None}
    v = judge(d, rule, mem, value=1.0, denominator=19.0, at=T0)  # 19 < 20: not judged
    assert (v.judged, v.action, v.memory) == (False, None, mem)
    assert judge(d, rule, mem, value=None, denominator=100.0, at=T0).judged is False


def test_an_on_delay_of_zero_raises_at_once(definitions):
    d = definitions["citytest.availability"]
    rule = AlarmRule("citytest.availability", 0.0, 0, 0, 0)
    v = judge(d, rule, None, value=0.5, denominator=100.0, at=T0)
    assert (v.action, v.severity) == ("raise", "critical")


def _change(state, at):
    return {
        "alarm_id": "kiosk:kiosk_offline:K1",
        "domain": "kiosk",
        "alarm_type": "kiosk_offline",
        "state": state,
        "severity": "major",
        "source_id": "K1",
        "district": "BD",
        "message": "kiosk silent",
        "at": at,
    }


def test_chattering_alarm_is_latched_and_released_after_a_quiet_window():
    """Raised at 0 s, cleared 10 s, raised 20 s, cleared 30 s, raised 40 s: the third raise within 10 minutes
    (ISA-18.2's chattering) latches the alarm; clears then only note the source's state; 10 quiet minutes after
    the last clear it is released."""
    alarm = None
    raises = 0
    annunciated = []
    for i, state in enumerate(["raised", "cleared", "raised", "cleared", "raised", "cleared", "raised"]):
        at = T0 + timedelta(seconds=10 * i)
        before = alarm
        alarm = fold_source_change(alarm, _change(state, at), at, raises) or alarm
        if state == "raised":
            raises += 1
        if alarm.is_open and (before is None or not before.is_open):
            annunciated.append(i)
    assert annunciated == [0, 2, 4]  # opened three times, then latched: the 4th raise is not a new alarm
    assert alarm.chattering and alarm.is_open and alarm.occurrences == 3
    last_clear = T0 + timedelta(seconds=70)
    alarm = fold_source_change(alarm, _change("cleared", last_clear), last_clear, raises)
    assert alarm.is_open and alarm.source_state == "cleared"
    assert release_chattering(alarm, last_clear + timedelta(minutes=9)) is None
    released = release_chattering(alarm, last_clear + timedelta(minutes=10))
    assert (released.state, released.cleared_by) == ("cleared", "source")


def test_shelving_expires_and_is_bounded():
    alarm = fold_source_change(None, _change("raised", T0), T0, 0)
    shelved = shelve(alarm, "op-1", T0, timedelta(minutes=30), "technician on site")
    assert is_shelved(shelved, T0 + timedelta(minutes=29))
    assert not is_shelved(shelved, T0 + timedelta(minutes=30))  # the shelf expired: back in the list
    with pytest.raises(LifecycleError):
        shelve(alarm, "op-1", T0, timedelta(hours=9), "too long")
    cleared = replace(alarm, state="cleared")
    with pytest.raises(LifecycleError):
        shelve(cleared, "op-1", T0, timedelta(minutes=5), "")


def test_rates_and_rounding():
    assert rate_per_10_minutes(6, 60) == 1.0  # 6 alarms in an hour: EEMUA 191's one per 10 minutes
    assert rate_per_10_minutes(5, 0) == 0.0
    assert tidy(0.39999999999997726) == 0.4
    assert tidy(1195.4400000000001) == 1195.44
    assert tidy(514.031999999) == 514.032  # a sum of three-decimal registers
    assert tidy(None) is None


def test_slower_consequences_of_an_outage_join_its_open_incident():
    from services.city.domain import Incident, correlate

    opened = T0
    inc = Incident("INC-HK-1", "HK", opened, opened + timedelta(minutes=10), ("meter", "kiosk"), 4)
    later = opened + timedelta(
        minutes=40
    )  # 30 min after its last alarm: outside the 15-minute sliding window
    assert correlate("HK", later, [inc], timedelta(minutes=15)) is None
    assert correlate("HK", later, [inc], timedelta(minutes=15), span=timedelta(hours=2)) is inc
    assert (
        correlate("HK", opened + timedelta(hours=3), [inc], timedelta(minutes=15), timedelta(hours=2)) is None
    )
    assert correlate("BD", later, [inc], timedelta(minutes=15), timedelta(hours=2)) is None
