"""Alarm management of the city layer, after ISA-18.2 and EEMUA 191 practice (pure: no I/O, no clock).

- **Which window is judged.** A KPI breach is judged on the last *complete* window of a series (the filling
  window is never judged: one early reading would swing it), once it has settled (``settle_seconds`` after
  its end, for late data), and only when that window holds enough data
  (``min_denominator`` for ratios). Level KPIs (a count of things in fault *now*) are judged on the running
  window instead (``judge: running``).
- **Deadband (hysteresis).** A raised alarm stays at its level until the value is back past the threshold by
  ``deadband`` (in the KPI's unit), so a value hovering at a threshold does not raise and clear in turn.
- **On- and off-delays.** A breach must last ``on_delay_seconds`` before it is raised, the return to normal
  ``off_delay_seconds`` before it clears (event time of the judged windows; wall clock for running windows).
  With the default one-window delays a breach is raised on its second consecutive bad window.
- **Chattering.** An alarm raised ``chatter_count`` times within ``chatter_window`` is chattering: it stays
  annunciated (latched) while its source keeps toggling, and its raises and clears are no longer
  annunciated again; it clears once its source has been clear for ``chatter_window``.
- **Shelving.** An operator may shelve an alarm for a bounded time; it is then neither listed as open nor
  colours its district, and comes back by itself when the shelf expires.

Defaults come from the KPI definitions (thresholds, primary window); ``alarm_rules.yaml`` beside this module
overrides them per KPI. Figures published by the city are rounded here too (:func:`tidy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, overload

import yaml

from services.city.domain import Alarm, apply_source_change
from shared.kpis import KpiDefinition

RULES_FILE = Path(__file__).with_name("alarm_rules.yaml")
LEVEL = {"ok": 0, "warning": 1, "critical": 2}
SEVERITY_OF_LEVEL = {1: "warning", 2: "critical"}
#: EEMUA 191's "acceptable" steady-state rate for one operator: about one alarm per 10 minutes
BUDGET_PER_10_MINUTES = 1.0
#: ISA-18.2 (TR5) / EEMUA 191: an alarm annunciated 3 or more times within a short period is chattering
CHATTER_COUNT = 3
CHATTER_WINDOW = timedelta(minutes=10)
MAX_SHELVE = timedelta(hours=8)  # a shelf always expires (ISA-18.2 §16: shelving is time-limited)


@overload
def tidy(value: float) -> float: ...
@overload
def tidy(value: None) -> None: ...
@overload
def tidy(value: float | None) -> float | None: ...
def tidy(value: float | None) -> float | None:
    """A published figure without float noise: 10 significant digits (0.39999999999997726 → 0.4)."""
    if value is None:
        return None
    return float(f"{value:.10g}")


@dataclass(frozen=True)
class AlarmRule:
    """How breaches of one KPI become alarms."""

    kpi: str
    deadband: float
    on_delay_seconds: float
    off_delay_seconds: float
    min_denominator: float
    judge: Literal["complete", "running"] = "complete"
    # A complete window is judged once it has settled this long after its end: late data (a head-end delivers
    # a missed reading with the next interval) still revises it meanwhile.
    settle_seconds: float = 900.0


def default_rule(definition: KpiDefinition) -> AlarmRule | None:
    """The rule a KPI with thresholds gets unless ``alarm_rules.yaml`` says otherwise; ``None`` without any."""
    w, c = definition.thresholds.warning, definition.thresholds.critical
    if definition.direction == "none" or (w is None and c is None):
        return None
    # Deadband: a tenth of the gap between the warning and critical thresholds, else 2 % of the threshold.
    if w is not None and c is not None:
        deadband = abs(c - w) / 10
    else:
        threshold = w if w is not None else c
        # At least one threshold is set (returned above otherwise).
        assert threshold is not None
        deadband = abs(threshold) * 0.02
    window = definition.windows[0]
    return AlarmRule(
        kpi=definition.id,
        deadband=deadband,
        # Breach in two consecutive complete windows; a day-long window is judged once a day, alone.
        on_delay_seconds=window if window < 86400 else 0,
        off_delay_seconds=window if window < 86400 else 0,
        min_denominator=20.0 if definition.combine == "ratio" else 0.0,
    )


def load_rules(
    definitions: Mapping[str, KpiDefinition], path: Path | None = RULES_FILE
) -> dict[str, AlarmRule]:
    """Rules of every KPI with thresholds: defaults, then the overrides of ``path``."""
    rules = {k: r for k, d in definitions.items() if (r := default_rule(d)) is not None}
    overrides: dict[str, dict[str, Any]] = {}
    if path is not None and path.exists():
        overrides = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for kpi, fields in overrides.items():
        if kpi in rules:
            rules[kpi] = replace(rules[kpi], **fields)
    return rules


def level_kpis(path: Path = RULES_FILE) -> frozenset[str]:
    """KPIs judged on their running window (level KPIs: things in fault now), from ``alarm_rules.yaml``."""
    rules = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.exists() else {}
    return frozenset(k for k, v in rules.items() if (v or {}).get("judge") == "running")


def breach_level(definition: KpiDefinition, rule: AlarmRule, value: float, raised: int) -> int:
    """0 (normal), 1 (warning) or 2 (critical) for ``value``, with the deadband around an alarm raised at level
    ``raised``: the alarm keeps its level until the value is ``deadband`` past the threshold."""
    level = LEVEL.get(definition.status(value), 0)
    if raised:
        # Judge the value as if it were ``deadband`` worse: still in breach → keep (at most) the raised level.
        worse = value - rule.deadband if definition.direction == "higher" else value + rule.deadband
        level = max(level, min(raised, LEVEL.get(definition.status(worse), 0)))
    return level


@dataclass(frozen=True)
class Judgement:
    """What one judged window does to an alarm: its new memory, and ``raise``/``clear`` or nothing."""

    memory: dict[str, Any]
    action: Literal["raise", "clear"] | None = None
    severity: str | None = None
    judged: bool = True


def judge(
    definition: KpiDefinition,
    rule: AlarmRule,
    memory: Mapping[str, Any] | None,
    *,
    value: float | None,
    denominator: float | None,
    at: datetime,
) -> Judgement:
    """Judge one observation (a complete window ending at ``at``, or the running window at ``at``).

    ``memory``: ``{"lvl": raised level, "cand": pending level or None, "since": when it started (ISO)}``.
    Too little data (or no value) is not judged: the memory stays as it was.
    """
    mem = {"lvl": 0, "cand": None, "since": None, **(memory or {})}
    if value is None or (
        definition.combine == "ratio" and (denominator is None or denominator < rule.min_denominator)
    ):
        return Judgement(mem, judged=False)
    raised = mem["lvl"]
    target = breach_level(definition, rule, value, raised)
    if target == raised:
        return Judgement({**mem, "cand": None, "since": None})
    cand, since = mem["cand"], mem["since"]
    # A pending change keeps its start while it points the same way (warning then critical is one breach).
    same_way = cand is not None and (cand > raised) == (target > raised)
    if not same_way or since is None:
        since = at.isoformat()
    delay = rule.on_delay_seconds if target > raised else rule.off_delay_seconds
    if (at - datetime.fromisoformat(since)).total_seconds() < delay:
        return Judgement({**mem, "cand": target, "since": since})
    done = {"lvl": target, "cand": None, "since": None}
    if target == 0:
        return Judgement(done, "clear", SEVERITY_OF_LEVEL[raised])
    return Judgement(done, "raise", SEVERITY_OF_LEVEL[target])


# Source changes with chattering ------------------------------------------------------------------------------
def fold_source_change(
    current: Alarm | None,
    change: Mapping[str, Any],
    at: datetime,
    recent_raises: int,
    *,
    chatter_count: int = CHATTER_COUNT,
) -> Alarm | None:
    """:func:`~services.city.domain.apply_source_change` with chattering suppression.

    ``recent_raises``: how often the source raised this alarm within the chatter window before ``at``. The
    raise that reaches ``chatter_count`` marks the alarm chattering; a chattering alarm is latched: a clear from
    the source only notes ``source_state`` (see :func:`release_chattering`), a raise only refreshes it.
    """
    raised = change["state"] == "raised"
    if current is not None and current.chattering and current.is_open:
        if at < current.changed_at:
            return None
        return replace(current, source_state="raised" if raised else "cleared", changed_at=at)
    updated = apply_source_change(current, change, at)
    if updated is None:
        return None
    updated = replace(updated, source_state="raised" if raised else "cleared")
    new_lifecycle = raised and (current is None or not current.is_open)
    if new_lifecycle and recent_raises + 1 >= chatter_count:
        updated = replace(updated, chattering=True)
    return updated


def release_chattering(alarm: Alarm, now: datetime, window: timedelta = CHATTER_WINDOW) -> Alarm | None:
    """A latched chattering alarm whose source has been clear for ``window``: cleared; else ``None``."""
    if not (alarm.chattering and alarm.is_open and alarm.source_state == "cleared"):
        return None
    if now - alarm.changed_at < window:
        return None
    return replace(alarm, state="cleared", cleared_by="source", cleared_at=now, changed_at=now)


def shelve(alarm: Alarm, who: str, now: datetime, duration: timedelta, reason: str) -> Alarm:
    """Shelve an open alarm until ``now + duration`` (at most :data:`MAX_SHELVE`)."""
    from services.city.domain import LifecycleError

    if not alarm.is_open:
        raise LifecycleError("alarm is cleared; only an open alarm can be shelved")
    if duration <= timedelta(0) or duration > MAX_SHELVE:
        raise LifecycleError(f"a shelf lasts more than 0 and at most {MAX_SHELVE}")
    return replace(alarm, shelved_until=now + duration, shelved_by=who, shelve_reason=reason[:200])


def unshelve(alarm: Alarm) -> Alarm:
    return replace(alarm, shelved_until=None, shelved_by=None, shelve_reason=None)


def is_shelved(alarm: Alarm | Mapping[str, Any], now: datetime) -> bool:
    until = alarm.get("shelved_until") if isinstance(alarm, Mapping) else alarm.shelved_until
    return until is not None and until > now


def rate_per_10_minutes(raised: int, minutes: float) -> float:
    """Alarms annunciated per 10 minutes over a period of ``minutes``."""
    return round(raised * 10.0 / minutes, 2) if minutes > 0 else 0.0
