"""Traffic-signal domain logic: event codes, ingest screening, ATSPM measures and live signal state.

Pure: no I/O, no clock (callers pass ``now``). Times inside the engines are integer epoch milliseconds so the
state stays JSON-serialisable for the stream processor's changelog. Formulas follow domain-notes §1 (ATSPM).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.ingest import ItemError

# --- Indiana hi-res enumerations ------------------------------------------------------------------------------
PHASE_ON, BEGIN_GREEN = 0, 1
GAP_OUT, MAX_OUT, FORCE_OFF, GREEN_TERMINATION = 4, 5, 6, 7
BEGIN_YELLOW, END_YELLOW, BEGIN_RED_CLEARANCE, END_RED_CLEARANCE, PHASE_INACTIVE = 8, 9, 10, 11, 12
PED_BEGIN_WALK, PED_BEGIN_CLEARANCE, PED_BEGIN_DONT_WALK, PED_DARK = 21, 22, 23, 24
PED_CALL_REGISTERED = 45
DETECTOR_OFF, DETECTOR_ON = 81, 82
DETECTOR_FAULTS = frozenset({84, 85, 86, 87, 88})
PED_DETECTOR_OFF, PED_DETECTOR_ON = 89, 90
PREEMPT_ON, PREEMPT_OFF = 102, 104
UNIT_FLASH = 173
POWER_FAILURE, POWER_RESTORED = 182, 184
# Codes defined by the Indiana enumerations (2012) as used by ATSPM; reserved codes are rejected at ingest.
# The exact upper ranges (cabinet/system events past 185) are unverified: 200-203 are accepted as well.
KNOWN_CODES = frozenset(
    [
        *range(0, 34),
        *range(41, 50),
        *range(61, 69),
        *range(81, 93),
        *range(101, 153),
        *range(171, 186),
        *range(200, 204),
    ]
)
# NTCIP 1202 unitFlashStatus: 2 = notFlash. Any other value of a 173 event means the unit is flashing
# (unverified which values a given controller logs: choose the conservative reading).
FLASH_CLEARED_PARAMS = frozenset({2})
FAULT_NAMES = {84: "other", 85: "watchdog", 86: "open loop", 87: "shorted loop", 88: "excessive change"}


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
        self, *, future_tolerance_s: float, out_of_order_tolerance_s: float, max_age_s: float = 30 * 86400
    ):
        self.future_ms = int(future_tolerance_s * 1000)
        self.max_age_ms = int(max_age_s * 1000)
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
        latest_ok, oldest_ok, ooo_ms = now_ms + self.future_ms, now_ms - self.max_age_ms, self.ooo_ms
        # The controller of the previous item, cached: a gateway's batch holds runs of one controller.
        last_cid = wm = recent = mine = before = None
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
            if code not in KNOWN_CODES:
                errors.append(
                    ItemError(
                        index,
                        cid,
                        "event_code",
                        f"event code {code} is not an Indiana hi-res enumeration",
                        "unknown_code",
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
                # A controller clock reset (1970) or a log far older than a replay should bring.
                errors.append(
                    ItemError(
                        index,
                        cid,
                        "timestamp",
                        f"timestamp is more than {self.max_age_ms / 86_400_000:g} days old",
                        "too_old",
                    )
                )
                continue
            if cid != last_cid:
                wm = controllers.get(cid)
                if wm is None:
                    wm = controllers[cid] = ControllerWatermark()
                before = undo.get(cid)
                if before is None:
                    before = undo[cid] = ControllerWatermark(wm.high_ms, set())
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
# ATSPM detection types and their IOC function (advance = upstream with distance and speed; presence = stop bar).
DETECTOR_FUNCTIONS = {
    "advance": "advance",
    "advance count": "advance",
    "advance speed": "advance",
    "advance presence": "advance",
    "presence": "presence",
    "stop bar": "presence",
    "stopbar": "presence",
    "stop bar presence": "presence",
    "lane-by-lane presence": "presence",
    "count": "count",
    "lane-by-lane count": "count",
}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _pick(row: dict[str, str], *names: str) -> str | None:
    wanted = {_norm(n) for n in names}
    for k, v in row.items():
        if k is not None and _norm(k) in wanted:
            return (v or "").strip()
    return None


def parse_detector_rows(
    rows: Iterable[dict[str, str]],
) -> tuple[list[tuple[int, str, dict[str, Any]]], list[ItemError]]:
    """ATSPM-style detector rows (``DeviceId, Phase, Parameter, Function`` [, ``Distance``, ``Speed``]) →
    ``(index, controller_id, detector dict)``; the parameter is the detector channel."""
    out: list[tuple[int, str, dict[str, Any]]] = []
    errors: list[ItemError] = []
    for i, row in enumerate(rows):
        cid = _pick(row, "DeviceId", "SignalID", "controller_id")
        if not cid:
            errors.append(ItemError(i, None, "DeviceId", "missing controller (DeviceId)"))
            continue
        fn_raw = (_pick(row, "Function", "DetectionType") or "").lower()
        function = DETECTOR_FUNCTIONS.get(fn_raw)
        if function is None:
            errors.append(
                ItemError(i, cid, "Function", "function must be advance, presence, stop bar or count")
            )
            continue
        try:
            det = {
                "channel": int(_pick(row, "Parameter", "DetChannel", "channel") or ""),
                "phase": int(_pick(row, "Phase") or ""),
                "function": function,
            }
        except ValueError:
            errors.append(
                ItemError(i, cid, "Parameter", "detector channel (Parameter) and Phase must be integers")
            )
            continue
        try:
            dist = _pick(row, "Distance", "DistanceFromStopBar", "distance_m")
            speed = _pick(row, "Speed", "MinSpeedFilter", "ApproachSpeed", "speed_kmh")
            det["distance_m"] = float(dist) if dist else None
            det["speed_kmh"] = float(speed) if speed else None
        except ValueError:
            errors.append(ItemError(i, cid, "Distance", "distance and speed must be numbers"))
            continue
        out.append((i, cid, det))
    return out, errors


# --- Formulas (domain-notes §1) ------------------------------------------------------------------------------
def stop_bar_time_ms(t_on_ms: int, distance_m: float | None, speed_kmh: float | None) -> int:
    """Shift an advance detector actuation to the stop bar: ``t_on + distance / (speed / 3.6)``."""
    if not distance_m or not speed_kmh:
        return t_on_ms
    return t_on_ms + round(distance_m / (speed_kmh / 3.6) * 1000)


@dataclass(frozen=True)
class CycleArrivals:
    on_red: int
    on_green: int
    on_yellow: int
    delay_s: float


def classify_arrivals(
    arrivals_ms: Iterable[int], green_ms: int, yellow_ms: int, red_end_ms: int
) -> CycleArrivals:
    """Arrivals of one red-to-red cycle: before green → on red (delay = green − arrival); green to yellow → on
    green; yellow to the next red → on yellow. Arrivals at or after ``red_end_ms`` belong to the next cycle."""
    red = green = yellow = 0
    delay = 0
    for a in arrivals_ms:
        if a < green_ms:
            red += 1
            delay += green_ms - a
        elif a < yellow_ms:
            green += 1
        elif a < red_end_ms:
            yellow += 1
    return CycleArrivals(red, green, yellow, delay / 1000)


def occupied_ms(intervals: Iterable[Sequence[int]], start_ms: int, end_ms: int) -> int:
    """Time within ``[start, end)`` covered by any of the on/off ``intervals`` (overlaps merged, clipped)."""
    clipped = sorted((max(a, start_ms), min(b, end_ms)) for a, b in intervals if b > start_ms and a < end_ms)
    total = 0
    cur_a = cur_b = None
    for a, b in clipped:
        if cur_b is None or a > cur_b:
            if cur_b is not None:
                total += cur_b - cur_a
            cur_a, cur_b = a, b
        else:
            cur_b = max(cur_b, b)
    if cur_b is not None:
        total += cur_b - cur_a
    return total


SPLIT_FAILURE_THRESHOLD = 0.80
ROR_WINDOW_MS = 5000


def split_failure_ratios(
    intervals: Iterable[Sequence[int]], green_ms: int, yellow_ms: int, red_ms: int
) -> tuple[float, float]:
    """``(GOR, ROR5)``: occupancy ratio over the green and over the first 5 s of red."""
    intervals = list(intervals)
    green_len = yellow_ms - green_ms
    gor = occupied_ms(intervals, green_ms, yellow_ms) / green_len if green_len > 0 else 0.0
    ror5 = occupied_ms(intervals, red_ms, red_ms + ROR_WINDOW_MS) / ROR_WINDOW_MS
    return gor, ror5


def is_split_failure(gor: float, ror5: float) -> bool:
    return gor > SPLIT_FAILURE_THRESHOLD and ror5 > SPLIT_FAILURE_THRESHOLD


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


# --- Measures engine -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeasureParams:
    bin_ms: int = 900_000
    grace_ms: int = 300_000
    stuck_on_ms: int = 600_000
    max_out_run: int = 3


def _new_bin_phase() -> dict[str, Any]:
    return {
        "vol": 0,
        "dv": {},
        "gap": 0,
        "max": 0,
        "force": 0,
        "cyc": 0,
        "green": 0,
        "cycle": 0,
        "arr": 0,
        "aog": 0,
        "aoy": 0,
        "aor": 0,
        "delay": 0.0,
        "sfc": 0,
        "sf": 0,
        "pedn": 0,
        "pedd": 0.0,
        "faults": 0,
    }


def config_from_registry(reg: dict[str, Any]) -> dict[str, Any]:
    """The processor's compact view of an ``IntersectionConfigured`` payload."""
    return {
        "phases": list(reg.get("phases") or []),
        "dets": {
            str(d["channel"]): [d["phase"], d["function"], d.get("distance_m"), d.get("speed_kmh")]
            for d in reg.get("detectors") or []
        },
    }


class MeasuresEngine:
    """Folds one controller's time-ordered events into 15-minute ATSPM bins per phase.

    ``data`` is the controller's JSON state (kept by the caller); ``cfg`` comes from
    :func:`config_from_registry`. Closed bins go to ``data["closed"]`` and alarm transitions to
    ``data["alarms"]`` until the caller drains them.
    """

    def __init__(self, data: dict[str, Any], cfg: dict[str, Any] | None, params: MeasureParams):
        self.d = data
        self.cfg = cfg or {"phases": [], "dets": {}}
        self.p = params
        if "stuck_check" not in data:  # a new controller (every key is set at once)
            for k, v in (
                ("ph", {}),
                ("bins", {}),
                ("det_on", {}),
                ("closed", []),
                ("alarms", []),
                ("active", {}),
                ("wm", 0),
                ("closed_through", 0),
                ("late", 0),
                ("stuck_check", 0),
            ):
                data.setdefault(k, v)
        # Per-event shortcuts, rebuilt for every engine (never stored): the bin events are going to and the
        # earliest time a split-failure evaluation is due.
        self._bin_start: int | None = None
        self._bin_data: dict[str, Any] | None = None
        self._sf_due = min(
            (ph["sf"][0][2] + ROR_WINDOW_MS for ph in data["ph"].values() if ph["sf"]), default=None
        )

    # -- helpers
    def _phase(self, phase: int) -> dict[str, Any]:
        ph = self.d["ph"].get(str(phase))
        if ph is None:
            ph = self.d["ph"][str(phase)] = {
                "red": None,
                "green": None,
                "yellow": None,
                "arr": [],
                "sf": [],
                "occ": [],
                "open": {},
                "run": 0,
                "ped": None,
            }
        return ph

    def _bin(self, t_ms: int) -> dict[str, Any] | None:
        start = t_ms - t_ms % self.p.bin_ms
        if start == self._bin_start:
            return self._bin_data
        if start < self.d["closed_through"]:
            self.d["late"] += 1
            return None
        b = self.d["bins"].get(str(start))
        if b is None:
            b = self.d["bins"][str(start)] = {"events": 0, "minutes": 0, "phases": {}}
        self._bin_start, self._bin_data = start, b
        return b

    def _bin_phase(self, t_ms: int, phase: int) -> dict[str, Any] | None:
        b = self._bin(t_ms)
        if b is None:
            return None
        bp = b["phases"].get(str(phase))
        if bp is None:
            bp = b["phases"][str(phase)] = _new_bin_phase()
        return bp

    def alarm(self, state: str, alarm_type: str, suffix: str, t_ms: int, severity: str, message: str) -> None:
        """Raise or clear an alarm once (repeats are ignored); transitions queue in ``data["alarms"]``."""
        key = f"{alarm_type}:{suffix}" if suffix else alarm_type
        active = key in self.d["active"]
        if (state == "raised") == active:
            return
        if state == "raised":
            self.d["active"][key] = t_ms
        else:
            self.d["active"].pop(key, None)
        self.d["alarms"].append(
            {
                "key": key,
                "type": alarm_type,
                "state": state,
                "severity": severity,
                "at": t_ms,
                "message": message,
            }
        )

    # -- folding
    def process(self, t: int, code: int, param: int) -> None:
        """Fold one event (time-ordered per controller)."""
        b = self._bin(t)
        if b is not None:
            b["events"] += 1
            b["minutes"] |= 1 << ((t % self.p.bin_ms) // 60_000)
        if t > self.d["wm"]:
            self.d["wm"] = t
        if code == DETECTOR_ON or code == DETECTOR_OFF:
            self._detector(t, code, param)
        elif code == BEGIN_GREEN:
            ph = self._phase(param)
            ph["green"], ph["yellow"] = t, None
        elif code == BEGIN_YELLOW:
            ph = self._phase(param)
            if ph["green"] is not None:
                ph["yellow"] = t
        elif code in (END_YELLOW, BEGIN_RED_CLEARANCE):
            self._red_start(t, param)
        elif code in (GAP_OUT, MAX_OUT, FORCE_OFF):
            self._termination(t, code, param)
        elif code == PED_DETECTOR_ON:
            ph = self._phase(param)  # ped detector n serves phase n (the ATSPM default mapping)
            if ph["ped"] is None:
                ph["ped"] = t
        elif code == PED_BEGIN_WALK:
            ph = self._phase(param)
            if ph["ped"] is not None:
                bp = self._bin_phase(t, param)
                if bp is not None:
                    bp["pedn"] += 1
                    bp["pedd"] += (t - ph["ped"]) / 1000
                ph["ped"] = None
        elif code in DETECTOR_FAULTS:
            det = self.cfg["dets"].get(str(param))
            bp = self._bin_phase(t, det[0]) if det else None
            if bp is not None:
                bp["faults"] += 1
            self.alarm(
                "raised",
                "detector_fault",
                str(param),
                t,
                "minor",
                f"detector channel {param} fault ({FAULT_NAMES[code]})",
            )
        elif code == UNIT_FLASH:
            flashing = param not in FLASH_CLEARED_PARAMS
            self.alarm(
                "raised" if flashing else "cleared",
                "controller_flash",
                "",
                t,
                "major",
                "controller in flash" if flashing else "controller left flash",
            )
        elif code == POWER_FAILURE:
            self.alarm("raised", "power_failure", "", t, "critical", "controller power failure")
        elif code == POWER_RESTORED:
            self.alarm("cleared", "power_failure", "", t, "critical", "controller power restored")
        self._check_pending(t)

    def _detector(self, t: int, code: int, ch: int) -> None:
        det = self.cfg["dets"].get(str(ch))
        if code == DETECTOR_ON:
            self.d["det_on"][str(ch)] = t
            if det is None:
                return
            phase, function, dist, speed = det
            bp = self._bin_phase(t, phase)
            if bp is not None:
                bp["dv"][str(ch)] = bp["dv"].get(str(ch), 0) + 1
                if function in ("advance", "count"):
                    bp["vol"] += 1
            ph = self._phase(phase)
            if function == "advance":
                ph["arr"].append(stop_bar_time_ms(t, dist, speed))
            elif function == "presence":
                ph["open"][str(ch)] = t
            if self.d["active"]:  # clearing needs an active alarm: skip building the message otherwise
                self.alarm(
                    "cleared", "detector_fault", str(ch), t, "minor", f"detector channel {ch} working again"
                )
        else:
            self.d["det_on"].pop(str(ch), None)
            if self.d["active"]:
                self.alarm(
                    "cleared", "stuck_detector", str(ch), t, "minor", f"detector channel {ch} released"
                )
            if det is not None and det[1] == "presence":
                ph = self._phase(det[0])
                on = ph["open"].pop(str(ch), None)
                if on is not None:
                    ph["occ"].append([on, t])

    def _termination(self, t: int, code: int, phase: int) -> None:
        bp = self._bin_phase(t, phase)
        if bp is not None:
            bp[{GAP_OUT: "gap", MAX_OUT: "max", FORCE_OFF: "force"}[code]] += 1
        ph = self._phase(phase)
        if code == MAX_OUT:
            ph["run"] += 1
            if ph["run"] >= self.p.max_out_run:
                self.alarm(
                    "raised",
                    "consecutive_max_outs",
                    str(phase),
                    t,
                    "warning",
                    f"phase {phase} maxed out {ph['run']} times in a row (detector failure or "
                    "under-timed phase)",
                )
        else:
            ph["run"] = 0
            if self.d["active"]:
                self.alarm(
                    "cleared",
                    "consecutive_max_outs",
                    str(phase),
                    t,
                    "warning",
                    f"phase {phase} terminated normally",
                )

    def _red_start(self, t: int, phase: int) -> None:
        ph = self._phase(phase)
        green = ph["green"]
        if green is None:
            # The first red seen starts the first cycle; a second red code (end yellow, then begin red
            # clearance) of the same change is ignored.
            if ph["red"] is None:
                ph["red"] = t
            return
        yellow = ph["yellow"] if ph["yellow"] is not None else t
        if ph["red"] is not None:
            arrivals = [a for a in ph["arr"] if a < t]
            c = classify_arrivals(arrivals, green, yellow, t)
            bp = self._bin_phase(green, phase)
            if bp is not None:
                bp["cyc"] += 1
                bp["green"] += (yellow - green) / 1000
                bp["cycle"] += (t - ph["red"]) / 1000
                bp["arr"] += c.on_red + c.on_green + c.on_yellow
                bp["aog"] += c.on_green
                bp["aoy"] += c.on_yellow
                bp["aor"] += c.on_red
                bp["delay"] += c.delay_s
        # A partial first cycle (no red start seen) is discarded, as ATSPM does.
        ph["arr"] = [a for a in ph["arr"] if a >= t]
        if self._has_presence(phase):
            ph["sf"].append([green, yellow, t])
            if self._sf_due is None or t + ROR_WINDOW_MS < self._sf_due:
                self._sf_due = t + ROR_WINDOW_MS
        ph["red"], ph["green"], ph["yellow"] = t, None, None

    def _has_presence(self, phase: int) -> bool:
        return any(d[0] == phase and d[1] == "presence" for d in self.cfg["dets"].values())

    def _check_pending(self, t: int) -> None:
        """Evaluate split failures whose 5 s of red are over; watch for stuck detectors."""
        if self._sf_due is not None and self._sf_due <= t:
            self._split_failures_due(t)
        if t - self.d["stuck_check"] >= 1000:
            self.d["stuck_check"] = t
            for ch, on in self.d["det_on"].items():
                if t - on >= self.p.stuck_on_ms:
                    self.alarm(
                        "raised",
                        "stuck_detector",
                        ch,
                        t,
                        "minor",
                        f"detector channel {ch} on for more than {self.p.stuck_on_ms // 1000} s",
                    )

    def _split_failures_due(self, t: int) -> None:
        for key, ph in self.d["ph"].items():
            if not ph["sf"] or ph["sf"][0][2] + ROR_WINDOW_MS > t:
                continue
            intervals = ph["occ"] + [[on, t] for on in ph["open"].values()]
            while ph["sf"] and ph["sf"][0][2] + ROR_WINDOW_MS <= t:
                green, yellow, red = ph["sf"].pop(0)
                gor, ror5 = split_failure_ratios(intervals, green, yellow, red)
                bp = self._bin_phase(green, int(key))
                if bp is not None:
                    bp["sfc"] += 1
                    bp["sf"] += int(is_split_failure(gor, ror5))
            keep_from = min([s[0] for s in ph["sf"]] + ([ph["green"]] if ph["green"] is not None else [t]))
            ph["occ"] = [iv for iv in ph["occ"] if iv[1] > keep_from]
        self._sf_due = min(
            (ph["sf"][0][2] + ROR_WINDOW_MS for ph in self.d["ph"].values() if ph["sf"]), default=None
        )

    # -- closing
    def close_bins(self, through_ms: int | None = None) -> None:
        """Close bins whose end plus the grace period is at or before the watermark (or ``through_ms``)."""
        limit = through_ms if through_ms is not None else self.d["wm"] - self.p.grace_ms
        for key in sorted(self.d["bins"], key=int):
            start = int(key)
            if start + self.p.bin_ms > limit:
                break
            b = self.d["bins"].pop(key)
            self._bin_start = self._bin_data = None
            self.d["closed"].append(self.bin_measures(start, b))
            self.d["closed_through"] = max(self.d["closed_through"], start + self.p.bin_ms)

    def bin_measures(self, start: int, b: dict[str, Any]) -> dict[str, Any]:
        """The finished measures of one bin: per phase, plus the intersection's events and completeness."""
        minutes = self.p.bin_ms // 60_000 or 1
        completeness = min(1.0, bin(b["minutes"]).count("1") / minutes)
        phases = sorted({*(int(p) for p in b["phases"]), *self.cfg["phases"]})
        out = []
        for phase in phases:
            m = b["phases"].get(str(phase)) or _new_bin_phase()
            pct_aog = ratio(m["aog"], m["arr"])
            pct_green = ratio(m["green"], m["cycle"])
            out.append(
                {
                    "phase": phase,
                    "volume": m["vol"],
                    "detector_volumes": m["dv"],
                    "gap_outs": m["gap"],
                    "max_outs": m["max"],
                    "force_offs": m["force"],
                    "cycles": m["cyc"],
                    "green_seconds": round(m["green"], 3),
                    "cycle_seconds": round(m["cycle"], 3),
                    "arrivals": m["arr"],
                    "arrivals_on_green": m["aog"],
                    "arrivals_on_yellow": m["aoy"],
                    "arrivals_on_red": m["aor"],
                    "total_delay_seconds": round(m["delay"], 3),
                    "pct_arrivals_on_green": pct_aog,
                    "pct_green": pct_green,
                    "platoon_ratio": (pct_aog / pct_green) if pct_aog is not None and pct_green else None,
                    "approach_delay_seconds": ratio(m["delay"], m["arr"]),
                    "split_failure_cycles": m["sfc"],
                    "split_failures": m["sf"],
                    "ped_samples": m["pedn"],
                    "ped_delay_seconds_total": round(m["pedd"], 3),
                    "ped_delay_seconds_avg": ratio(m["pedd"], m["pedn"]),
                    "detector_faults": m["faults"],
                }
            )
        return {"bin_start": start, "events": b["events"], "data_completeness": completeness, "phases": out}

    def open_bin_measures(self, start: int, b: dict[str, Any], through_ms: int) -> dict[str, Any]:
        """Provisional measures of a still-open bin: what is complete so far (the bin's counters hold only
        finished cycles, split-failure evaluations, walks and actuations), in the shape of
        :meth:`bin_measures`. Data completeness counts only the minutes already over at ``through_ms`` (the
        current minute while none is), so a bin five minutes old is not 5/15 complete."""
        m = self.bin_measures(start, b)
        minutes = self.p.bin_ms // 60_000 or 1
        elapsed = min(minutes, max(1, (through_ms - start) // 60_000))
        m["data_completeness"] = min(1.0, bin(b["minutes"] & ((1 << elapsed) - 1)).count("1") / elapsed)
        return m


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
