"""ATSPM signal performance measures: the formulas and the engine that folds one controller's hi-res events into
15-minute bins. Pure: no I/O, no clock. Every rule, its convention and its source is in docs/traffic-measures.md.

Times are integer epoch milliseconds so the engine's state stays JSON-serialisable for the changelog.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# --- Indiana hi-res enumerations the engine uses ---------------------------------------------------------------
BEGIN_GREEN = 1
GAP_OUT, MAX_OUT, FORCE_OFF = 4, 5, 6
BEGIN_YELLOW, END_YELLOW, BEGIN_RED_CLEARANCE, END_RED_CLEARANCE, PHASE_INACTIVE = 8, 9, 10, 11, 12
PED_BEGIN_WALK, PED_BEGIN_CLEARANCE, PED_BEGIN_DONT_WALK, PED_DARK = 21, 22, 23, 24
PHASE_CALL_REGISTERED, PHASE_CALL_DROPPED = 43, 44
DETECTOR_OFF, DETECTOR_ON = 81, 82
DETECTOR_FAULTS = frozenset({84, 85, 86, 87, 88})
PED_DETECTOR_ON = 90
PREEMPT_CALL_ON, PREEMPT_CALL_OFF, PREEMPT_ENTRY_STARTED = 102, 104, 105
TSP_CHECK_IN, TSP_EARLY_GREEN, TSP_EXTEND_GREEN, TSP_CHECK_OUT = 112, 113, 114, 115
COORD_PATTERN_CHANGE, CYCLE_LENGTH_CHANGE = 131, 132
UNIT_FLASH = 173
POWER_FAILURE, POWER_RESTORED = 182, 184
# NTCIP 1202 unitFlashStatus: 2 = notFlash. Any other value of a 173 event means the unit is flashing
# (unverified which values a given controller logs: choose the conservative reading).
FLASH_CLEARED_PARAMS = frozenset({2})
FAULT_NAMES = {84: "other", 85: "watchdog", 86: "open loop", 87: "shorted loop", 88: "excessive change"}
_TSP_FIELD = {TSP_CHECK_IN: 0, TSP_EARLY_GREEN: 1, TSP_EXTEND_GREEN: 2, TSP_CHECK_OUT: 3}
#: every code the measures engine or the live signal state reads; any other code (0-65535) is carried on the
#: events topic and counted in a bin's ``unused_events``
USED_CODES = frozenset(
    {
        BEGIN_GREEN,
        GAP_OUT,
        MAX_OUT,
        FORCE_OFF,
        BEGIN_YELLOW,
        END_YELLOW,
        BEGIN_RED_CLEARANCE,
        END_RED_CLEARANCE,
        PHASE_INACTIVE,
        PED_BEGIN_WALK,
        PED_BEGIN_CLEARANCE,
        PED_BEGIN_DONT_WALK,
        PED_DARK,
        PHASE_CALL_REGISTERED,
        PHASE_CALL_DROPPED,
        DETECTOR_OFF,
        DETECTOR_ON,
        *DETECTOR_FAULTS,
        PED_DETECTOR_ON,
        PREEMPT_CALL_ON,
        PREEMPT_CALL_OFF,
        PREEMPT_ENTRY_STARTED,
        *_TSP_FIELD,
        COORD_PATTERN_CHANGE,
        CYCLE_LENGTH_CHANGE,
        UNIT_FLASH,
        POWER_FAILURE,
        POWER_RESTORED,
    }
)

_TIMELINE_CODES = frozenset(
    {
        BEGIN_GREEN,
        BEGIN_YELLOW,
        END_YELLOW,
        BEGIN_RED_CLEARANCE,
        END_RED_CLEARANCE,
        PED_BEGIN_WALK,
        PED_BEGIN_CLEARANCE,
        PED_BEGIN_DONT_WALK,
        PED_DARK,
        PREEMPT_CALL_ON,
        PREEMPT_CALL_OFF,
    }
)

# --- Published thresholds --------------------------------------------------------------------------------------
#: split failure: GOR >= 0.80 and ROR5 >= 0.80 (Purdue; atspm ``green/red_occupancy_threshold`` 0.80, ``>=``)
SPLIT_FAILURE_THRESHOLD = 0.80
#: the red occupancy window: the first 5 s after begin red clearance (code 10), atspm ``red_time`` 5
ROR_WINDOW_MS = 5000
#: two detector "on" events this close without an "off": the detector stayed occupied (atspm imputation rule)
CHATTER_GAP_MS = 2000
#: a pedestrian actuation counts as a new person when the previous one on that phase is older (atspm, 15 s)
UNIQUE_PED_GAP_MS = 15_000
#: pedestrian volume model of atspm 2.6.1 ``full_ped.sql`` (hourly volume from the hour's unique actuations U:
#: 0.7167·U + 0.0599·U² + 1.1063; Singleton & Runa, doi:10.1177/0361198121994126), spread over the hour's four
#: 15-minute bins; see docs/traffic-measures.md
PED_VOLUME_LINEAR, PED_VOLUME_SQUARED, PED_VOLUME_INTERCEPT = 0.7167, 0.0599, 1.1063
#: timeline intervals kept per bin (16 phases with pedestrians cycling every 40 s make about 2,500 in 15 minutes;
#: 4,000 of about 150 bytes keep the event well under a broker's 1 MB message limit); the rest are
#: counted in ``timeline_dropped``
TIMELINE_MAX_PER_BIN = 4000
#: per bin, the Purdue coordination diagram's cycles and arrival offsets, and the terminations, kept (the rest are
#: counted in ``pcd_dropped``): with the timeline's 4,000 intervals the event stays under a broker's 1 MB limit
PCD_MAX_CYCLES_PER_BIN = 1000
PCD_MAX_ARRIVALS_PER_BIN = 4000
TERMINATIONS_MAX_PER_BIN = 1000
_TERMINATION_NAMES = {GAP_OUT: "gap_out", MAX_OUT: "max_out", FORCE_OFF: "force_off"}

# Timeline: the interval each event opens, per kind of interval (signal, pedestrian)
_SIGNAL_OPENS = {BEGIN_GREEN: "green", BEGIN_YELLOW: "yellow", BEGIN_RED_CLEARANCE: "red_clearance"}
_PED_OPENS = {
    PED_BEGIN_WALK: "walk",
    PED_BEGIN_CLEARANCE: "flashing_dont_walk",
    PED_BEGIN_DONT_WALK: "dont_walk",
}


# --- Formulas --------------------------------------------------------------------------------------------------
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
    cur_a, cur_b = 0, None
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


def split_failure_ratios(
    intervals: Iterable[Sequence[int]], green_ms: int, yellow_ms: int, red_ms: int
) -> tuple[float, float]:
    """``(GOR, ROR5)``: occupancy ratio over the green (begin green to begin yellow) and over the first 5 s after
    begin red clearance."""
    intervals = list(intervals)
    green_len = yellow_ms - green_ms
    gor = occupied_ms(intervals, green_ms, yellow_ms) / green_len if green_len > 0 else 0.0
    ror5 = occupied_ms(intervals, red_ms, red_ms + ROR_WINDOW_MS) / ROR_WINDOW_MS
    return gor, ror5


def is_split_failure(gor: float, ror5: float) -> bool:
    """Both occupancies at or above 0.80 (the published threshold is inclusive)."""
    return gor >= SPLIT_FAILURE_THRESHOLD and ror5 >= SPLIT_FAILURE_THRESHOLD


def ped_volume_estimate(unique: Sequence[int]) -> float:
    """Estimated pedestrians in a 15-minute bin from the unique actuations of that bin and the next three (the hour
    starting with it): ``(0.7167·R + 0.0599·R²) · U / R + 1.1063 / 4`` with U = ``unique[0]``, R = ``sum(unique)``
    (atspm 2.6.1 ``full_ped.sql``, ``return_volumes``); with R = 0 only the intercept's quarter."""
    rolling = sum(unique)
    hourly = PED_VOLUME_LINEAR * rolling + PED_VOLUME_SQUARED * rolling**2
    share = unique[0] / rolling if rolling else 0.0
    return hourly * share + PED_VOLUME_INTERCEPT / 4


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


# --- Detector configuration ------------------------------------------------------------------------------------
def config_from_registry(reg: dict[str, Any]) -> dict[str, Any]:
    """The processor's compact view of an ``IntersectionConfigured`` payload: channel → [phase, [functions], distance,
    speed]."""
    return {
        "phases": list(reg.get("phases") or []),
        "dets": {
            str(d["channel"]): [
                d["phase"],
                [d["function"], *(f for f in d.get("additional_functions") or () if f != d["function"])],
                d.get("distance_m"),
                d.get("speed_kmh"),
            ]
            for d in reg.get("detectors") or []
        },
    }


def _functions(det: list) -> list[str]:
    fns = det[1]
    return [fns] if isinstance(fns, str) else fns  # a configuration stored before functions became a list


# --- Measures engine -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MeasureParams:
    bin_ms: int = 900_000
    grace_ms: int = 300_000
    stuck_on_ms: int = 600_000
    max_out_run: int = 3
    #: a bin with at least this many repeated on (or off) events of one channel flags it as chattering
    chatter_limit: int = 10
    #: bins of a channel's history before its count can be judged "far from usual"
    usual_after_bins: int = 8


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
        "act": 0,
        "actg": 0,
        "sfc": 0,
        "sf": 0,
        "gor": 0.0,
        "ror": 0.0,
        "sfg": 0.0,
        "yel": 0,
        "red": 0,
        "spn": 0,
        "sps": 0.0,
        "spm": 0.0,
        "pedn": 0,
        "pedd": 0.0,
        "peda": 0,
        "pedu": 0,
        "peds": 0,
        "wn": 0,
        "ws": 0.0,
        "wm": 0.0,
        "faults": 0,
    }


def _new_phase() -> dict[str, Any]:
    return {
        "ts": None,  # signal state by time: "G" after 1, "Y" after 8, "R" after 10; None before any
        # red-to-red cycle (arrivals by cycle): begin red clearance, green and yellow seen since, arrivals
        "red": None,
        "green": None,
        "yellow": None,
        "ng": 0,
        "ny": 0,
        "arr": [],
        # green-to-green cycle (split failure, yellow/red actuations, splits): its 8, 10 and 11 times
        "cg": None,
        "c8": [],
        "c10": [],
        "c11": [],
        "cyr": [],
        "sfq": [],  # split-failure windows [green, yellow, red] waiting for the detectors' data to settle
        "run": 0,
        "ped": None,
        "call": None,
    }


class MeasuresEngine:
    """Folds one controller's time-ordered events into 15-minute ATSPM bins per phase and per intersection.

    ``data`` is the controller's JSON state (kept by the caller); ``cfg`` comes from
    :func:`config_from_registry`. Closed bins go to ``data["closed"]`` and alarm transitions to
    ``data["alarms"]`` until the caller drains them.
    """

    def __init__(self, data: dict[str, Any], cfg: dict[str, Any] | None, params: MeasureParams):
        self.d = data
        self.cfg = cfg or {"phases": [], "dets": {}}
        self.p = params
        if "det" not in data:  # a new controller, or state of an earlier version: start its measures afresh
            for k, v in (
                ("ph", {}),
                ("bins", {}),
                ("det", {}),
                ("iv", {}),
                ("usual", {}),
                ("pedlast", {}),
                ("pre_on", {}),
                ("closed", []),
                ("alarms", []),
                ("active", {}),
                ("wm", 0),
                ("closed_through", 0),
                ("late", 0),
                ("stuck_check", 0),
                ("pattern", None),
                ("cycle_length", None),
            ):
                data[k] = v
            data.pop("det_on", None)
        # Per-engine lookups from the configuration (never stored).
        self.presence: dict[int, list[str]] = {}  # phase → its presence (stop bar) channels
        self.channel_fns: dict[str, tuple[int, frozenset[str]]] = {}
        for ch, det in self.cfg["dets"].items():
            fns = frozenset(_functions(det))
            self.channel_fns[ch] = (det[0], fns)
            if "presence" in fns:
                self.presence.setdefault(det[0], []).append(ch)
        self._bin_start: int | None = None
        self._bin_data: dict[str, Any] | None = None
        self._sf_due = self._next_sf_due()

    # -- helpers
    def _phase(self, phase: int) -> dict[str, Any]:
        ph = self.d["ph"].get(str(phase))
        if ph is None:
            ph = self.d["ph"][str(phase)] = _new_phase()
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
            b = self.d["bins"][str(start)] = {
                "events": 0,
                "minutes": 0,
                "unused": 0,
                "phases": {},
                "ch": {},
                "pre": {},
                "tsp": {},
                "patchg": 0,
                "greens": [],
            }
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
            if code not in USED_CODES:
                b["unused"] += 1
        if t > self.d["wm"]:
            self.d["wm"] = t
        if code in _TIMELINE_CODES:
            self._timeline(t, code, param)
        if code == DETECTOR_ON or code == DETECTOR_OFF:
            self._detector(t, code, param, b)
        elif code == BEGIN_GREEN:
            self._green(t, param)
        elif code == BEGIN_YELLOW:
            ph = self._phase(param)
            ph["ts"] = "Y"
            if ph["red"] is not None:
                ph["ny"] += 1
                if ph["green"] is not None and ph["yellow"] is None:
                    ph["yellow"] = t
            if ph["cg"] is not None:
                ph["c8"].append(t)
        elif code == BEGIN_RED_CLEARANCE:
            self._red_clearance(t, param)
        elif code == END_RED_CLEARANCE:
            ph = self._phase(param)
            if ph["cg"] is not None:
                ph["c11"].append(t)
        elif code in (GAP_OUT, MAX_OUT, FORCE_OFF):
            self._termination(t, code, param)
        elif code == PED_DETECTOR_ON:
            self._ped_actuation(t, param)
        elif code == PED_BEGIN_WALK:
            self._ped_phase(param)
            ph = self._phase(param)
            bp = self._bin_phase(t, param)
            if bp is not None:
                bp["peds"] += 1
            if ph["ped"] is not None:
                if bp is not None:
                    bp["pedn"] += 1
                    bp["pedd"] += (t - ph["ped"]) / 1000
                ph["ped"] = None
        elif code == PHASE_CALL_REGISTERED:
            ph = self._phase(param)
            if ph["call"] is None and ph["ts"] != "G":
                ph["call"] = t
        elif code == PHASE_CALL_DROPPED:
            self._phase(param)["call"] = None
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
        elif code in (PREEMPT_CALL_ON, PREEMPT_CALL_OFF, PREEMPT_ENTRY_STARTED):
            self._preempt(t, code, param)
        elif code in _TSP_FIELD:
            if b is not None:
                b["tsp"].setdefault(str(param), [0, 0, 0, 0])[_TSP_FIELD[code]] += 1
        elif code == COORD_PATTERN_CHANGE:
            # the first pattern logged is the one in force, not a change
            if self.d["pattern"] is not None and param != self.d["pattern"] and b is not None:
                b["patchg"] += 1
            self.d["pattern"] = param
        elif code == CYCLE_LENGTH_CHANGE:
            self.d["cycle_length"] = param
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

    def _timeline(self, t: int, code: int, param: int) -> None:
        """The per-cycle timeline: each interval (signal, pedestrian, preemption) runs from the event that opens
        it to the next event of its kind; it is recorded in the bin of its end, with the begin green of the phase's
        cycle it started in."""
        tl = self.d.setdefault("tl", {})  # open intervals: key → [kind, start, cycle start]
        greens = self.d.setdefault("tlg", {})  # phase → its latest begin green
        if code in (PREEMPT_CALL_ON, PREEMPT_CALL_OFF, PREEMPT_ENTRY_STARTED):
            key = f"e{param}"
            if code == PREEMPT_CALL_ON:
                tl.setdefault(key, ["preempt", t, None])  # a repeated call-on continues the call
            elif code == PREEMPT_CALL_OFF and key in tl:
                self._timeline_interval(tl.pop(key), None, param, t)
            return
        ped = code in (PED_BEGIN_WALK, PED_BEGIN_CLEARANCE, PED_BEGIN_DONT_WALK, PED_DARK)
        key = f"{'w' if ped else 'p'}{param}"
        current = tl.get(key)
        if code == END_YELLOW and (current is None or current[0] != "yellow"):
            return
        if code == END_RED_CLEARANCE and (current is None or current[0] != "red_clearance"):
            return
        if current is not None:
            self._timeline_interval(tl.pop(key), param, None, t)
        if code == BEGIN_GREEN:
            greens[str(param)] = t
        kind = (_PED_OPENS if ped else _SIGNAL_OPENS).get(code)
        if code == END_RED_CLEARANCE:
            kind = "red"
        if kind is not None:  # 9 (end yellow) and 24 (ped dark) close without opening
            tl[key] = [kind, t, greens.get(str(param))]

    def _timeline_interval(self, iv: list, phase: int | None, preempt: int | None, end: int) -> None:
        b = self._bin(end)
        if b is None:
            return
        if len(b.setdefault("tl", [])) >= TIMELINE_MAX_PER_BIN:
            b["tld"] = b.get("tld", 0) + 1
            return
        b["tl"].append([iv[0], phase, preempt, iv[1], end, iv[2]])

    def _detector(self, t: int, code: int, ch_num: int, b: dict[str, Any] | None) -> None:
        """Detector on/off with the atspm imputation rules: two "on" within 2 s without an "off": occupied
        throughout; farther apart: an "off" halfway; two "off" in a row: an "on" halfway; a first event that is an
        "off": an "on" 1 ms before it (the detector's state is unknown before its first event)."""
        ch = str(ch_num)
        det_cfg = self.channel_fns.get(ch)
        presence = det_cfg is not None and "presence" in det_cfg[1]
        st = self.d["det"].get(ch)
        c = None  # [actuations, chatter, longest on (ms), stuck on] of the channel in the event's bin ``b``
        if b is not None:
            c = b["ch"].get(ch)
            if c is None:
                c = b["ch"][ch] = [0, 0, 0, False]
        closed: list[int] | None = None  # the on interval this event closes
        if code == DETECTOR_ON:
            if c is not None:
                c[0] += 1
            if st is None:
                st = self.d["det"][ch] = [DETECTOR_ON, t, t, t]
            elif st[0] == DETECTOR_ON:  # chatter: on again without an off
                if c is not None:
                    c[1] += 1
                if t - st[1] > CHATTER_GAP_MS:
                    closed = [st[2], (st[1] + t) // 2]
                    st[2] = t
                st[1] = t
            else:
                st[0], st[1], st[2] = DETECTOR_ON, t, t
        else:
            if st is None:
                st = self.d["det"][ch] = [DETECTOR_OFF, t, None, t - 1]
                closed = [t - 1, t]
            elif st[0] == DETECTOR_ON:
                closed = [st[2], t]
                st[0], st[1], st[2] = DETECTOR_OFF, t, None
            else:  # off again without an on: an on halfway
                if c is not None:
                    c[1] += 1
                closed = [(st[1] + t) // 2, t]
                st[1] = t
        if closed is not None:
            if c is not None and closed[1] - closed[0] > c[2]:
                c[2] = closed[1] - closed[0]
            if c is not None and closed[1] - closed[0] >= self.p.stuck_on_ms:
                c[3] = True
            if presence:
                iv = self.d["iv"].setdefault(ch, [])
                iv.append(closed)
                if len(iv) > 2000:  # a phase that never completes a cycle: keep the recent occupancy only
                    del iv[:1000]
        if code == DETECTOR_ON:
            if self.d["active"]:  # clearing needs an active alarm: skip building the message otherwise
                self.alarm(
                    "cleared", "detector_fault", ch, t, "minor", f"detector channel {ch} working again"
                )
        elif self.d["active"]:
            self.alarm("cleared", "stuck_detector", ch, t, "minor", f"detector channel {ch} released")
        if det_cfg is None:
            return
        phase, fns = det_cfg
        if presence and self._phase(phase)["sfq"]:
            self._try_split_failures(phase, t)
        if code != DETECTOR_ON:
            return
        bp = None
        if b is not None:
            bp = b["phases"].get(str(phase))
            if bp is None:
                bp = b["phases"][str(phase)] = _new_bin_phase()
        ph = self._phase(phase)
        if bp is not None:
            bp["dv"][ch] = bp["dv"].get(ch, 0) + 1
            if "advance" in fns or "count" in fns:
                bp["vol"] += 1
        if "advance" in fns:
            det = self.cfg["dets"][ch]
            arr = ph["arr"]
            arr.append(stop_bar_time_ms(t, det[2], det[3]))
            if len(arr) > 5000:  # no begin red clearance for a long while: no cycle can use the oldest
                del arr[:1000]
            if bp is not None:  # by actuation time, at the detector (atspm arrival_on_green)
                bp["act"] += 1
                if ph["ts"] == "G":
                    bp["actg"] += 1
        if "yellow_red" in fns and ph["cg"] is not None:
            ph["cyr"].append([t, ph["ts"]])

    def _green(self, t: int, phase: int) -> None:
        ph = self._phase(phase)
        ph["ts"] = "G"
        if ph["red"] is not None:
            ph["ng"] += 1
            if ph["green"] is None:
                ph["green"] = t
        self._close_green_cycle(ph, phase, t)
        ph["cg"], ph["c8"], ph["c10"], ph["c11"], ph["cyr"] = t, [], [], [], []
        if not ph["sfq"]:  # no window to evaluate: occupancy before this green is no longer needed
            for ch in self.presence.get(phase, ()):
                iv = self.d["iv"].get(ch)
                if iv:
                    self.d["iv"][ch] = [x for x in iv if x[1] > t]
        bp = self._bin_phase(t, phase)
        if ph["call"] is not None:
            wait = (t - ph["call"]) / 1000
            if bp is not None:
                bp["wn"] += 1
                bp["ws"] += wait
                bp["wm"] = max(bp["wm"], wait)
            ph["call"] = None
        b = self._bin(t)
        if b is not None and phase not in b["greens"]:
            b["greens"].append(phase)

    def _close_green_cycle(self, ph: dict[str, Any], phase: int, next_green: int | None) -> None:
        """End the green-to-green cycle that began at ``ph["cg"]`` (``next_green`` None: the data ended).

        Complete when it holds exactly one begin yellow (8) and one begin red clearance (10), in that order; a cycle
        without them (missing events) or before the first green (partial) is left out, as atspm does."""
        green = ph["cg"]
        if green is None:
            return
        c8, c10, c11 = ph["c8"], ph["c10"], ph["c11"]
        if not (len(c8) == 1 and len(c10) == 1 and green <= c8[0] <= c10[0]):
            return
        yellow, red = c8[0], c10[0]
        # yellow and red actuations of the cycle, binned by its begin red clearance (atspm yellow_red)
        if ph["cyr"]:
            bp = self._bin_phase(red, phase)
            if bp is not None:
                for _, state in ph["cyr"]:
                    if state == "Y":
                        bp["yel"] += 1
                    elif state == "R":
                        bp["red"] += 1
        # the split: begin green to end red clearance, binned by begin green
        if len(c11) == 1 and c11[0] >= red:
            bp = self._bin_phase(green, phase)
            if bp is not None:
                split = (c11[0] - green) / 1000
                bp["spn"] += 1
                bp["sps"] += split
                bp["spm"] = max(bp["spm"], split)
        # split failure: the red window must end inside the cycle and the detectors' state be known at green
        if phase in self.presence and (next_green is None or red + ROR_WINDOW_MS < next_green):
            known = [self.d["det"][c][3] for c in self.presence[phase] if c in self.d["det"]]
            if known and min(known) < green:
                ph["sfq"].append([green, yellow, red])
                due = red + ROR_WINDOW_MS
                if self._sf_due is None or due < self._sf_due:
                    self._sf_due = due

    def _red_clearance(self, t: int, phase: int) -> None:
        """Begin red clearance (10): ends the red-to-red cycle of arrivals (by cycle, binned by its green)."""
        ph = self._phase(phase)
        ph["ts"] = "R"
        if ph["cg"] is not None:
            ph["c10"].append(t)
        green, yellow = ph["green"], ph["yellow"]
        # Complete: exactly one begin green and one begin yellow since the previous begin red clearance. A cycle
        # missing either, and the partial first cycle (no red start seen), is left out.
        if ph["red"] is not None and ph["ng"] == 1 and ph["ny"] == 1 and yellow is not None:
            arrivals = [a for a in ph["arr"] if a < t]
            c = classify_arrivals(arrivals, green, yellow, t)
            bp = self._bin_phase(green, phase)
            if bp is not None:
                self._pcd_cycle(phase, ph["red"], green, yellow, t, arrivals)
                bp["cyc"] += 1
                bp["green"] += (yellow - green) / 1000
                bp["cycle"] += (t - ph["red"]) / 1000
                bp["arr"] += c.on_red + c.on_green + c.on_yellow
                bp["aog"] += c.on_green
                bp["aoy"] += c.on_yellow
                bp["aor"] += c.on_red
                bp["delay"] += c.delay_s
        ph["arr"] = [a for a in ph["arr"] if a >= t]
        ph["red"], ph["green"], ph["yellow"], ph["ng"], ph["ny"] = t, None, None, 0, 0

    def _pcd_cycle(
        self, phase: int, red: int, green: int, yellow: int, end: int, arrivals: list[int]
    ) -> None:
        """The Purdue coordination diagram's cycle: the red-to-red cycle :meth:`_red_clearance` counts (the same
        completeness rule and arrivals, binned like ``cycles`` by its green) with each arrival's time after the
        cycle's start; an arrival before green was on red, before yellow on green, else on yellow
        (:func:`classify_arrivals`)."""
        b = self._bin(green)
        if b is None:
            return
        cycles = b.setdefault("pcd", [])
        kept = PCD_MAX_ARRIVALS_PER_BIN - b.get("pcdn", 0)
        if len(cycles) >= PCD_MAX_CYCLES_PER_BIN or kept < len(arrivals):
            b["pcdd"] = b.get("pcdd", 0) + 1
            return
        b["pcdn"] = b.get("pcdn", 0) + len(arrivals)
        cycles.append([phase, red, green, yellow, end, sorted(a - red for a in arrivals)])

    def _ped_actuation(self, t: int, phase: int) -> None:
        self._ped_phase(phase)
        ph = self._phase(phase)  # ped detector n serves phase n (the ATSPM default mapping)
        if ph["ped"] is None:
            ph["ped"] = t
        bp = self._bin_phase(t, phase)
        last = self.d["pedlast"].get(str(phase))
        if bp is not None:
            bp["peda"] += 1
            if last is None or t - last > UNIQUE_PED_GAP_MS:
                bp["pedu"] += 1
        self.d["pedlast"][str(phase)] = t

    def _ped_phase(self, phase: int) -> None:
        peds = self.d.setdefault("pedph", [])
        if phase not in peds:
            peds.append(phase)

    def _ped_volumes(self) -> None:
        """Revise the phase measures of each closed bin whose hour (it and the next three bins) has closed with
        its pedestrian volume estimate; bins without data count zero unique actuations."""
        pending = self.d.setdefault("pv", {})
        peds = set(self.d.get("pedph", ()))
        for key in sorted(pending, key=int):
            start = int(key)
            if start + 4 * self.p.bin_ms > self.d["closed_through"]:
                break
            closed = pending.pop(key)
            later = [pending.get(str(start + k * self.p.bin_ms), {}).get("u", {}) for k in (1, 2, 3)]
            phases = []
            for m in closed["phases"]:
                p = str(m["phase"])
                if m["phase"] in peds:
                    unique = [m["unique_ped_actuations"], *(u.get(p, 0) for u in later)]
                    m = {**m, "ped_volume_estimate": ped_volume_estimate(unique)}
                    phases.append(m)
            if phases:
                self.d.setdefault("revised", []).append({**closed, "phases": phases})

    def _preempt(self, t: int, code: int, number: int) -> None:
        b = self._bin(t)
        key = str(number)
        counts = b["pre"].setdefault(key, [0, 0, 0.0]) if b is not None else None
        if code == PREEMPT_CALL_ON:
            if counts is not None:
                counts[0] += 1
            self.d["pre_on"].setdefault(key, t)
        elif code == PREEMPT_ENTRY_STARTED:
            if counts is not None:
                counts[1] += 1
        else:
            on = self.d["pre_on"].pop(key, None)
            if on is not None and counts is not None:
                counts[2] += (t - on) / 1000

    def _termination(self, t: int, code: int, phase: int) -> None:
        bp = self._bin_phase(t, phase)
        ph = self._phase(phase)
        if bp is not None:
            bp[{GAP_OUT: "gap", MAX_OUT: "max", FORCE_OFF: "force"}[code]] += 1
            # the same termination, one row: the phase termination chart's point (per cycle: the begin green of
            # the phase's green-to-green cycle it ended)
            b = self._bin(t)
            assert b is not None
            terms = b.setdefault("term", [])
            if len(terms) < TERMINATIONS_MAX_PER_BIN:
                terms.append([phase, t, code, ph["cg"]])
            else:
                b["pcdd"] = b.get("pcdd", 0) + 1
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

    # -- split failures
    def _settled(self, phase: int, window_end: int, now: int) -> bool:
        """Whether no later detector event can still change the occupancy before ``window_end``: an imputed event
        falls halfway between a channel's last event and its next one, so that next event must be at or after
        ``2 × window_end − last``; every event from now on is at or after ``now``."""
        for ch in self.presence.get(phase, ()):
            st = self.d["det"].get(ch)
            if st is not None and st[1] < window_end and now < 2 * window_end - st[1]:
                return False
        return True

    def _try_split_failures(self, phase: int, now: int, final: bool = False) -> None:
        ph = self._phase(phase)
        queue = ph["sfq"]
        while queue:
            green, yellow, red = queue[0]
            end = red + ROR_WINDOW_MS
            if not final and (now < end or not self._settled(phase, end, now)):
                break
            queue.pop(0)
            intervals: list[Sequence[int]] = []
            for ch in self.presence.get(phase, ()):
                intervals.extend(self.d["iv"].get(ch, ()))
                st = self.d["det"].get(ch)
                if st is not None and st[0] == DETECTOR_ON:
                    intervals.append((st[2], max(end, now)))
            gor, ror5 = split_failure_ratios(intervals, green, yellow, red)
            bp = self._bin_phase(end, phase)  # binned by the end of the red window (atspm)
            if bp is not None:
                bp["sfc"] += 1
                bp["sf"] += int(is_split_failure(gor, ror5))
                bp["gor"] += gor
                bp["ror"] += ror5
                bp["sfg"] += (yellow - green) / 1000
        # occupancy older than every window still to evaluate is no longer needed
        keep_from = min([w[0] for w in queue] + ([ph["cg"]] if ph["cg"] is not None else [now]))
        for ch in self.presence.get(phase, ()):
            iv = self.d["iv"].get(ch)
            if iv:
                self.d["iv"][ch] = [x for x in iv if x[1] > keep_from]

    def _next_sf_due(self) -> int | None:
        due = [ph["sfq"][0][2] + ROR_WINDOW_MS for ph in self.d["ph"].values() if ph["sfq"]]
        return min(due) if due else None

    def _check_pending(self, t: int) -> None:
        """Evaluate split failures whose red window is over; watch for stuck detectors."""
        if self._sf_due is not None and self._sf_due <= t:
            for key, ph in self.d["ph"].items():
                if ph["sfq"]:
                    self._try_split_failures(int(key), t)
            # A window waiting for a detector to settle is tried again on that detector's events, or a second on.
            nxt = self._next_sf_due()
            self._sf_due = None if nxt is None else max(nxt, t + 1000)
        if t - self.d["stuck_check"] >= 1000:
            self.d["stuck_check"] = t
            for ch, st in self.d["det"].items():
                if st[0] == DETECTOR_ON and t - st[2] >= self.p.stuck_on_ms:
                    self.alarm(
                        "raised",
                        "stuck_detector",
                        ch,
                        t,
                        "minor",
                        f"detector channel {ch} on for more than {self.p.stuck_on_ms // 1000} s",
                    )

    # -- closing
    def finish(self) -> None:
        """The log ended (end of a replay, or the controller went silent): complete what the data allows."""
        now = self.d["wm"]
        for key, ph in self.d["ph"].items():
            self._close_green_cycle(ph, int(key), None)
            ph["cg"] = None
            self._try_split_failures(int(key), now, final=True)

    def close_bins(self, through_ms: int | None = None) -> None:
        """Close bins whose end plus the grace period is at or before the watermark (or ``through_ms``)."""
        limit = through_ms if through_ms is not None else self.d["wm"] - self.p.grace_ms
        for key in sorted(self.d["bins"], key=int):
            start = int(key)
            if start + self.p.bin_ms > limit:
                break
            b = self.d["bins"].pop(key)
            self._bin_start = self._bin_data = None
            m = self.bin_measures(start, b, final=True)
            self.d["closed"].append(m)
            self.d["closed_through"] = max(self.d["closed_through"], start + self.p.bin_ms)
            self.d.setdefault("pv", {})[key] = {
                "bin_start": start,
                "events": m["events"],
                "data_completeness": m["data_completeness"],
                "u": {str(x["phase"]): x["unique_ped_actuations"] for x in m["phases"]},
                "phases": m["phases"],
            }
        self._ped_volumes()

    def bin_measures(self, start: int, b: dict[str, Any], final: bool = False) -> dict[str, Any]:
        """The finished measures of one bin: per phase, plus the intersection's events, completeness, detectors,
        preemption, transit priority and coordination. ``final`` updates each channel's usual count."""
        minutes = self.p.bin_ms // 60_000 or 1
        completeness = min(1.0, bin(b["minutes"]).count("1") / minutes)
        phases = sorted({*(int(p) for p in b["phases"]), *self.cfg["phases"]})
        out = []
        for phase in phases:
            m = b["phases"].get(str(phase)) or _new_bin_phase()
            m = {**_new_bin_phase(), **m}  # bins opened before new counters existed
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
                    "actuations": m["act"],
                    "actuations_on_green": m["actg"],
                    "pct_actuations_on_green": ratio(m["actg"], m["act"]),
                    "green_occupancy_avg": ratio(m["gor"], m["sfc"]),
                    "red_occupancy_avg": ratio(m["ror"], m["sfc"]),
                    "split_failure_green_seconds_avg": ratio(m["sfg"], m["sfc"]),
                    "yellow_actuations": m["yel"],
                    "red_actuations": m["red"],
                    "splits": m["spn"],
                    "split_seconds_avg": ratio(m["sps"], m["spn"]),
                    "split_seconds_max": m["spm"] if m["spn"] else None,
                    "ped_actuations": m["peda"],
                    "unique_ped_actuations": m["pedu"],
                    "ped_services": m["peds"],
                    "phase_wait_samples": m["wn"],
                    "phase_wait_seconds_avg": ratio(m["ws"], m["wn"]),
                    "phase_wait_seconds_max": m["wm"] if m["wn"] else None,
                    # published with the revision of the bin once its hour has closed
                    "ped_volume_estimate": None,
                }
            )
        return {
            "bin_start": start,
            "events": b["events"],
            "data_completeness": completeness,
            "phases": out,
            "intersection": self._intersection_measures(start, b, final),
        }

    def _intersection_measures(self, start: int, b: dict[str, Any], final: bool) -> dict[str, Any]:
        end = start + self.p.bin_ms
        channels = sorted({*b.get("ch", {}), *self.cfg["dets"]}, key=int)
        detectors = []
        unhealthy = 0
        for ch in channels:
            count, chatter, longest, stuck = b.get("ch", {}).get(ch, [0, 0, 0, False])
            st = self.d["det"].get(ch)
            if st is not None and st[0] == DETECTOR_ON and end - st[2] >= self.p.stuck_on_ms:
                stuck = True
            cfg = self.channel_fns.get(ch)
            usual = self.d["usual"].get(ch)  # [bins seen, exponentially weighted mean count]
            status = "ok"
            if stuck:
                status = "stuck_on"
            elif final and cfg is not None and count == 0 and cfg[0] in b.get("greens", ()):
                status = "stuck_off"  # its phase was served in the bin, yet the detector never actuated
            elif chatter >= self.p.chatter_limit:
                status = "chattering"
            elif final and usual is not None and usual[0] >= self.p.usual_after_bins:
                # (judged on the whole bin only: a bin still open has not its full count yet)
                mean = usual[1]
                if abs(count - mean) > 4 * mean**0.5 + 5:
                    status = "unusual"
            if status != "ok":
                unhealthy += 1
            detectors.append(
                {
                    "channel": int(ch),
                    "phase": cfg[0] if cfg else None,
                    "functions": sorted(cfg[1]) if cfg else [],
                    "actuations": count,
                    "repeated_events": chatter,
                    "longest_on_seconds": round(longest / 1000, 3),
                    "usual_actuations": round(usual[1], 3)
                    if usual is not None and usual[0] >= self.p.usual_after_bins
                    else None,
                    "status": status,
                }
            )
            if final and b["events"]:  # a bin without data says nothing about the usual count
                n, mean = usual if usual is not None else (0, float(count))
                self.d["usual"][ch] = [n + 1, mean + (count - mean) / min(n + 1, 16)]
        return {
            "detectors": detectors,
            "detectors_unhealthy": unhealthy,
            "preempts": [
                {"number": int(k), "calls": v[0], "entries": v[1], "seconds": round(v[2], 3)}
                for k, v in sorted(b.get("pre", {}).items(), key=lambda kv: int(kv[0]))
            ],
            "transit_priority": [
                {
                    "number": int(k),
                    "check_ins": v[0],
                    "early_greens": v[1],
                    "extended_greens": v[2],
                    "check_outs": v[3],
                }
                for k, v in sorted(b.get("tsp", {}).items(), key=lambda kv: int(kv[0]))
            ],
            "pattern_changes": b.get("patchg", 0),
            "pattern": self.d.get("pattern"),
            "cycle_length_seconds": self.d.get("cycle_length"),
            "unused_events": b.get("unused", 0),
            "timeline": [
                {"kind": k, "phase": ph, "preempt": pre, "start": a, "end": z, "cycle_start": cyc}
                for k, ph, pre, a, z, cyc in b.get("tl", ())
            ],
            "timeline_dropped": b.get("tld", 0),
            "pcd": [
                {
                    "phase": ph,
                    "cycle_start": red,
                    "green_start": green,
                    "yellow_start": yellow,
                    "cycle_end": end,
                    "arrival_offsets_ms": offsets,
                }
                for ph, red, green, yellow, end, offsets in b.get("pcd", ())
            ],
            "terminations": [
                {"phase": ph, "at": at, "termination": _TERMINATION_NAMES[code], "cycle_start": cyc}
                for ph, at, code, cyc in b.get("term", ())
            ],
            "pcd_dropped": b.get("pcdd", 0),
        }

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


# --- Purdue coordination diagram and phase terminations, per cycle (export) ------------------------------------
def _epoch_ms(iso: str) -> int:
    from datetime import datetime

    return round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def pcd_export(intersection_rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The coordination diagram's cycles and the terminations of stored intersection measures (``pcd`` and
    ``terminations`` of each bin, as the processor published them), oldest first: per cycle its green and
    yellow as seconds after the cycle's start, its length, its arrivals' offsets, their count on red / green /
    yellow (:func:`classify_arrivals`, the rule of ``arrivals_on_*``), and the termination that ended its green
    (the termination logged in the cycle of that begin green; none when the controller logged none)."""
    cycles: list[dict[str, Any]] = []
    terminations: list[dict[str, Any]] = []
    dropped = 0
    for m in intersection_rows:
        dropped += m.get("pcd_dropped") or 0
        for x in m.get("terminations") or ():
            terminations.append({**x, "bin_start": m["bin_start"]})
        for c in m.get("pcd") or ():
            cycles.append({**c, "bin_start": m["bin_start"]})
    ended = {
        (x["phase"], _epoch_ms(x["cycle_start"])): x["termination"] for x in terminations if x["cycle_start"]
    }
    out = []
    for c in sorted(cycles, key=lambda c: (_epoch_ms(c["cycle_start"]), c["phase"])):
        start, green, yellow, end = (
            _epoch_ms(c[k]) for k in ("cycle_start", "green_start", "yellow_start", "cycle_end")
        )
        offsets = c["arrival_offsets_seconds"]
        arrivals = classify_arrivals(
            (round(o * 1000) for o in offsets), green - start, yellow - start, end - start
        )
        out.append(
            {
                "phase": c["phase"],
                "bin_start": c["bin_start"],
                "cycle_start": c["cycle_start"],
                "green_start": c["green_start"],
                "yellow_start": c["yellow_start"],
                "cycle_end": c["cycle_end"],
                "green_offset_seconds": (green - start) / 1000,
                "yellow_offset_seconds": (yellow - start) / 1000,
                "cycle_seconds": (end - start) / 1000,
                "arrival_offsets_seconds": offsets,
                "arrivals_on_red": arrivals.on_red,
                "arrivals_on_green": arrivals.on_green,
                "arrivals_on_yellow": arrivals.on_yellow,
                "termination": ended.get((c["phase"], green)),
            }
        )
    terminations.sort(key=lambda x: (_epoch_ms(x["at"]), x["phase"]))
    return {"cycles": out, "terminations": terminations, "dropped": dropped}
