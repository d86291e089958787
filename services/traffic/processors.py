"""The traffic stream processor: live signal state, alarms, 15-minute ATSPM measures and district/city KPIs.

It consumes the hi-res event chunks and the compacted registry topic (both keyed by controller id, so a
controller's configuration and events share a partition). Signal state follows events as they arrive; the
measures engine folds events in time order after a short reorder hold (the ingest out-of-order tolerance) and
closes each 15-minute bin once event time has passed its end plus a grace period, so late data still counts.

The per intersection × phase measures (``ioc.traffic.measures``) are published once, when a bin closes. The
district/city KPI roll-ups are live: while bins are open, ``emit`` republishes each open window's observations
at most once per ``live_kpi_seconds`` (of event time and of processing time), from the cycles, actuations and
walks already complete, added to the bins of that window already closed in the partition. They have the same
KPI ids, windows and additive numerator/denominator as the final ones, so the observation published when the
last bin of the window closes (the full-bin value) simply supersedes them: consumers keep the latest per
(kpi, scope, window, partition).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from shared.areas import CITY_CODE
from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import EncodedEvent, ReceivedEvent, encode
from shared.contracts.common import kpi_observed_payload
from shared.contracts.traffic import (
    ALARM_EVENT,
    HIRES_TOPIC,
    KPI_EVENT,
    REGISTRY_TOPIC,
    HiResEventsLogged,
    IntersectionConfigured,
    IntersectionMeasuresComputed,
    PhaseMeasuresComputed,
    SignalStateChanged,
)
from shared.stream import State, StreamProcessor
from shared.stream.windows import KeySpace, TumblingWindows

from .domain import (
    MeasureParams,
    MeasuresEngine,
    config_from_registry,
    fold_signal_state,
    iso_ms,
    new_signal_state,
    signal_state_phases,
)
from .settings import TrafficSettings

SOURCE = "/ioc/traffic/processor"
HIRES_TYPE = HiResEventsLogged.__ioc_event_type__.type  # type: ignore[attr-defined]
REGISTRY_TYPE = IntersectionConfigured.__ioc_event_type__.type  # type: ignore[attr-defined]
#: district KPI windows kept (late bins still merge) this far behind the newest one; shared/kpis/traffic.yaml
#: declares it to the city as ``revisable_seconds``
KPI_WINDOW_RETENTION_MS = 3 * 3600 * 1000


class Controller(NamedTuple):
    controller_id: str


LIVE = KeySpace("c", Controller)  # a controller's live stream: signal state, reorder buffer, measures engine
BACKFILL = KeySpace("b", Controller)  # a controller's replayed history, measured apart from the live stream
CONFIG = KeySpace("reg", Controller)  # a controller's configuration from the registry
FAULT_ALARMS = ("controller_flash", "power_failure", "comm_loss", "detector_fault", "stuck_detector")
# KPI id → (accumulator numerator, denominator or None, scale, unit)
BIN_KPIS: dict[str, tuple[str, str | None, float, str]] = {
    "traffic.volume_vehicles": ("vol", None, 1.0, "vehicles"),
    "traffic.arrivals_on_green_ratio": ("aog", "arr", 100.0, "%"),
    "traffic.split_failure_ratio": ("sf", "sfc", 100.0, "%"),
    "traffic.approach_delay_seconds": ("delay", "arr", 1.0, "s"),
    "traffic.ped_delay_seconds": ("pedd", "pedn", 1.0, "s"),
    "traffic.intersections_reporting": ("reporting", None, 1.0, "intersections"),
    "traffic.data_completeness_ratio": ("complete", "bins", 100.0, "%"),
    "traffic.red_light_running_actuations": ("redrun", None, 1.0, "actuations"),
    "traffic.ped_actuations": ("peda", None, 1.0, "actuations"),
    "traffic.detectors_unhealthy": ("unhealthy", None, 1.0, "detectors"),
    # added by each bin's revision once its hour has closed (docs/traffic-measures.md)
    "traffic.ped_volume_estimate": ("pedv", None, 1.0, "pedestrians"),
}
SIGNAL_STATE_EVENT = event_type_of(SignalStateChanged)
MEASURES_EVENT = event_type_of(PhaseMeasuresComputed)
INTERSECTION_MEASURES_EVENT = event_type_of(IntersectionMeasuresComputed)
_MEASURE_FLOATS = frozenset(
    name
    for name, f in PhaseMeasuresComputed.model_fields.items()
    if "float" in repr(f.annotation).lower() and name != "data_completeness"
)
# PhaseMeasuresComputed fields taken from a bin's phase measures, in the contract's order: (name, is a float)
_MEASURE_FIELDS = tuple(
    (name, name in _MEASURE_FLOATS)
    for name in PhaseMeasuresComputed.model_fields
    if name
    not in (
        "intersection_id",
        "controller_id",
        "district",
        "phase",
        "bin_start",
        "bin_seconds",
        "events",
        "data_completeness",
        "computed_at",
    )
)
_ACC_FIELDS = (
    "vol",
    "aog",
    "arr",
    "sf",
    "sfc",
    "delay",
    "pedd",
    "pedn",
    "reporting",
    "complete",
    "bins",
    "redrun",
    "peda",
    "unhealthy",
    "pedv",
)


_MINUTE_MS: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM" → epoch ms of that minute (UTC)


def _ms(value: str) -> int:
    """Epoch ms of an event time. Ingest writes ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (``iso_ms``): that layout is read
    with the minute cached (this runs per hi-res event); any other RFC 3339 text goes through ``fromisoformat``."""
    n = len(value)
    if (n == 20 or n == 27) and value[-1] == "Z" and value[16] == ":" and (n == 20 or value[19] == "."):
        minute = _MINUTE_MS.get(value[:16])
        if minute is None:
            if len(_MINUTE_MS) >= 10_000:
                _MINUTE_MS.clear()
            minute = _MINUTE_MS[value[:16]] = (
                round(datetime.fromisoformat(value[:16] + "+00:00").timestamp()) * 1000
            )
        if n == 20:
            return minute + int(value[17:19]) * 1000
        micro = int(value[20:26])
        if micro % 1000 == 0:
            return minute + int(value[17:19]) * 1000 + micro // 1000
    return round(datetime.fromisoformat(value).timestamp() * 1000)


class TrafficSignalProcessor(StreamProcessor):
    """Hi-res events + registry → signal state, alarms, phase measures and KPI observations."""

    name = "traffic-signals"
    topics = (HIRES_TOPIC.name, REGISTRY_TOPIC.name)
    tick_seconds = 1.0

    def __init__(self, settings: TrafficSettings | None = None):
        s = settings or TrafficSettings()
        self.params = MeasureParams(
            bin_ms=s.bin_seconds * 1000,
            grace_ms=s.grace_seconds * 1000,
            stuck_on_ms=s.stuck_detector_seconds * 1000,
        )
        self.reorder_ms = int(s.out_of_order_tolerance_seconds * 1000)
        self.comm_loss_ms = int(s.comm_loss_seconds * 1000)
        self.idle_flush_ms = int(s.idle_flush_seconds * 1000)
        self.live_ms = int(s.live_kpi_seconds * 1000)
        # District KPI windows (the bins, epoch-aligned) are kept, and late bins merge into them, while they are
        # at most KPI_WINDOW_RETENTION_MS behind the newest window: in whole bins, as the retention of windows
        # whose watermark is the newest window's start.
        bin_ms = self.params.bin_ms
        self.kpi_windows = TumblingWindows(
            bin_ms, grace=KPI_WINDOW_RETENTION_MS - KPI_WINDOW_RETENTION_MS % bin_ms
        )
        # Events of a controller whose configuration has not arrived wait this long (arrival time) at most.
        self.hold_ms = 30_000

    # -- folding ----------------------------------------------------------------------------------------------
    def apply(self, event: ReceivedEvent, state: State) -> None:
        if event.type == REGISTRY_TYPE:
            self._apply_registry(event.data, state)
        elif event.type == HIRES_TYPE:
            self._apply_hires(event, state)

    def _apply_registry(self, data: dict[str, Any], state: State) -> None:
        cid = data["controller_id"]
        controller = Controller(cid)
        state.put(CONFIG.key(controller), config_from_registry(data))
        for key in (LIVE.key(controller), BACKFILL.key(controller)):
            cs = state.get(key)
            if cs is not None:
                cs["iid"], cs["district"] = data["intersection_id"], data["district"]
                self._drain(cid, cs, state, final=cs.get("final", False))
                state.put(key, cs)

    def _apply_hires(self, event: ReceivedEvent, state: State) -> None:
        data = event.data
        cid = data["controller_id"]
        backfill = data.get("backfill", False)
        # History replayed after the fact is measured by its own engine, apart from the live stream (whose bins
        # may be past it already), and feeds no live signal state or alarms.
        key = (BACKFILL if backfill else LIVE).key(Controller(cid))
        cs = state.get(key)
        if cs is None:
            cfg = state.get(CONFIG.key(Controller(cid))) or {}
            cs = {"buf": [], "max_t": 0, "seen": 0, "eng": {}, "sig": new_signal_state(cfg.get("phases", ()))}
        cs["iid"], cs["district"] = data["intersection_id"], data.get("district")
        cs["seen"] = max(cs["seen"], event.timestamp_ms)
        sig, buf, max_t = cs["sig"], cs["buf"], cs["max_t"]
        for e in data["events"]:
            t, code, param = _ms(e["t"]), e["code"], e["param"]
            if not backfill:
                fold_signal_state(sig, t, code, param)
            buf.append([t, code, param])
            if t > max_t:
                max_t = t
        cs["max_t"] = max_t
        if backfill:
            if data.get("final"):
                cs["final"] = True
            self._drain(cid, cs, state, final=cs.get("final", False))
            state.put(key, cs)
            return
        if "comm_loss" in cs["eng"].get("active", {}):
            MeasuresEngine(cs["eng"], None, self.params).alarm(
                "cleared", "comm_loss", "", cs["max_t"], "major", "controller reporting again"
            )
        self._drain(cid, cs, state)
        state.put(key, cs)

    def _drain(
        self, cid: str, cs: dict[str, Any], state: State, *, force: bool = False, final: bool = False
    ) -> None:
        """Fold buffered events older than the reorder hold into the measures engine, then close bins.

        ``force`` measures even without the controller's configuration; ``final`` folds everything buffered,
        completes what the data allows and closes every bin (the log ended, or the controller went silent)."""
        cfg = state.get(CONFIG.key(Controller(cid)))
        buf = cs["buf"]
        if (not buf and not final) or cs.get("done"):
            return
        if cfg is None and not force:
            # Registry and events topics are read in no particular order: wait (by arrival time, see emit)
            # for the controller's configuration rather than measure without its detectors.
            cs.setdefault("held_since", cs["seen"])
            return
        cs.pop("held_since", None)
        engine = MeasuresEngine(cs["eng"], cfg, self.params)
        buf.sort()
        cutoff = cs["max_t"] if final else cs["max_t"] - self.reorder_ms
        n = 0
        for t, code, param in buf:
            if t > cutoff:
                break
            engine.process(t, code, param)
            n += 1
        cs["buf"] = buf[n:]
        if final:
            engine.finish()
            engine.close_bins(through_ms=2**62)
            if cs.get("final"):  # a backfill that ended: its state goes once its bins are published
                cs["done"] = True
        else:
            engine.close_bins()

    # -- output -----------------------------------------------------------------------------------------------
    def emit(self, state: State, now: datetime) -> Iterable[EncodedEvent]:
        now_ms = round(now.timestamp() * 1000)
        now_iso = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
        out: list[EncodedEvent] = []
        kpis = state.get("kpi") or {}
        dirty_windows: set[str] = set()
        faults: dict[str, int] = {}
        open_bins: dict[str, list[str]] = {}  # window → controllers with that bin still open
        event_time = 0  # the partition's event time: the latest event folded into any measures engine
        out.extend(self._backfills(state, now_ms, now_iso))
        for key in state.keys(LIVE.prefix):
            cs = state[key]
            cid = LIVE.parse(key).controller_id
            changed = False
            silence = now_ms - cs["seen"]
            eng_data = cs["eng"]
            if silence > self.comm_loss_ms and "comm_loss" not in eng_data.get("active", {}):
                MeasuresEngine(eng_data, None, self.params).alarm(
                    "raised",
                    "comm_loss",
                    "",
                    now_ms,
                    "major",
                    f"no controller events for more than {self.comm_loss_ms // 1000} s",
                )
                changed = True
            # A controller silent this long closes its open bins (completeness shows the gap); data for those
            # bins arriving later counts as late.
            if silence > self.idle_flush_ms and (cs["buf"] or eng_data.get("bins")):
                self._drain(cid, cs, state, final=True)
                changed = True
            if "held_since" in cs and now_ms - cs["held_since"] > self.hold_ms:
                self._drain(cid, cs, state, force=True)
                changed = True
            if cs["sig"]["dirty"]:
                out.append(self._signal_state(cid, cs))
                cs["sig"]["dirty"] = False
                changed = True
            for closed in eng_data.get("closed", ()):
                out.extend(self._measures(cid, cs, closed, now_iso))
                window = str(closed["bin_start"])
                acc = kpis.setdefault(window, {}).setdefault(
                    cs["district"] or "unknown", dict.fromkeys(_ACC_FIELDS, 0)
                )
                _accumulate(acc, closed)
                dirty_windows.add(window)
                changed = True
            for alarm in eng_data.get("alarms", ()):
                out.append(self._alarm(cs, alarm))
                changed = True
            # a revision adds only its ped volume estimates: the bin's counts went with its first version
            for revised in eng_data.get("revised", ()):
                out.extend(self._measures(cid, cs, revised, now_iso, revision="ped-volume"))
                window = str(revised["bin_start"])
                if window in kpis:  # (a window no longer kept gets no late partial totals)
                    acc = kpis[window].setdefault(cs["district"] or "unknown", dict.fromkeys(_ACC_FIELDS, 0))
                    acc["pedv"] = acc.get("pedv", 0) + sum(
                        m["ped_volume_estimate"] or 0 for m in revised["phases"]
                    )
                    dirty_windows.add(window)
                changed = True
            if eng_data.get("closed") or eng_data.get("alarms") or eng_data.get("revised"):
                eng_data["closed"], eng_data["alarms"], eng_data["revised"] = [], [], []
            if any(a.split(":", 1)[0] in FAULT_ALARMS for a in eng_data.get("active", {})):
                faults[cs["district"] or "unknown"] = faults.get(cs["district"] or "unknown", 0) + 1
            else:
                faults.setdefault(cs["district"] or "unknown", 0)
            if changed:
                state.put(key, cs)
            for window in eng_data.get("bins", ()):
                open_bins.setdefault(window, []).append(cid)
            event_time = max(event_time, eng_data.get("wm", 0))
        publish = dirty_windows | self._live_due(state, open_bins, dirty_windows, event_time, now_ms)
        for window in sorted(publish, key=int):
            totals = kpis.get(window, {})
            if self.live_ms > 0:
                # Other controllers' bins of the window still open count with what they hold so far, so the
                # window's value does not dip when one intersection's bin closes before the others'.
                totals = _with_open_bins(totals, self._open_partials(state, window, open_bins, event_time))
            out.extend(self._bin_kpis(int(window), totals, state.partition, now_iso))
        if dirty_windows:
            # Keep KPI_WINDOW_RETENTION_MS of windows so late bins still merge into their window's totals.
            newest = max(int(w) for w in kpis) if kpis else 0
            for w in list(kpis):
                if self.kpi_windows.expired(int(w), newest):
                    del kpis[w]
            state.put("kpi", kpis)
        out.extend(self._fault_kpis(faults, state, now_ms, now_iso))
        return out

    def _backfills(self, state: State, now_ms: int, now_iso: str) -> list[EncodedEvent]:
        """Measures of replayed history, published as its bins close; a backfill's state goes once it ended."""
        out: list[EncodedEvent] = []
        for key in state.keys(BACKFILL.prefix):
            cs = state[key]
            cid = BACKFILL.parse(key).controller_id
            eng_data = cs["eng"]
            changed = False
            if now_ms - cs["seen"] > self.idle_flush_ms and not cs.get("done"):
                cs["final"] = True  # its final chunk never came
                self._drain(cid, cs, state, final=True, force=True)
                changed = True
            if "held_since" in cs and now_ms - cs["held_since"] > self.hold_ms:
                self._drain(cid, cs, state, force=True, final=cs.get("final", False))
                changed = True
            for closed in eng_data.get("closed", ()):
                out.extend(self._measures(cid, cs, closed, now_iso))
                changed = True
            for revised in eng_data.get("revised", ()):
                out.extend(self._measures(cid, cs, revised, now_iso, revision="ped-volume"))
                changed = True
            if eng_data.get("closed") or eng_data.get("alarms") or eng_data.get("revised"):
                eng_data["closed"], eng_data["alarms"], eng_data["revised"] = [], [], []
            if cs.get("done") and not cs["buf"]:
                state.pop(key)
            elif changed:
                state.put(key, cs)
        return out

    def _live_due(
        self, state: State, open_bins: dict[str, list[str]], closing: set[str], event_time: int, now_ms: int
    ) -> set[str]:
        """Open windows whose provisional KPIs are due: ``live_kpi_seconds`` of event time since the window
        started or was last published, and as much processing time (bounds a fast replay's volume).

        Returns the due windows and records them, and the ``closing`` ones (published anyway), as published;
        windows no longer open are forgotten (their final observation went out when their last bin closed)."""
        if self.live_ms <= 0 or not open_bins:
            if state.get("kpi_live"):
                state.pop("kpi_live")
            return set()
        live = state.get("kpi_live") or {}
        kept = {w: v for w, v in live.items() if w in open_bins}
        due = set()
        for window in open_bins:
            last_event, last_now = kept.get(window, (int(window), None))
            if window in closing:
                kept[window] = [event_time, now_ms]
            elif event_time - last_event >= self.live_ms and (
                last_now is None or now_ms - last_now >= self.live_ms
            ):
                due.add(window)
                kept[window] = [event_time, now_ms]
        if kept != live:
            state.put("kpi_live", kept)
        return due

    def _open_partials(
        self, state: State, window: str, open_bins: dict[str, list[str]], event_time: int
    ) -> dict[str, dict[str, float]]:
        """Per district, what the still-open bins of ``window`` hold so far (complete cycles only)."""
        out: dict[str, dict[str, float]] = {}
        for cid in open_bins.get(window, ()):
            controller = Controller(cid)
            cs = state[LIVE.key(controller)]
            engine = MeasuresEngine(cs["eng"], state.get(CONFIG.key(controller)), self.params)
            partial = engine.open_bin_measures(int(window), cs["eng"]["bins"][window], event_time)
            _accumulate(out.setdefault(cs["district"] or "unknown", dict.fromkeys(_ACC_FIELDS, 0)), partial)
        return out

    # Payloads are built as dicts in the contract's field order, exactly as ``model_dump(mode="json")`` of the
    # contract model would give them (tests check it): building models costs more than everything else emit does.
    def _signal_state(self, cid: str, cs: dict[str, Any]) -> EncodedEvent:
        sig = cs["sig"]
        payload = {
            "intersection_id": cs["iid"],
            "controller_id": cid,
            "district": cs["district"],
            "revision": sig["rev"],
            "at": iso_ms(sig["at"]),
            "flash": sig["flash"],
            "power_failure": sig["power"],
            "preempt_active": sig["preempt"],
            "phases": signal_state_phases(sig),
        }
        return encode(
            SIGNAL_STATE_EVENT, payload, source=SOURCE, id=f"state:{cs['iid']}:{sig['rev']}:{sig['at']}"
        )

    def _measures(
        self, cid: str, cs: dict[str, Any], closed: dict[str, Any], now_iso: str, revision: str = ""
    ) -> list[EncodedEvent]:
        """The bin's phase measures and intersection measures; a ``revision`` (the phase measures again, with
        what only a later bin completes) gets an event id of its own, the store keeps the latest per bin."""
        out = []
        head = {"intersection_id": cs["iid"], "controller_id": cid, "district": cs["district"]}
        bin_start, bin_seconds = iso_ms(closed["bin_start"]), self.params.bin_ms // 1000
        tail = {
            "events": closed["events"],
            "data_completeness": float(closed["data_completeness"]),
            "computed_at": now_iso,
        }
        for m in closed["phases"]:
            values = {**head, "phase": m["phase"], "bin_start": bin_start, "bin_seconds": bin_seconds, **tail}
            for field, is_float in _MEASURE_FIELDS:
                v = m[field]
                values[field] = float(v) if is_float and v is not None else v
            payload = {name: values[name] for name in PhaseMeasuresComputed.model_fields}
            out.append(
                encode(
                    MEASURES_EVENT,
                    payload,
                    source=SOURCE,
                    id=f"measures:{cs['iid']}:{m['phase']}:{closed['bin_start']}"
                    + (f":{revision}" if revision else ""),
                )
            )
        ix = closed.get("intersection")
        if ix is not None:
            payload = {
                **head,
                "bin_start": bin_start,
                "bin_seconds": bin_seconds,
                "events": closed["events"],
                "unused_events": ix["unused_events"],
                "data_completeness": float(closed["data_completeness"]),
                "detectors": [
                    {
                        **d,
                        "longest_on_seconds": float(d["longest_on_seconds"]),
                        "usual_actuations": None
                        if d["usual_actuations"] is None
                        else float(d["usual_actuations"]),
                    }
                    for d in ix["detectors"]
                ],
                "detectors_unhealthy": ix["detectors_unhealthy"],
                "preempts": [{**p, "seconds": float(p["seconds"])} for p in ix["preempts"]],
                "transit_priority": ix["transit_priority"],
                "pattern_changes": ix["pattern_changes"],
                "pattern": ix["pattern"],
                "cycle_length_seconds": ix["cycle_length_seconds"],
                "computed_at": now_iso,
                "timeline": [
                    {
                        **iv,
                        "start": iso_ms(iv["start"]),
                        "end": iso_ms(iv["end"]),
                        "cycle_start": None if iv["cycle_start"] is None else iso_ms(iv["cycle_start"]),
                    }
                    for iv in ix["timeline"]
                ],
                "timeline_dropped": ix["timeline_dropped"],
                "pcd": [
                    {
                        "phase": c["phase"],
                        "cycle_start": iso_ms(c["cycle_start"]),
                        "green_start": iso_ms(c["green_start"]),
                        "yellow_start": iso_ms(c["yellow_start"]),
                        "cycle_end": iso_ms(c["cycle_end"]),
                        "arrival_offsets_seconds": [ms / 1000 for ms in c["arrival_offsets_ms"]],
                    }
                    for c in ix.get("pcd", ())
                ],
                "terminations": [
                    {
                        **x,
                        "at": iso_ms(x["at"]),
                        "cycle_start": None if x["cycle_start"] is None else iso_ms(x["cycle_start"]),
                    }
                    for x in ix.get("terminations", ())
                ],
                "pcd_dropped": ix.get("pcd_dropped", 0),
            }
            out.append(
                encode(
                    INTERSECTION_MEASURES_EVENT,
                    payload,
                    source=SOURCE,
                    id=f"intersection-measures:{cs['iid']}:{closed['bin_start']}",
                )
            )
        return out

    def _alarm(self, cs: dict[str, Any], alarm: dict[str, Any]) -> EncodedEvent:
        alarm_id = f"traffic:{alarm['type']}:{cs['iid']}"
        suffix = alarm["key"].partition(":")[2]
        if suffix:
            alarm_id += f":{suffix}"
        payload = {
            "alarm_id": alarm_id,
            "domain": "traffic",
            "alarm_type": alarm["type"],
            "state": alarm["state"],
            "severity": alarm["severity"],
            "source_id": cs["iid"],
            "district": cs["district"],
            "commune": None,
            "at": iso_ms(alarm["at"]),
            "message": alarm["message"],
        }
        return encode(ALARM_EVENT, payload, source=SOURCE, id=f"{alarm_id}:{alarm['state']}:{alarm['at']}")

    def _kpi(
        self,
        kpi: str,
        level: str,
        code: str,
        window_ms: int,
        num: float,
        den: float | None,
        scale: float,
        unit: str,
        partition: int,
        now_iso: str,
        window_seconds: int,
    ) -> EncodedEvent | None:
        """The observation, or None when this partition already published the same one (numerator and
        denominator unchanged): consumers keep the latest per (kpi, scope, window, partition) anyway."""
        if not self.changed_since_emitted(partition, (kpi, level, code, window_ms), (num, den)):
            return None
        value = (num / den * scale if den else None) if den is not None else num * scale
        payload = kpi_observed_payload(
            kpi, level, code, iso_ms(window_ms), window_seconds, value, num, den, unit, partition, now_iso
        )
        return encode(KPI_EVENT, payload, source=SOURCE, time=now_iso)  # observed at the emit's now

    def _bin_kpis(
        self, window_ms: int, by_district: dict[str, dict[str, float]], partition: int, now_iso: str
    ) -> list[EncodedEvent]:
        out = []
        city = dict.fromkeys(_ACC_FIELDS, 0.0)
        scopes: list[tuple[str, str, dict[str, float]]] = []
        for district, acc in sorted(by_district.items()):
            for f in _ACC_FIELDS:
                city[f] += acc.get(f, 0)  # (accumulators kept from before a field existed lack it)
            if district != "unknown":
                scopes.append(("district", district, acc))
        scopes.append(("city", CITY_CODE, city))
        seconds = self.params.bin_ms // 1000
        for level, code, acc in scopes:
            for kpi, (num, den, scale, unit) in BIN_KPIS.items():
                ev = self._kpi(
                    kpi,
                    level,
                    code,
                    window_ms,
                    acc.get(num, 0),
                    acc[den] if den else None,
                    scale,
                    unit,
                    partition,
                    now_iso,
                    seconds,
                )
                if ev is not None:
                    out.append(ev)
        return out

    def _fault_kpis(
        self, faults: dict[str, int], state: State, now_ms: int, now_iso: str
    ) -> list[EncodedEvent]:
        """``traffic.signals_in_fault`` now, per district and city, re-published when it changes."""
        window = now_ms - now_ms % self.params.bin_ms
        last = state.get("faults_last") or {}
        current = {"window": window, "counts": faults}
        if last == current:
            return []
        state.put("faults_last", current)
        seconds = self.params.bin_ms // 1000
        scopes = [("district", d, n) for d, n in sorted(faults.items()) if d != "unknown"]
        scopes.append(("city", CITY_CODE, sum(faults.values())))
        out = [
            self._kpi(
                "traffic.signals_in_fault",
                level,
                code,
                window,
                float(n),
                None,
                1.0,
                "signals",
                state.partition,
                now_iso,
                seconds,
            )
            for level, code, n in scopes
        ]
        return [ev for ev in out if ev is not None]


def _accumulate(acc: dict[str, float], closed: dict[str, Any]) -> None:
    """Add one intersection's closed bin to its district's KPI accumulator."""
    for m in closed["phases"]:
        acc["vol"] += m["volume"]
        acc["aog"] += m["arrivals_on_green"]
        acc["arr"] += m["arrivals"]
        acc["sf"] += m["split_failures"]
        acc["sfc"] += m["split_failure_cycles"]
        acc["delay"] += m["total_delay_seconds"]
        acc["pedd"] += m["ped_delay_seconds_total"]
        acc["pedn"] += m["ped_samples"]
        acc["redrun"] += m["red_actuations"]
        acc["peda"] += m["ped_actuations"]
    ix = closed.get("intersection")
    acc["unhealthy"] += ix["detectors_unhealthy"] if ix else 0
    acc["reporting"] += 1 if closed["events"] else 0
    acc["complete"] += closed["data_completeness"]
    acc["bins"] += 1


def _with_open_bins(
    closed: dict[str, dict[str, float]], partials: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Closed-bin accumulators of a window plus the open bins' partials, per district (inputs unchanged)."""
    out = {d: dict(acc) for d, acc in closed.items()}
    for district, part in partials.items():
        acc = out.setdefault(district, dict.fromkeys(_ACC_FIELDS, 0))
        for f in _ACC_FIELDS:
            acc[f] = acc.get(f, 0) + part[f]
    return out


def traffic_processor(settings: TrafficSettings) -> TrafficSignalProcessor:
    return TrafficSignalProcessor(settings)


PROCESSORS = [traffic_processor]
