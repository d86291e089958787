"""Traffic-signal domain logic: event codes, ingest screening, detector imports and live signal state; the ATSPM
measures engine is in measures.py (re-exported here).

Pure: no I/O, no clock (callers pass ``now``). Times inside the engines are integer epoch milliseconds so the
state stays JSON-serialisable for the stream processor's changelog. Measures, conventions and sources:
docs/traffic-measures.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.ingest import ItemError

from .measures import (  # noqa: F401  (re-exported: the measures engine and its formulas)
    BEGIN_GREEN,
    BEGIN_RED_CLEARANCE,
    BEGIN_YELLOW,
    DETECTOR_FAULTS,
    DETECTOR_OFF,
    DETECTOR_ON,
    END_RED_CLEARANCE,
    END_YELLOW,
    FAULT_NAMES,
    FLASH_CLEARED_PARAMS,
    PED_BEGIN_CLEARANCE,
    PED_BEGIN_DONT_WALK,
    PED_BEGIN_WALK,
    PED_DARK,
    PHASE_INACTIVE,
    POWER_FAILURE,
    POWER_RESTORED,
    PREEMPT_CALL_OFF,
    PREEMPT_CALL_ON,
    ROR_WINDOW_MS,
    SPLIT_FAILURE_THRESHOLD,
    UNIT_FLASH,
    USED_CODES,
    CycleArrivals,
    MeasureParams,
    MeasuresEngine,
    classify_arrivals,
    config_from_registry,
    is_split_failure,
    occupied_ms,
    ratio,
    split_failure_ratios,
    stop_bar_time_ms,
)

# --- Indiana hi-res enumerations ------------------------------------------------------------------------------
# The measures and their codes live in measures.py; the live signal state reads these too.
PREEMPT_ON, PREEMPT_OFF = PREEMPT_CALL_ON, PREEMPT_CALL_OFF
#: every code of the enumeration (0-255) and of the vendor range above it is accepted; the engine reads the codes in
#: ``USED_CODES`` and carries the others (counted per bin as ``unused_events``)
KNOWN_CODES = range(0, 65536)
#: the oldest event time accepted even in backfill: earlier means a controller clock reset (2000-01-01 UTC)
OLDEST_PLAUSIBLE_MS = 946_684_800_000


def to_ms(t: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return round(t.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


_MINUTE_PREFIX: dict[int, str] = {}  # epoch minute → "YYYY-MM-DDTHH:MM:"


def iso_ms(ms: int) -> str:
    """``from_ms(ms).isoformat()`` with ``Z`` for UTC; the minute's text is cached (this runs per hi-res event)."""
    if type(ms) is not int:
        return from_ms(ms).isoformat().replace("+00:00", "Z")
    minute, rest = divmod(ms, 60_000)
    prefix = _MINUTE_PREFIX.get(minute)
    if prefix is None:
        if len(_MINUTE_PREFIX) >= 10_000:
            _MINUTE_PREFIX.clear()
        prefix = _MINUTE_PREFIX[minute] = from_ms(minute * 60_000).isoformat()[:17]
    sec, milli = divmod(rest, 1000)
    return f"{prefix}{sec:02d}.{milli:03d}000Z" if milli else f"{prefix}{sec:02d}Z"


# --- Ingest screening ----------------------------------------------------------------------------------------
@dataclass
class ControllerWatermark:
    """What ingest remembers of one controller: its latest accepted time and the recent events (duplicates)."""

    high_ms: int = 0
    recent: set[tuple[int, int, int]] = field(default_factory=set)


@dataclass
class Screened:
    """Outcome of screening a batch: accepted events grouped by controller (time-ordered), errors, duplicates."""

    accepted: dict[str, list[tuple[int, int, int]]]
    errors: list[ItemError]
    duplicates: int
    undo: dict[str, ControllerWatermark]


class IngestScreen:
    """Ingest checks that need memory: out-of-order beyond a tolerance and duplicates, per controller.

    ``screen`` reserves what it accepts (so a concurrent request cannot accept the same events twice); call
    ``rollback`` with the result when publishing failed.
    """

    def __init__(
        self,
        *,
        future_tolerance_s: float,
        out_of_order_tolerance_s: float,
        max_age_s: float | None = 30 * 86400,
    ):
        """``max_age_s`` None (backfill): any age is accepted down to :data:`OLDEST_PLAUSIBLE_MS`."""
        self.future_ms = int(future_tolerance_s * 1000)
        self.max_age_ms = None if max_age_s is None else int(max_age_s * 1000)
        self.ooo_ms = int(out_of_order_tolerance_s * 1000)
        self.controllers: dict[str, ControllerWatermark] = {}

    def screen(
        self,
        items: Sequence[tuple[int, str, int, int, int]],
        known_controllers: Iterable[str] | dict,
        now: datetime,
    ) -> Screened:
        """Screen ``(index, controller_id, t_ms, code, param)`` items already valid in shape."""
        now_ms = to_ms(now)
        errors: list[ItemError] = []
        accepted: dict[str, list[tuple[int, int, int]]] = {}
        undo: dict[str, ControllerWatermark] = {}
        duplicates = 0
        known = known_controllers
        controllers = self.controllers
        oldest_ok = OLDEST_PLAUSIBLE_MS if self.max_age_ms is None else now_ms - self.max_age_ms
        latest_ok, ooo_ms = now_ms + self.future_ms, self.ooo_ms
        # The controller of the previous item, cached: a gateway's batch holds runs of one controller.
        # the current controller's state, carried while consecutive items share a controller
        last_cid: str | None = None
        wm = before = ControllerWatermark()
        recent: set[tuple[int, int, int]] = set()
        mine: list | None = None
        for index, cid, t, code, param in items:
            if cid != last_cid:
                last_cid = None
                if cid not in known:
                    errors.append(
                        ItemError(
                            index,
                            cid,
                            "controller_id",
                            "unknown controller: register the intersection first",
                            "unknown_entity",
                        )
                    )
                    continue
            if t > latest_ok:
                errors.append(
                    ItemError(
                        index,
                        cid,
                        "timestamp",
                        f"timestamp is more than {self.future_ms / 1000:g} s in the future",
                        "future_timestamp",
                    )
                )
                continue
            if t < oldest_ok:
                # A controller clock reset (1970), or history sent without backfill.
                errors.append(
                    ItemError(
                        index,
                        cid,
                        "timestamp",
                        "timestamp is before 2000: a controller clock reset"
                        if self.max_age_ms is None
                        else f"timestamp is more than {self.max_age_ms / 86_400_000:g} days old "
                        "(send history with ?backfill=true)",
                        "too_old",
                    )
                )
                continue
            if cid != last_cid:
                current = controllers.get(cid)
                if current is None:
                    current = controllers[cid] = ControllerWatermark()
                wm = current
                saved = undo.get(cid)
                if saved is None:
                    saved = undo[cid] = ControllerWatermark(wm.high_ms, set())
                before = saved
                mine = accepted.get(cid)
                recent, last_cid = wm.recent, cid
            key = (t, code, param)
            if key in recent:
                duplicates += 1
                continue
            # Out of order relative to everything accepted before it (earlier requests and earlier items).
            if t < wm.high_ms - ooo_ms:
                errors.append(
                    ItemError(
                        index,
                        cid,
                        "timestamp",
                        f"out of order: more than "
                        f"{ooo_ms / 1000:g} s older than this controller's latest event",
                        "out_of_order",
                    )
                )
                continue
            recent.add(key)
            if t > wm.high_ms:
                wm.high_ms = t
            before.recent.add(key)
            if mine is None:
                mine = accepted[cid] = []
            mine.append(key)
        for cid, evs in accepted.items():
            evs.sort()
            wm = controllers[cid]
            floor = wm.high_ms - ooo_ms
            if len(wm.recent) > 64:
                wm.recent = {k for k in wm.recent if k[0] >= floor}
        return Screened(accepted, errors, duplicates, undo)

    def forget(self, controller_ids: Iterable[str]) -> None:
        """Drop what is remembered of these controllers (a backfill of their log ended: the next may be older)."""
        for cid in controller_ids:
            self.controllers.pop(cid, None)

    def rollback(self, screened: Screened) -> None:
        """Forget what ``screened`` reserved (its events were not published)."""
        for cid, before in screened.undo.items():
            wm = self.controllers.get(cid)
            if wm is None:
                continue
            wm.recent -= before.recent
            wm.high_ms = before.high_ms


# --- Entity ownership -----------------------------------------------------------------------------------------
def may_report(
    principal_id: str, privileged: bool, controller_id: str, registry: Mapping[str, Mapping[str, Any]]
) -> bool:
    """Whether a principal may report hi-res events for ``controller_id`` (registry: controller id → row).

    Privileged (``traffic:admin``): any controller. Otherwise a registered controller only when its ``gateway``
    is this principal; one without a gateway is reported by privileged principals only. An unregistered
    controller is not this rule's business: ingest rejects its events as ``unknown_entity`` item by item.
    """
    if privileged:
        return True
    row = registry.get(controller_id)
    if row is None:
        return True
    gateway = row.get("gateway")
    return gateway is not None and gateway == principal_id


# --- Registry imports ---------------------------------------------------------------------------------------
# Detection types of the common ATSPM configuration layouts and the IOC function each serves (names compared in lower
# case without spaces or punctuation). UDOT ATSPM (DetectionTypes enum, v4/v5) and its metrics: Advanced Count (AC)
# and Advanced Speed (AS) feed arrivals on green, approach delay and speed; Lane-by-lane Count (LLC) turning-movement
# counts; Lane-by-lane with Speed Restriction (LLS) the yellow and red actuations; Stop Bar Presence (SBP) split
# failures; Advanced Presence (AP) is upstream detection. atspm (Python) uses Advance, Presence and Yellow_Red.
DETECTOR_FUNCTIONS = {
    **dict.fromkeys(
        (
            "advance",
            "advanced",
            "advancecount",
            "advancedcount",
            "ac",
            "advancespeed",
            "advancedspeed",
            "as",
            "advancepresence",
            "advancedpresence",
            "ap",
        ),
        "advance",
    ),
    **dict.fromkeys(
        (
            "presence",
            "stopbar",
            "stopbarpresence",
            "sbp",
            "lanebylanepresence",
        ),
        "presence",
    ),
    **dict.fromkeys(
        (
            "count",
            "stopbarcount",
            "lanebylanecount",
            "llc",
            "basic",
            "b",
            "passage",
            "p",
            "demand",
            "d",
            "intermediatequeue",
            "iq",
            "excessivequeue",
            "eq",
            "unknown",
            "na",
        ),
        "count",
    ),
    **dict.fromkeys(
        ("yellowred", "yellowandred", "lanebylanewithspeedrestriction", "lls", "redlightrunning"),
        "yellow_red",
    ),
}
# UDOT ATSPM DetectionTypeId → type (an export may carry the numbers instead of the names)
DETECTION_TYPE_IDS = {
    "0": "unknown",
    "1": "basic",
    "2": "advancedcount",
    "3": "advancedspeed",
    "4": "lanebylanecount",
    "5": "lanebylanewithspeedrestriction",
    "6": "stopbarpresence",
    "7": "advancedpresence",
    "8": "passage",
    "9": "demand",
    "10": "intermediatequeue",
    "11": "excessivequeue",
}
# A channel of several types takes the first of these as its function, the others as additional functions.
_FUNCTION_ORDER = ("presence", "advance", "yellow_red", "count")
FEET, MPH = 0.3048, 1.609344


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _pick(row: dict[str, str], *names: str) -> str | None:
    wanted = {_norm(n) for n in names}
    for k, v in row.items():
        if k is not None and _norm(k) in wanted:
            return (v or "").strip()
    return None


def detector_functions(text: str) -> list[str] | None:
    """The IOC functions of a detection-type cell (one type, or several separated by ``,`` ``;`` ``|`` ``/``), in
    :data:`_FUNCTION_ORDER`; None when a type is not understood."""
    found = set()
    parts = [p for p in text.replace(";", ",").replace("|", ",").replace("/", ",").split(",") if p.strip()]
    if not parts:
        return None
    for part in parts:
        key = _norm(part)
        function = DETECTOR_FUNCTIONS.get(DETECTION_TYPE_IDS.get(key, key))
        if function is None:
            return None
        found.add(function)
    return [f for f in _FUNCTION_ORDER if f in found]


def parse_detector_rows(
    rows: Iterable[dict[str, str]],
) -> tuple[list[tuple[int, str, dict[str, Any]]], list[ItemError]]:
    """ATSPM-style detector rows → ``(index, controller_id, detector dict)``; the parameter is the channel.

    Columns (names compared without case, spaces or punctuation): the controller (``DeviceId``, ``SignalID``), the
    channel (``Parameter``, ``DetChannel``), the phase (``Phase``, ``ProtectedPhaseNumber``), the detection type
    (``Function``, ``DetectionTypes``, ``DetectionType``, ``DetectionTypeId``); optional distance to the stop bar in
    metres (``Distance``, ``distance_m``) or feet (``DistanceFromStopBar``, UDOT) and approach speed in km/h
    (``Speed``, ``speed_kmh``) or mph (``MPH``, ``ApproachSpeed``, ``MinSpeedFilter``, UDOT). Each refused row says
    its CSV line (the header is line 1)."""
    out: list[tuple[int, str, dict[str, Any]]] = []
    errors: list[ItemError] = []
    for i, row in enumerate(rows):
        line = f"line {i + 2}: "
        if None in row:
            errors.append(ItemError(i, None, None, line + "more cells than header columns"))
            continue
        cid = _pick(row, "DeviceId", "SignalID", "controller_id", "Signal")
        if not cid:
            errors.append(ItemError(i, None, "DeviceId", line + "missing controller (DeviceId / SignalID)"))
            continue
        fn_raw = _pick(row, "Function", "DetectionTypes", "DetectionType", "DetectionTypeId", "function")
        functions = detector_functions(fn_raw or "")
        if functions is None:
            errors.append(
                ItemError(
                    i,
                    cid,
                    "Function",
                    line + f"detection type {fn_raw!r} is not one IOC knows (see docs/traffic-measures.md)"
                    if fn_raw
                    else line + "missing detection type (Function / DetectionTypes)",
                )
            )
            continue
        try:
            det = {
                "channel": int(_pick(row, "Parameter", "DetChannel", "DetectorChannel", "channel") or ""),
                "phase": int(_pick(row, "Phase", "ProtectedPhaseNumber", "PhaseNumber") or ""),
                "function": functions[0],
            }
        except ValueError:
            errors.append(
                ItemError(
                    i, cid, "Parameter", line + "detector channel (Parameter) and Phase must be integers"
                )
            )
            continue
        if len(functions) > 1:
            det["additional_functions"] = functions[1:]
        try:
            dist_m = _pick(row, "Distance", "distance_m")
            dist_ft = _pick(row, "DistanceFromStopBar")
            speed_kmh = _pick(row, "Speed", "speed_kmh")
            speed_mph = _pick(row, "MPH", "ApproachSpeed", "MinSpeedFilter")
            det["distance_m"] = (
                float(dist_m) if dist_m else round(float(dist_ft) * FEET, 3) if dist_ft else None
            )
            det["speed_kmh"] = (
                float(speed_kmh) if speed_kmh else round(float(speed_mph) * MPH, 3) if speed_mph else None
            ) or None  # UDOT writes 0 for "no speed"
        except ValueError:
            errors.append(ItemError(i, cid, "Distance", line + "distance and speed must be numbers"))
            continue
        out.append((i, cid, det))
    return out, errors


# --- Live signal state (SPaT-like) ---------------------------------------------------------------------------
# SAE J2735 MovementPhaseState: 1 dark, 2 flashing red (stop-then-proceed), 3 red (stop-and-remain),
# 6 protected green, 8 protected clearance (yellow). Protected/permissive is not in the event log: protected.
MOVEMENT_STATE = {"dark": 1, "flashing": 2, "red": 3, "green": 6, "yellow": 8}
_COLOR_OF = {
    BEGIN_GREEN: "green",
    BEGIN_YELLOW: "yellow",
    END_YELLOW: "red",
    BEGIN_RED_CLEARANCE: "red",
    END_RED_CLEARANCE: "red",
    PHASE_INACTIVE: "red",
}
_PED_OF = {
    PED_BEGIN_WALK: "walk",
    PED_BEGIN_CLEARANCE: "flashing_dont_walk",
    PED_BEGIN_DONT_WALK: "dont_walk",
    PED_DARK: "dark",
}


def new_signal_state(phases: Iterable[int] = ()) -> dict[str, Any]:
    return {
        "rev": 0,
        "at": 0,
        "flash": False,
        "power": False,
        "preempt": False,
        "dirty": False,
        "phases": {str(p): {"color": "red", "ped": "dont_walk", "since": None} for p in phases},
    }


def fold_signal_state(s: dict[str, Any], t: int, code: int, param: int) -> bool:
    """Apply one event to a live signal state; True when something visible changed."""
    # Compares only what the event can touch (this runs for every hi-res event).
    color = _COLOR_OF.get(code)
    ped = _PED_OF.get(code) if color is None else None
    if color is not None or ped is not None:
        phases = s["phases"]
        ph = phases.get(str(param))
        changed = ph is None
        if changed:
            ph = phases[str(param)] = {"color": "red", "ped": "dont_walk", "since": None}
        if color is not None:
            if ph["color"] != color:
                ph["color"], ph["since"] = color, t
                changed = True
        elif ph["ped"] != ped:
            ph["ped"] = ped
            changed = True
    elif code == UNIT_FLASH:
        flash = param not in FLASH_CLEARED_PARAMS
        changed = s["flash"] != flash
        s["flash"] = flash
    elif code == POWER_FAILURE or code == POWER_RESTORED:
        changed = s["power"] != (code == POWER_FAILURE)
        s["power"] = code == POWER_FAILURE
    elif code == PREEMPT_ON or code == PREEMPT_OFF:
        changed = s["preempt"] != (code == PREEMPT_ON)
        s["preempt"] = code == PREEMPT_ON
    else:
        return False
    if changed:
        s["rev"] += 1
        s["at"] = max(s["at"], t)
        s["dirty"] = True
    return changed


def signal_state_phases(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-phase colours as published: a dark (power failure) or flashing unit overrides the phase colours."""
    out = []
    for key in sorted(s["phases"], key=int):
        ph = s["phases"][key]
        color = "dark" if s["power"] else "flashing" if s["flash"] else ph["color"]
        ped = "dark" if s["power"] or s["flash"] else ph["ped"]
        out.append(
            {
                "phase": int(key),
                "color": color,
                "movement_state": MOVEMENT_STATE[color],
                "ped": ped,
                "since": iso_ms(ph["since"]) if ph["since"] is not None else None,
            }
        )
    return out
