"""Pure logic of the city layer: merging KPI partials, statuses, the alarm lifecycle and incident correlation.

No I/O and no clock here: callers pass ``now``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from shared.kpis import KpiDefinition, all_definitions, load_file

log = logging.getLogger(__name__)

CITY_SCOPE = "HN"
SCOPE_LEVELS = ("district", "city")
SEVERITIES = ("critical", "major", "minor", "warning")
SEVERITY_RANK = {"critical": 4, "major": 3, "minor": 2, "warning": 1}
STATUS_RANK = {"unknown": 0, "ok": 1, "warning": 2, "critical": 3}
# Who may act on alarms, by principal role (``attributes.role``, else the principal kind).
ACK_ROLES = frozenset({"operator", "supervisor", "administrator", "admin"})
CLEAR_ROLES = frozenset({"operator", "supervisor", "administrator", "admin"})
READ_ROLES = frozenset({"leader", "operator", "supervisor", "administrator", "admin"})


# KPI definitions ---------------------------------------------------------------------------------------------
def load_definitions(extra: str | Path | None = None) -> dict[str, KpiDefinition]:
    """The KPI definitions of ``shared/kpis/*.yaml`` plus those of ``extra`` (a YAML file or a directory)."""
    try:
        defs = dict(all_definitions())
    except Exception:  # a domain's file being broken must not take the whole city view down
        log.exception("could not load shared KPI definitions")
        defs = {}
    if extra:
        path = Path(extra)
        files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        for f in files:
            for d in load_file(f):
                defs[d.id] = d
    return defs


def domain_of(kpi: str, definition: KpiDefinition | None) -> str:
    """The domain measuring ``kpi``: its definition's, else the id's prefix (``meter.energy_kwh`` → meter)."""
    return definition.domain if definition is not None else kpi.split(".", 1)[0]


@dataclass(frozen=True)
class Merged:
    """A KPI merged over its source partitions."""

    value: float | None
    numerator: float
    denominator: float | None
    partitions: int


def merge_partials(parts: Mapping[Any, Mapping[str, Any]], definition: KpiDefinition | None) -> Merged:
    """Merge the latest observation of every source partition of one KPI, area and window.

    ``parts`` maps partition → ``{"n": numerator, "d": denominator, "v": value}``. An observation of
    partition -1 already covers everything and is used alone. ``sum`` adds numerators, ``max`` takes the
    largest, ``ratio`` divides summed numerators by summed denominators; then the definition's ``scale``.
    Without a definition, a KPI with denominators is a ratio, otherwise a sum.
    """
    if not parts:
        return Merged(None, 0.0, None, 0)
    whole = parts.get(-1, parts.get("-1"))
    if whole is not None:
        parts = {-1: whole}
    combine = (
        definition.combine
        if definition is not None
        else ("ratio" if any(p.get("d") is not None for p in parts.values()) else "sum")
    )
    scale = definition.scale if definition is not None else 1.0
    # One pass; the same arithmetic as sum()/max() over the parts in order (so results are bit-identical).
    numerator: float | None = None
    denominator: float | None = None
    take_max = combine == "max"
    for p in parts.values():
        n = _part_numerator(p, scale)
        if numerator is None:
            numerator = n if take_max else 0 + n
        elif take_max:
            if n > numerator:
                numerator = n
        else:
            numerator = numerator + n
        d = p.get("d")
        if d is not None:
            denominator = 0 + d if denominator is None else denominator + d
    # parts is not empty (returned above), so the loop set the numerator.
    assert numerator is not None
    if combine == "ratio":
        value = numerator / denominator * scale if denominator else None
    else:
        value = numerator * scale
    return Merged(value, numerator, denominator, len(parts))


def _part_numerator(part: Mapping[str, Any], scale: float) -> float:
    n = float(part.get("n") or 0.0)
    v = part.get("v")
    # A sum/max observation that only filled ``value`` (numerator left at its default 0) still counts.
    if n == 0.0 and part.get("d") is None and v:
        return float(v) / (scale or 1.0)
    return n


def kpi_status(definition: KpiDefinition | None, value: float | None) -> str:
    """ok / warning / critical / unknown against the definition's thresholds (unknown without one)."""
    if definition is None:
        return "unknown"
    return definition.status(value)


def breach_severity(status: str) -> str | None:
    """Alarm severity of a KPI status: critical → critical, warning → warning, otherwise no alarm."""
    return {"critical": "critical", "warning": "warning"}.get(status)


def worst_status(kpi_statuses: Iterable[str], alarm_severities: Iterable[str] = ()) -> str:
    """A district's colour: the worst of its KPI statuses and its open alarms (critical/major → critical)."""
    rank = 0
    for s in kpi_statuses:
        rank = max(rank, STATUS_RANK.get(s, 0))
    for sev in alarm_severities:
        rank = max(rank, STATUS_RANK["critical"] if sev in ("critical", "major") else STATUS_RANK["warning"])
    if rank == 0:
        return "unknown"
    return next(k for k, v in STATUS_RANK.items() if v == rank)


# Alarm lifecycle ---------------------------------------------------------------------------------------------
AlarmState = Literal["active", "acknowledged", "cleared"]


class LifecycleError(ValueError):
    """An operator action the alarm's state does not allow (answered 409)."""


@dataclass(frozen=True)
class Alarm:
    """One alarm, deduplicated by ``alarm_id`` (source + type), with its lifecycle."""

    alarm_id: str
    domain: str
    alarm_type: str
    severity: str
    source_id: str
    district: str | None
    commune: str | None
    message: str
    state: AlarmState
    raised_at: datetime
    changed_at: datetime
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    cleared_by: str | None = None
    cleared_at: datetime | None = None
    incident_id: str | None = None
    occurrences: int = 1
    # Alarm management (services/city/alarming.py): latched while chattering, what the source last said, shelf.
    chattering: bool = False
    source_state: str | None = None
    shelved_until: datetime | None = None
    shelved_by: str | None = None
    shelve_reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self.state != "cleared"


def apply_source_change(current: Alarm | None, change: Mapping[str, Any], at: datetime) -> Alarm | None:
    """Fold a domain's raised/cleared notice into the alarm; ``None`` when nothing changes.

    A raise of an open alarm only refreshes it (deduplication); a raise of a cleared alarm starts a new
    lifecycle; a clear from the source closes it. Notices older than the alarm's last change, and the same
    notice delivered again, are ignored.
    """
    if current is not None and at < current.changed_at:
        return None
    if current is not None and at == current.changed_at and (change["state"] == "raised") == current.is_open:
        return None  # the same notice delivered again
    if change["state"] == "raised":
        if current is None or current.state == "cleared":
            return Alarm(
                alarm_id=change["alarm_id"],
                domain=change["domain"],
                alarm_type=change["alarm_type"],
                severity=change["severity"],
                source_id=change["source_id"],
                district=change.get("district"),
                commune=change.get("commune"),
                message=change["message"],
                state="active",
                raised_at=at,
                changed_at=at,
                occurrences=(current.occurrences + 1) if current is not None else 1,
            )
        return replace(
            current,
            severity=change["severity"],
            message=change["message"],
            changed_at=at,
            district=change.get("district") or current.district,
            commune=change.get("commune") or current.commune,
        )
    if current is None or current.state == "cleared":
        return None
    return replace(current, state="cleared", cleared_by="source", cleared_at=at, changed_at=at)


def acknowledge(alarm: Alarm, who: str, at: datetime) -> Alarm:
    """active → acknowledged, remembering who and when."""
    if alarm.state != "active":
        raise LifecycleError(f"alarm is {alarm.state}; only an active alarm can be acknowledged")
    return replace(alarm, state="acknowledged", acknowledged_by=who, acknowledged_at=at)


def clear(alarm: Alarm, who: str, at: datetime) -> Alarm:
    """active or acknowledged → cleared by an operator."""
    if alarm.state == "cleared":
        raise LifecycleError("alarm is already cleared")
    # changed_at moves too, so a replayed (older) raise notice cannot reopen what an operator cleared
    return replace(
        alarm, state="cleared", cleared_by=who, cleared_at=at, changed_at=max(alarm.changed_at, at)
    )


# Correlation -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Incident:
    """Alarms of one district close in time, across domains (one feeder outage, not three problems)."""

    incident_id: str
    district: str
    opened_at: datetime
    last_alarm_at: datetime
    domains: tuple[str, ...] = field(default_factory=tuple)
    alarm_count: int = 0


def correlate(
    district: str | None,
    at: datetime,
    open_incidents: Iterable[Incident],
    window: timedelta,
    span: timedelta = timedelta(0),
) -> Incident | None:
    """The open incident an alarm raised in ``district`` at ``at`` joins, or ``None`` (it opens a new one).

    An alarm joins an incident of the same district whose latest alarm is at most ``window`` before it
    (a sliding window, so a cascade keeps growing one incident), or which was opened at most ``span`` before it
    (the slower consequences of one outage, e.g. a KPI judged on settled windows, join the incident their cause
    opened, reopening it if it closed meanwhile); the most recent such incident wins.
    """
    if district is None:
        return None
    best: Incident | None = None
    for inc in open_incidents:
        if inc.district != district:
            continue
        near = inc.last_alarm_at - window <= at <= inc.last_alarm_at + window
        ongoing = inc.opened_at <= at <= inc.opened_at + span
        if (near or ongoing) and (best is None or inc.last_alarm_at > best.last_alarm_at):
            best = inc
    return best


def correlate_any(
    at: datetime, open_incidents: Iterable[Incident], window: timedelta, span: timedelta = timedelta(0)
) -> Incident | None:
    """:func:`correlate` over the incidents of every district (for city-wide alarms)."""
    best: Incident | None = None
    for inc in open_incidents:
        found = correlate(inc.district, at, [inc], window, span)
        if found is not None and (best is None or found.last_alarm_at > best.last_alarm_at):
            best = found
    return best


def open_incident(district: str, alarm: Alarm) -> Incident:
    """A new incident opened by ``alarm``."""
    stamp = alarm.raised_at.strftime("%Y%m%dT%H%M%S")
    return Incident(
        f"INC-{district}-{stamp}-{zlib.crc32(alarm.alarm_id.encode()) % 10000:04d}",
        district,
        alarm.raised_at,
        alarm.raised_at,
        (alarm.domain,),
        1,
    )


def join_incident(incident: Incident, alarm: Alarm) -> Incident:
    """``incident`` with ``alarm`` added."""
    domains = incident.domains if alarm.domain in incident.domains else (*incident.domains, alarm.domain)
    return replace(
        incident,
        last_alarm_at=max(incident.last_alarm_at, alarm.raised_at),
        domains=domains,
        alarm_count=incident.alarm_count + 1,
    )


# History -----------------------------------------------------------------------------------------------------
STEPS = ("raw", "minute", "hour", "day")


def choose_step(start: datetime, end: datetime) -> str:
    """The coarsest table that still gives a useful chart: raw ≤ 2 days, minute ≤ 7 days, hour ≤ 90 days."""
    span = end - start
    if span <= timedelta(days=2):
        return "raw"
    if span <= timedelta(days=7):
        return "minute"
    if span <= timedelta(days=90):
        return "hour"
    return "day"
