"""Kiosk domain logic: opening hours, online time, availability, faults, journeys and ingest checks.

Pure: no I/O and no clock (callers pass ``now``). Times inside the KPI logic are Unix seconds (floats) and
intervals are ``(start, end)`` pairs, half-open. Opening hours are Hanoi local time (UTC+7, no daylight saving).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from shared.areas import CITY_CODE, HANOI_OFFSET_S, Hierarchy
from shared.contracts.kiosk import (
    HeartbeatReceived,
    KioskRegistered,
    PeripheralStatusChanged,
    SessionEnded,
)
from shared.ingest import ItemError

MAX_UPTIME_S = 20 * 365 * 86400
HOUR = 3600
DAY = 86400
WINDOWS: tuple[int, ...] = (HOUR, DAY)
MAX_SESSION_SECONDS = 4 * HOUR  # a kiosk session longer than this is a clock or reporting error

Interval = tuple[float, float]

# What each journey needs besides the kiosk being online (a kiosk can be online yet unable to print).
JOURNEY_NEEDS: dict[str, tuple[str, ...]] = {
    "lookup_procedure": ("touchscreen",),
    "submit_dossier": ("touchscreen", "id_scanner"),
    "check_status": ("touchscreen",),
    "pay_fee": ("touchscreen", "payment_terminal"),
    "print_result": ("touchscreen", "printer"),
    "queue_ticket": ("touchscreen", "printer"),
    "rate_service": ("touchscreen",),
}

FAULT_TYPES: tuple[str, ...] = (
    "kiosk_offline",
    "device_offline",
    "hardware_error",
    "paper_out",
    "paper_jam",
    "fraud_attempt",
    "user_error",
)
# Alarm severity per fault type (alarm_type = fault type).
ALARM_SEVERITY: dict[str, str] = {
    "kiosk_offline": "major",
    "hardware_error": "major",
    "fraud_attempt": "critical",
    "paper_out": "minor",
    "paper_jam": "minor",
    "device_offline": "minor",
    "user_error": "warning",
}

# CEN/XFS device states (CWA 16926 / XFS 3.x ``fwDevice``: WFS_STAT_DEVONLINE, DEVOFFLINE, DEVPOWEROFF,
# DEVNODEVICE, DEVHWERROR, DEVUSERERROR, DEVBUSY, DEVFRAUDATTEMPT) → usable or not by a citizen. "Busy" is a
# device online and working on a command, so usable; "user error" is "present but a person is preventing proper
# device operation" (e.g. a card left in the reader, a blocked shutter): not usable until it clears.
# docs/calendar.md (kiosk section) keeps this table for operators.
XFS_USABLE: dict[str, bool] = {
    "online": True,
    "busy": True,
    "offline": False,
    "power_off": False,
    "no_device": False,
    "hardware_error": False,
    "user_error": False,
    "fraud_attempt": False,
}


# Intervals -------------------------------------------------------------------------------------------------------
def merge(intervals: Iterable[Sequence[float]]) -> list[Interval]:
    """Sorted, non-overlapping union of ``intervals`` (empty ones dropped, touching ones joined)."""
    out: list[Interval] = []
    for s, e in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def intersect(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """Intersection of two merged interval lists."""
    out: list[Interval] = []
    i = j = 0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if e > s:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Sequence[Interval], b: Sequence[Interval]) -> list[Interval]:
    """``a`` minus ``b`` (both merged)."""
    out: list[Interval] = []
    for s, e in a:
        cur = s
        for bs, be in b:
            if be <= cur or bs >= e:
                continue
            if bs > cur:
                out.append((cur, bs))
            cur = max(cur, be)
            if cur >= e:
                break
        if cur < e:
            out.append((cur, e))
    return out


def clip(intervals: Sequence[Interval], start: float, end: float) -> list[Interval]:
    return intersect(intervals, [(start, end)]) if end > start else []


def total(intervals: Iterable[Interval]) -> float:
    return sum(e - s for s, e in intervals)


# Windows and opening hours ---------------------------------------------------------------------------------------
def window_start(t: float, seconds: int) -> float:
    """Start of the window of length ``seconds`` holding ``t``.

    Daily windows follow the Hanoi day (local midnight = 17:00 UTC), which is what the operations centre reports.
    """
    offset = HANOI_OFFSET_S if seconds % DAY == 0 else 0
    return math.floor((t + offset) / seconds) * seconds - offset


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def closed_days_of(days_off: Iterable[date]) -> frozenset[int]:
    """Days off of the city calendar (``shared.calendar``) as local day numbers since 1970-01-01, the form
    :func:`opening_intervals` takes: public buildings, and the kiosks in them, are closed those days."""
    return frozenset(d.toordinal() - _EPOCH_ORDINAL for d in days_off)


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def opening_intervals(
    hours: Sequence[Mapping], start: float, end: float, closed_days: frozenset[int] = frozenset()
) -> list[Interval]:
    """Scheduled service time within ``[start, end)``, from weekly periods ``{days, open, close}`` (local time),
    less the ``closed_days`` (:func:`closed_days_of`: the city calendar's public holidays and days off)."""
    if end <= start or not hours:
        return []
    return list(
        _opening_intervals(
            tuple((tuple(p["days"]), p["open"], p["close"]) for p in hours), start, end, closed_days
        )
    )


# Kiosks share a few schedules, and a KPI pass asks for every kiosk's over the same windows: computed once each.
@functools.lru_cache(maxsize=4096)
def _opening_intervals(
    hours: tuple[tuple[tuple[int, ...], str, str], ...],
    start: float,
    end: float,
    closed_days: frozenset[int] = frozenset(),
) -> tuple[Interval, ...]:
    first = math.floor((start + HANOI_OFFSET_S) / DAY)
    last = math.floor((end + HANOI_OFFSET_S) / DAY)
    out: list[Interval] = []
    for day in range(first, last + 1):
        if day in closed_days:
            continue
        weekday = (day + 3) % 7 + 1  # day 0 (1970-01-01) was a Thursday, ISO weekday 4
        midnight = day * DAY - HANOI_OFFSET_S
        for days, opens, closes in hours:
            if weekday in days:
                out.append((midnight + _minutes(opens) * 60, midnight + _minutes(closes) * 60))
    return tuple(clip(merge(out), start, end))


def is_open(hours: Sequence[Mapping], t: float, closed_days: frozenset[int] = frozenset()) -> bool:
    return bool(opening_intervals(hours, t, t + 1, closed_days))


def never_reported_offline(
    kiosk: Mapping, t: float, timeout: float, closed_days: frozenset[int] = frozenset()
) -> bool:
    """A registered, active kiosk that never sent a heartbeat is offline once it has been scheduled to serve
    for longer than the heartbeat timeout since it entered service (the rule of a kiosk that went silent: a
    kiosk silent for ``timeout`` of its service time). Looks back at most 8 days (enough for any weekly
    schedule plus a holiday week)."""
    if not kiosk["active"]:
        return False
    start = max(float(kiosk["since"]), t - 8 * DAY)
    return total(opening_intervals(kiosk["hours"], start, t, closed_days)) > timeout


def never_reported_due(
    kiosk: Mapping, t: float, timeout: float, closed_days: frozenset[int] = frozenset()
) -> float | None:
    """When a kiosk that never reported becomes offline by :func:`never_reported_offline` (None: not within the
    next 8 days, or already)."""
    if not kiosk["active"]:
        return None
    start = max(float(kiosk["since"]), t - 8 * DAY)
    left = timeout - total(opening_intervals(kiosk["hours"], start, t, closed_days))
    if left < 0:
        return None
    for s, e in opening_intervals(kiosk["hours"], max(t, float(kiosk["since"])), t + 8 * DAY, closed_days):
        if e - s > left:
            return s + left + 1e-3  # just past the timeout of scheduled time
        left -= e - s
    return None


# Online time ------------------------------------------------------------------------------------------------------
def fold_heartbeat(
    segments: list[list[float]], last: float | None, t: float, timeout: float
) -> tuple[list[list[float]], float | None]:
    """Fold a heartbeat at ``t`` into the kiosk's online segments; returns (segments, last heartbeat).

    Two heartbeats at most ``timeout`` apart mean the kiosk was online in between; a longer gap was offline.
    A heartbeat older than the last one is ignored (it cannot extend anything the segments do not cover).
    """
    if last is not None and t <= last:
        return segments, last
    if last is not None and segments and t - last <= timeout:
        segments[-1][1] = t
    else:
        segments.append([t, t])
    return segments, t


def is_online(last: float | None, now: float, timeout: float) -> bool:
    return last is not None and now - last <= timeout


def online_intervals(
    segments: Sequence[Sequence[float]], last: float | None, now: float, timeout: float
) -> list[Interval]:
    """Online time: the heartbeat segments plus, while heartbeats are still fresh, the time since the last one."""
    out: list[Sequence[float]] = list(segments)
    if last is not None and is_online(last, now, timeout):
        out.append((last, now))
    return merge(out)


@dataclass(frozen=True)
class Availability:
    scheduled_s: float
    online_s: float
    journeys: dict[str, tuple[float, float]]  # journey → (available seconds, scheduled seconds) if offered


@functools.lru_cache(maxsize=256)  # a few peripheral sets in a city, asked for every kiosk on every KPI pass
def offered_journeys(peripherals: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(journey, peripherals it needs)`` of the journeys a kiosk fitted with ``peripherals`` offers."""
    fitted = set(peripherals)
    return tuple((journey, needs) for journey, needs in JOURNEY_NEEDS.items() if fitted.issuperset(needs))


def kiosk_availability(
    kiosk: Mapping,
    online: Sequence[Interval],
    down: Mapping[str, Sequence[Interval]],
    start: float,
    end: float,
    closed_days: frozenset[int] = frozenset(),
) -> Availability:
    """Technical and per-journey functional availability of one kiosk within ``[start, end)``.

    ``kiosk`` has ``hours``, ``since`` (in service since, Unix s) and ``peripherals`` (fitted); ``down`` maps a
    peripheral to the merged intervals it was unusable. Only scheduled (opening) time counts.
    """
    scheduled = opening_intervals(kiosk["hours"], max(start, float(kiosk["since"])), end, closed_days)
    up = intersect(scheduled, online)
    sched_s, up_s = total(scheduled), total(up)
    journeys: dict[str, tuple[float, float]] = {}
    for journey, needs in offered_journeys(tuple(kiosk["peripherals"])):
        blocked = [iv for p in needs for iv in down.get(p, ())]
        # Usually no needed peripheral was ever down: the journey was available whenever the kiosk was up (the
        # KPI pass evaluates every kiosk, so this skips most of its interval work).
        journeys[journey] = (total(subtract(up, merge(blocked))) if blocked else up_s, sched_s)
    return Availability(sched_s, up_s, journeys)


# Faults -----------------------------------------------------------------------------------------------------------
def fault_type(peripheral: str, state: str, paper: str | None) -> str | None:
    """The fault a peripheral status amounts to, or None when the device is usable (:data:`XFS_USABLE`: online or
    busy, with paper for a printer)."""
    if state == "fraud_attempt":
        return "fraud_attempt"
    if state == "hardware_error":
        return "hardware_error"
    if state in ("offline", "power_off", "no_device"):
        return "device_offline"
    if state == "user_error":
        return "user_error"
    if peripheral == "printer" and paper == "out":
        return "paper_out"
    if peripheral == "printer" and paper == "jammed":
        return "paper_jam"
    return None


@dataclass(frozen=True)
class PeripheralHistory:
    """One peripheral folded from its status changes: its current state, paper and fault, since when it has had
    that fault (or been fault-free), and the intervals it was unusable (``end`` None: still)."""

    state: str
    paper: str | None
    fault: str | None
    since: float | None
    at: float | None
    down: list[tuple[float, float | None]]

    def down_intervals(self, until: float) -> list[Interval]:
        """The merged intervals it was unusable, one still open ending at ``until``."""
        return merge((s, e if e is not None else until) for s, e in self.down)


def fold_peripheral(peripheral: str, changes: Iterable[tuple[float, str, str | None]]) -> PeripheralHistory:
    """Fold time-ordered ``(t, state, paper)`` changes of ``peripheral`` as the KPI processor does: a change
    without paper keeps the last paper known; :func:`fault_type` decides usable or not; a fault opens a down
    interval, the next fault-free change closes it. Before any change the device counts as online."""
    state, paper, fault, since, at = "online", None, None, None, None
    down: list[tuple[float, float | None]] = []
    for t, new_state, new_paper in changes:
        if at is not None and t < at:
            continue  # older than what is known (the processor ignores it too)
        paper = new_paper if new_paper is not None else paper
        new_fault = fault_type(peripheral, new_state, paper)
        if new_fault != fault:
            if fault is not None and down and down[-1][1] is None:
                down[-1] = (down[-1][0], t)
            if new_fault is not None:
                down.append((t, None))
            fault, since = new_fault, t
        state, at = new_state, t
    return PeripheralHistory(state, paper, fault, since, at, down)


def ratio(numerator: float, denominator: float | None, scale: float = 1.0) -> float | None:
    if not denominator:
        return None
    return numerator / denominator * scale


# Ingest checks ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KioskInfo:
    """What ingest needs to know about a registered kiosk (cached in memory)."""

    kiosk_id: str
    district: str
    peripherals: frozenset[str]
    active: bool
    gateway: str | None = None


def may_report(
    principal_id: str, attributes: Mapping, privileged: bool, kiosk_id: str, registry: Mapping[str, KioskInfo]
) -> bool:
    """Whether a principal may report for ``kiosk_id``: privileged, listed in its attributes, or its gateway."""
    if privileged:
        return True
    allowed = attributes.get("kiosks")
    if isinstance(allowed, list) and kiosk_id in allowed:
        return True
    info = registry.get(kiosk_id)
    return info is not None and info.gateway is not None and info.gateway == principal_id


def _time_error(t: datetime, now: datetime, max_skew_s: float, max_age_s: float) -> str | None:
    delta = (t - now).total_seconds()
    if delta > max_skew_s:
        return f"is more than {int(max_skew_s)} s in the future (check the kiosk clock)"
    if -delta > max_age_s:
        return f"is older than {int(max_age_s // 3600)} h"
    return None


def _kiosk_error(index: int, kiosk_id: str, registry: Mapping[str, KioskInfo]) -> ItemError | None:
    info = registry.get(kiosk_id)
    if info is None:
        return ItemError(index, kiosk_id, "kiosk_id", "unknown kiosk: register it first", "unknown_entity")
    if not info.active:
        return ItemError(index, kiosk_id, "kiosk_id", "the kiosk is decommissioned", "inactive")
    return None


def check_heartbeats(
    items: Sequence[tuple[int, HeartbeatReceived]],
    registry: Mapping[str, KioskInfo],
    now: datetime,
    *,
    max_skew_s: float,
    max_age_s: float,
) -> tuple[list[HeartbeatReceived], list[ItemError], int]:
    """Domain checks on valid heartbeats: known, active kiosk; plausible time; duplicates in the batch skipped."""
    accepted: list[HeartbeatReceived] = []
    errors: list[ItemError] = []
    seen: set[tuple[str, datetime]] = set()
    dups = 0
    for i, hb in items:
        err = _kiosk_error(i, hb.kiosk_id, registry)
        if err is None and (reason := _time_error(hb.at, now, max_skew_s, max_age_s)):
            err = ItemError(i, hb.kiosk_id, "at", reason, "invalid_time")
        if err is None and hb.uptime_seconds is not None and hb.uptime_seconds > MAX_UPTIME_S:
            # Also keeps integers beyond 64 bits (which the JSON encoder refuses) off the broker.
            err = ItemError(i, hb.kiosk_id, "uptime_seconds", "is more than 20 years", "invalid")
        if err is not None:
            errors.append(err)
        elif (hb.kiosk_id, hb.at) in seen:
            dups += 1
        else:
            seen.add((hb.kiosk_id, hb.at))
            accepted.append(hb)
    return accepted, errors, dups


def check_peripherals(
    items: Sequence[tuple[int, PeripheralStatusChanged]],
    registry: Mapping[str, KioskInfo],
    now: datetime,
    *,
    max_skew_s: float,
    max_age_s: float,
) -> tuple[list[PeripheralStatusChanged], list[ItemError], int]:
    """Domain checks on peripheral status changes: the peripheral must be fitted on that kiosk."""
    accepted: list[PeripheralStatusChanged] = []
    errors: list[ItemError] = []
    seen: set[tuple[str, str, datetime]] = set()
    dups = 0
    for i, ev in items:
        err = _kiosk_error(i, ev.kiosk_id, registry)
        if err is None and ev.peripheral not in registry[ev.kiosk_id].peripherals:
            err = ItemError(
                i,
                ev.kiosk_id,
                "peripheral",
                "this peripheral is not fitted on the kiosk (update the registry)",
                "not_fitted",
            )
        if err is None and (reason := _time_error(ev.at, now, max_skew_s, max_age_s)):
            err = ItemError(i, ev.kiosk_id, "at", reason, "invalid_time")
        if err is not None:
            errors.append(err)
        elif (ev.kiosk_id, ev.peripheral, ev.at) in seen:
            dups += 1
        else:
            seen.add((ev.kiosk_id, ev.peripheral, ev.at))
            accepted.append(ev)
    return accepted, errors, dups


def check_sessions(
    items: Sequence[tuple[int, SessionEnded]],
    registry: Mapping[str, KioskInfo],
    now: datetime,
    *,
    max_skew_s: float,
    max_age_s: float,
) -> tuple[list[SessionEnded], list[ItemError], int]:
    """Domain checks on sessions: known kiosk, plausible times and duration, session ids unique in the batch."""
    accepted: list[SessionEnded] = []
    errors: list[ItemError] = []
    seen: set[tuple[str, str]] = set()
    dups = 0
    for i, s in items:
        err = _kiosk_error(i, s.kiosk_id, registry)
        if err is None and (reason := _time_error(s.ended_at, now, max_skew_s, max_age_s)):
            err = ItemError(i, s.session_id, "ended_at", reason, "invalid_time")
        if err is None and (s.ended_at - s.started_at).total_seconds() > MAX_SESSION_SECONDS:
            err = ItemError(
                i,
                s.session_id,
                "ended_at",
                f"a session lasts at most {MAX_SESSION_SECONDS} s",
                "invalid_time",
            )
        if err is not None:
            errors.append(err)
        elif (s.kiosk_id, s.session_id) in seen:
            dups += 1
        else:
            seen.add((s.kiosk_id, s.session_id))
            accepted.append(s)
    return accepted, errors, dups


def check_registration(entry: KioskRegistered, areas: Hierarchy) -> list[tuple[str, str]]:
    """Registry rules beyond the schema: known district and commune, peripherals listed once.

    Returns ``(field, reason)`` pairs; empty when the entry is valid.
    """
    problems: list[tuple[str, str]] = []
    district = areas.areas.get(entry.district)
    if district is None or district.parent != CITY_CODE:  # a top area: a district (2019), a commune (2025)
        problems.append(("district", "unknown district code"))
    if entry.commune is not None:
        commune = areas.areas.get(entry.commune)
        if commune is None or commune.level != "commune":
            problems.append(("commune", "unknown commune code"))
        elif not areas.contains(entry.district, entry.commune):
            problems.append(("commune", "the commune is not in that district"))
    if len(set(entry.peripherals)) != len(entry.peripherals):
        problems.append(("peripherals", "a peripheral is listed twice"))
    return problems


# C0/C1 control characters (PostgreSQL text cannot even store NUL) and bidirectional overrides/isolates/marks,
# which make what an operator reads differ from what is stored ("Trojan source" style spoofing).
_UNSAFE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def unsafe_text_reason(value: str) -> str | None:
    """Why free text (a building, an address) is refused, or ``None`` when it is fine to store and display."""
    if _UNSAFE_TEXT.search(value):
        return "contains control or bidirectional-override characters"
    return None


def check_service_start(in_service_since: datetime | None, now: datetime, max_skew_s: float) -> str | None:
    """A kiosk cannot have entered service in the future (beyond the allowed clock skew)."""
    if in_service_since is not None and (in_service_since - now).total_seconds() > max_skew_s:
        return f"is more than {int(max_skew_s)} s in the future"
    return None


def epoch(t: datetime) -> float:
    return t.timestamp()


def from_epoch(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)
