"""The kiosk KPI processor: offline detection from silence, alarms, availability and session KPIs.

It reads the registry (opening hours, peripherals fitted), heartbeats, peripheral changes and sessions, all
keyed by kiosk id and co-partitioned, so one partition's state holds everything about its kiosks. Per-kiosk
facts stay inside the state; only per-district and city KPI observations leave it.

State keys (values are JSON):
- ``k:<kiosk>`` registry entry: district, commune, hours, peripherals, since, active, version
- ``h:<kiosk>`` heartbeats: last (Unix s), segs (online segments), status (unknown/online/offline declared)
- ``d:<kiosk>`` peripherals: {peripheral: {state, paper, fault, since, at, ids, down: [[start, end|null]]}}
  (``ids``: the events applied at ``at``, so that a copy of one of them is not applied again)
- ``a:<kiosk>`` alarms raised and not yet cleared: {alarm key: {type, at, peripheral}}
- ``s:<window s>:<window start>:<kiosk>`` session counters; ``f:...`` fault counts and repair times
- ``x:86400:<day start>:<kiosk>`` session ids already counted that day (exactly-once counting)
  (these three are :class:`~shared.stream.windows.WindowedEntity` keys: :data:`SESSIONS`, :data:`FAULTS`,
  :data:`SEEN`)
- ``m:emit`` when KPIs were last published and the current window per length
"""

from __future__ import annotations

import heapq
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime

from services.kiosk.domain import (
    ALARM_SEVERITY,
    DAY,
    FAULT_TYPES,
    HOUR,
    WINDOWS,
    closed_days_of,
    fault_type,
    fold_heartbeat,
    from_epoch,
    is_online,
    is_open,
    kiosk_availability,
    merge,
    never_reported_due,
    never_reported_offline,
    online_intervals,
    opening_intervals,
    ratio,
)
from shared.areas import CITY_CODE, HANOI_OFFSET_S
from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import EncodedEvent, ReceivedEvent, encode, encode_many, parse_time
from shared.contracts.common import kpi_observed_payload
from shared.contracts.kiosk import (
    ALARM_EVENT,
    HEARTBEATS_TOPIC,
    JOURNEYS,
    KPI_EVENT,
    PERIPHERALS_TOPIC,
    REGISTRY_TOPIC,
    SESSIONS_TOPIC,
    HeartbeatReceived,
    KioskRegistered,
    KioskStateChanged,
    PeripheralStatusChanged,
    SessionEnded,
)
from shared.stream.processor import State, StreamProcessor
from shared.stream.windows import KeySpace, TumblingWindows, WindowedEntity

T_REGISTERED = event_type_of(KioskRegistered).type
T_HEARTBEAT = event_type_of(HeartbeatReceived).type
T_PERIPHERAL = event_type_of(PeripheralStatusChanged).type
T_SESSION = event_type_of(SessionEnded).type
STATE_EVENT = event_type_of(KioskStateChanged)
# Aggregate keys of each journey's functional availability (available, scheduled seconds)
_JOURNEY_KEYS = {journey: (f"fa_up:{journey}", f"fa_sched:{journey}") for journey in JOURNEYS}
# Hourly and (Hanoi) daily windows. KPIs are published for the current window and, once, for the one that just
# ended, so a window is kept one window length after its end; events of older windows still fold in (they are
# evicted at the next KPI pass, never published).
TUMBLING: dict[int, TumblingWindows] = {
    HOUR: TumblingWindows(HOUR, grace=HOUR),
    DAY: TumblingWindows(DAY, grace=DAY, offset=HANOI_OFFSET_S),
}
assert tuple(TUMBLING) == WINDOWS
SESSIONS = KeySpace("s", WindowedEntity)  # session counters of a kiosk in a window
FAULTS = KeySpace("f", WindowedEntity)  # fault counts and repair times of a kiosk in a window
SEEN = KeySpace("x", WindowedEntity)  # session ids of a kiosk already counted in a day


def _ts(value: str) -> float:
    return parse_time(value).timestamp()


def _iso(t: float) -> str:
    return from_epoch(t).isoformat().replace("+00:00", "Z")


class _PartitionView:
    """Which kiosks ``emit`` must look at, so that it does not evaluate every kiosk on every call. Derived from
    the state only and rebuilt (every kiosk evaluated once) whenever the runtime (re)loads the partition."""

    __slots__ = ("all", "dirty", "heard", "opening_at", "openings", "silence", "watched")

    def __init__(self, state: State):  # a new view means a (re)loaded state: ``all`` covers what it holds
        self.all = True  # evaluate every kiosk at the next emit
        self.dirty: set[str] = set()  # kiosks whose registry entry or peripherals changed
        self.heard: set[str] = set()  # kiosks not known online that sent a new heartbeat
        self.silence: list[tuple[float, str]] = []  # heap: (last heartbeat + timeout, kiosk) of online kiosks
        self.watched: set[str] = set()  # kiosks in ``silence``
        self.openings: list[tuple[float, str]] = []  # heap: (next opening, kiosk) of kiosks dark after hours
        self.opening_at: dict[str, float] = {}  # kiosk → its live entry in ``openings`` (others are stale)


class KioskKpiProcessor(StreamProcessor):
    """Kiosk state and KPIs per district and city, hourly and daily (Hanoi days)."""

    name = "kiosk-kpi"
    topics = (REGISTRY_TOPIC.name, HEARTBEATS_TOPIC.name, PERIPHERALS_TOPIC.name, SESSIONS_TOPIC.name)
    tick_seconds = 1.0
    # Folding is idempotent, so copies of an event need no window of ids seen (up to 50,000 per partition,
    # about 10 MiB, still filling after a 12-minute soak): a heartbeat no newer than the last changes nothing, a
    # peripheral change older than the device's last is ignored and one of the same instant is applied once
    # (its id is kept), sessions are counted once per id in the state, and registry entries go by version.
    # ``tests/kiosk/test_processors.py::test_events_delivered_again_change_nothing``.
    dedup_window = 0

    def __init__(
        self,
        *,
        heartbeat_timeout_s: float = 180.0,
        kpi_interval_s: float = 30.0,
        tick_seconds: float = 1.0,
        name: str | None = None,
        source: str = "/ioc/kiosk/kpi",
        closed_days: frozenset[int] | None = None,
    ):
        if closed_days is None:
            from shared.calendar import city_calendar  # read when the processor is built, not at import

            closed_days = closed_days_of(city_calendar().days_off)
        #: days public buildings are closed (city calendar): no scheduled service time, so no offline
        self.closed = closed_days
        self.timeout = heartbeat_timeout_s
        self.kpi_interval = kpi_interval_s
        self.tick_seconds = tick_seconds  # type: ignore[misc]
        if name is not None:
            self.name = name  # type: ignore[misc]
        self.source = source
        self._id_prefix, self._sent = uuid.uuid4().hex, 0

    def _view(self, state: State) -> _PartitionView:
        return self.derived(state, _PartitionView)

    # Folding ---------------------------------------------------------------------------------------------------
    def apply(self, event: ReceivedEvent, state: State) -> None:
        """Fold one registry entry, heartbeat, peripheral change or session into the partition state."""
        self.apply_batch([event], state)

    def apply_batch(self, events: list[ReceivedEvent], state: State) -> None:
        view = self._view(state)
        dirty, heard = view.dirty, view.heard
        for event in events:
            d = event.data
            etype = event.type
            if etype == T_HEARTBEAT:
                self._heartbeat(state, d["kiosk_id"], _ts(d["at"]), heard)
            elif etype == T_SESSION:
                self._session(state, d)
            elif etype == T_PERIPHERAL:
                self._peripheral(state, d, event.id)
                dirty.add(d["kiosk_id"])
            elif etype == T_REGISTERED:
                key = f"k:{d['kiosk_id']}"
                old = state.get(key)
                if old is None or d["version"] >= old["version"]:
                    state.put(
                        key,
                        {
                            "district": d["district"],
                            "commune": d.get("commune"),
                            "hours": d["opening_hours"],
                            "peripherals": d["peripherals"],
                            "since": _ts(d["in_service_since"]),
                            "active": d.get("active", True),
                            "version": d["version"],
                        },
                    )
                    dirty.add(d["kiosk_id"])

    def _heartbeat(self, state: State, kiosk: str, t: float, heard: set[str]) -> None:
        key = f"h:{kiosk}"
        h = state.get(key) or {"last": None, "segs": [], "status": "unknown"}
        segs, last = fold_heartbeat(h["segs"], h["last"], t, self.timeout)
        if last != h["last"]:
            h["segs"], h["last"] = segs, last
            state.put(key, h)
            if h["status"] != "online":
                heard.add(kiosk)  # may be back online; an online kiosk stays online (its silence is watched)

    def _session(self, state: State, d: dict) -> None:
        started = _ts(d["started_at"])
        # Session ids seen per kiosk and day are state, so a session delivered again (a copy at another offset,
        # a re-sent request) is counted once whatever the delivery history.
        kiosk = d["kiosk_id"]
        seen_key = SEEN.key(WindowedEntity(DAY, TUMBLING[DAY].start(started), kiosk))
        seen = state.get(seen_key) or {}
        if d["session_id"] in seen:
            return
        seen[d["session_id"]] = 1
        state.put(seen_key, seen)
        for w, windows in TUMBLING.items():
            key = SESSIONS.key(WindowedEntity(w, windows.start(started), kiosk))
            c = state.get(key) or {
                "n": 0,
                "completed": 0,
                "abandoned": 0,
                "failed": 0,
                "rating_sum": 0,
                "rating_n": 0,
            }
            c["n"] += 1
            c[d["outcome"]] += 1
            if d.get("rating") is not None:
                c["rating_sum"] += d["rating"]
                c["rating_n"] += 1
            state.put(key, c)

    def _peripheral(self, state: State, d: dict, event_id: str) -> None:
        kiosk, per, t = d["kiosk_id"], d["peripheral"], _ts(d["at"])
        key = f"d:{kiosk}"
        dev = state.get(key) or {}
        p = dev.get(per) or {
            "state": "online",
            "paper": None,
            "fault": None,
            "since": None,
            "at": None,
            "down": [],
        }
        if p["at"] is not None and t < p["at"]:
            return  # older than what we know: the device has moved on since
        if t == p["at"]:
            # Events of one instant apply in order, each once: a copy of an earlier one must not undo a later
            # one (this processor keeps no de-duplication window, see ``dedup_window``).
            ids = p.setdefault("ids", [])  # (states written before ids were kept have none)
            if event_id in ids:
                return
            ids.append(event_id)
        else:
            p["ids"] = [event_id]
        paper = d.get("paper") if d.get("paper") is not None else p["paper"]
        new_fault = fault_type(per, d["state"], paper)
        if new_fault != p["fault"]:
            if p["fault"] is not None:
                if p["down"] and p["down"][-1][1] is None:
                    p["down"][-1][1] = t
                self._count_repair(state, kiosk, p["fault"], t, t - p["since"])
            if new_fault is not None:
                p["down"].append([t, None])
                self._count_fault(state, kiosk, t)
            p["fault"], p["since"] = new_fault, t
        p["state"], p["paper"], p["at"] = d["state"], paper, t
        dev[per] = p
        state.put(key, dev)

    @staticmethod
    def _faults(state: State, kiosk: str, t: float) -> Iterable[tuple[str, dict]]:
        for w, windows in TUMBLING.items():
            key = FAULTS.key(WindowedEntity(w, windows.start(t), kiosk))
            yield key, state.get(key) or {"n": 0, "repairs": {}}

    def _count_fault(self, state: State, kiosk: str, t: float) -> None:
        for key, f in self._faults(state, kiosk, t):
            f["n"] += 1
            state.put(key, f)

    def _count_repair(self, state: State, kiosk: str, ftype: str, t: float, seconds: float) -> None:
        for key, f in self._faults(state, kiosk, t):
            r = f["repairs"].setdefault(ftype, [0.0, 0])
            r[0] += max(0.0, seconds)
            r[1] += 1
            state.put(key, f)

    # Output ----------------------------------------------------------------------------------------------------
    def emit(self, state: State, now: datetime) -> list[EncodedEvent]:
        """State changes and alarms (offline from silence) on every call; KPIs every ``kpi_interval_s``."""
        t = now.timestamp()
        out: list[EncodedEvent] = []
        for kiosk in self._to_evaluate(state, t):
            info = state.get(f"k:{kiosk}")
            out.extend(self._kiosk_state(state, kiosk, info, t))
            out.extend(self._alarms(state, kiosk, info, t))
            self._watch(state, kiosk, info, t)
        meta = state.get("m:emit") or {"last": None}
        current = {str(w): windows.start(t) for w, windows in TUMBLING.items()}
        rolled = [w for w in WINDOWS if meta.get(str(w)) != current[str(w)]]
        if meta["last"] is None or rolled or t - meta["last"] >= self.kpi_interval:
            windows = [(w, current[str(w)]) for w in WINDOWS]
            windows += [(w, current[str(w)] - w) for w in rolled]  # close the window that just ended
            kiosks = {k[2:]: v for k, v in state.items("k:")}
            out.extend(self._kpis(state, kiosks, windows, t))
            self._prune(state, t)
            state.put("m:emit", {"last": t, **current})
        return out

    def _to_evaluate(self, state: State, t: float) -> list[str]:
        """Kiosks whose state or alarms may change at ``t``, sorted. Any other kiosk is unchanged since it was
        last evaluated: its registry entry, heartbeats and peripherals did not change, it did not go silent, and
        (dark without an alarm) it has not reached its next opening time."""
        view = self._view(state)
        if view.all:
            view.all = False
            view.dirty.clear()
            view.heard.clear()
            view.silence.clear()
            view.watched.clear()
            view.openings.clear()
            view.opening_at.clear()
            ids = {k[2:] for k in state.keys("h:")} | {k[2:] for k in state.keys("d:")}
            ids |= {k[2:] for k in state.keys("a:")} | {k[2:] for k in state.keys("k:")}
            return sorted(ids)
        ids, view.dirty = view.dirty, set()
        for kiosk in view.heard:
            # A heartbeat changes nothing for a kiosk that stays offline (old heartbeats); it does when the kiosk
            # is back (or was never evaluated).
            h = state.get(f"h:{kiosk}")
            if h is not None and (h["status"] == "unknown" or is_online(h["last"], t, self.timeout)):
                ids.add(kiosk)
        view.heard = set()
        silence = view.silence
        while silence and silence[0][0] < t:
            _, kiosk = heapq.heappop(silence)
            view.watched.discard(kiosk)
            ids.add(kiosk)  # silent for longer than the timeout, or heard since: ``_watch`` puts it back
        openings = view.openings
        while openings and openings[0][0] <= t:
            at, kiosk = heapq.heappop(openings)
            if view.opening_at.get(kiosk) == at:
                del view.opening_at[kiosk]
                ids.add(kiosk)
        return sorted(
            k for k in ids if f"h:{k}" in state or f"d:{k}" in state or f"a:{k}" in state or f"k:{k}" in state
        )

    def _watch(self, state: State, kiosk: str, info: dict | None, t: float) -> None:
        """After evaluating a kiosk: when it must be looked at again without anything new about it."""
        view = self._view(state)
        h = state.get(f"h:{kiosk}")
        if h is None:
            if info is not None and info["active"] and "kiosk_offline" not in (state.get(f"a:{kiosk}") or {}):
                # Never reported: look again when a timeout of scheduled time can have passed.
                when = never_reported_due(info, t, self.timeout, self.closed)
                if when is not None:
                    if view.opening_at.get(kiosk) != when:
                        view.opening_at[kiosk] = when
                        heapq.heappush(view.openings, (when, kiosk))
            return
        if h["status"] == "online":
            if kiosk not in view.watched:
                view.watched.add(kiosk)
                heapq.heappush(view.silence, (h["last"] + self.timeout, kiosk))
        elif info is not None and info["active"] and "kiosk_offline" not in (state.get(f"a:{kiosk}") or {}):
            # Dark after hours: its offline alarm is due at the next opening time.
            ahead = opening_intervals(info["hours"], t, t + 8 * DAY, self.closed)
            if ahead and view.opening_at.get(kiosk) != ahead[0][0]:
                view.opening_at[kiosk] = ahead[0][0]
                heapq.heappush(view.openings, (ahead[0][0], kiosk))

    def _kiosk_state(self, state: State, kiosk: str, info: dict | None, t: float) -> list[EncodedEvent]:
        h = state.get(f"h:{kiosk}")
        if h is None:
            return []
        status = "online" if is_online(h["last"], t, self.timeout) else "offline"
        if status == h["status"]:
            return []
        h["status"] = status
        state.put(f"h:{kiosk}", h)
        # The payload as ``KioskStateChanged`` dumps it (built directly: thousands at once after an outage).
        payload = {
            "kiosk_id": kiosk,
            "state": status,
            "at": _iso(t if status == "offline" else h["last"]),
            "reason": "heartbeat_timeout" if status == "offline" else "heartbeats_resumed",
            "last_heartbeat_at": _iso(h["last"]),
            "district": info["district"] if info else None,
            "commune": info.get("commune") if info else None,
        }
        return [self._encode(STATE_EVENT, payload)]

    def _alarms(self, state: State, kiosk: str, info: dict | None, t: float) -> list[EncodedEvent]:
        """Raise and clear alarms so that they match the kiosk's current faults (level-triggered)."""
        raised: dict = state.get(f"a:{kiosk}") or {}
        h = state.get(f"h:{kiosk}")
        dev = state.get(f"d:{kiosk}") or {}
        wanted: dict[str, tuple[str, float, str | None]] = {}
        silent = h is not None and h["status"] == "offline"
        if h is None and info is not None:
            silent = never_reported_offline(info, t, self.timeout, self.closed)
        if silent:
            # Kiosks switched off after hours or on a public holiday are not an incident; one still dark at
            # opening time is.
            if "kiosk_offline" in raised or (
                info is not None and info["active"] and is_open(info["hours"], t, self.closed)
            ):
                wanted["kiosk_offline"] = ("kiosk_offline", t, None)
        for per, p in dev.items():
            if p["fault"] is not None:
                wanted[f"{p['fault']}:{per}"] = (p["fault"], p["since"], per)
        out: list[EncodedEvent] = []
        changed = False
        for akey, (ftype, at, per) in wanted.items():
            if akey in raised:
                continue
            raised[akey] = {"type": ftype, "at": at, "peripheral": per}
            changed = True
            out.append(self._alarm(kiosk, info, ftype, per, "raised", at))
            if ftype == "kiosk_offline":
                self._count_fault(state, kiosk, at)
        for akey in [k for k in raised if k not in wanted]:
            a = raised.pop(akey)
            changed = True
            if a["type"] == "kiosk_offline":
                at = h["last"] if h is not None and h["last"] is not None else t
                self._count_repair(state, kiosk, "kiosk_offline", at, at - a["at"])
            else:
                p = dev.get(a["peripheral"])
                at = p["since"] if p is not None and p["since"] is not None else t
            out.append(self._alarm(kiosk, info, a["type"], a["peripheral"], "cleared", max(at, a["at"])))
        if changed:
            if raised:
                state.put(f"a:{kiosk}", raised)
            else:
                state.pop(f"a:{kiosk}")
        return out

    def _alarm(
        self, kiosk: str, info: dict | None, ftype: str, peripheral: str | None, status: str, at: float
    ) -> EncodedEvent:
        what = {
            "kiosk_offline": "offline: heartbeats missing",
            "device_offline": "peripheral offline or powered off",
            "hardware_error": "peripheral hardware error",
            "paper_out": "printer out of paper",
            "paper_jam": "printer paper jammed",
            "fraud_attempt": "fraud attempt detected on a peripheral",
            "user_error": "a person is preventing proper device operation (not usable)",
        }[ftype]
        suffix = f":{peripheral}" if peripheral else ""
        msg = f"kiosk {kiosk}{f' {peripheral}' if peripheral else ''}: {what}"
        if status == "cleared":
            msg += " (resolved)"
        payload = {  # as ``AlarmChanged`` dumps it
            "alarm_id": f"kiosk:{ftype}:{kiosk}{suffix}",
            "domain": "kiosk",
            "alarm_type": ftype,
            "state": status,
            "severity": ALARM_SEVERITY[ftype],
            "source_id": kiosk,
            "district": info["district"] if info else None,
            "commune": info.get("commune") if info else None,
            "at": _iso(at),
            "message": msg,
        }
        return self._encode(ALARM_EVENT, payload)

    def _encode(self, etype, payload: dict) -> EncodedEvent:
        # Ids from a random per-instance prefix and a counter: unique, without a uuid4 per event.
        self._sent += 1
        return encode(etype, payload, source=self.source, id=f"{self._id_prefix}-{self._sent}")

    def _kpis(
        self, state: State, kiosks: dict[str, dict], windows: list[tuple[int, int]], t: float
    ) -> list[EncodedEvent]:
        out: list[EncodedEvent] = []
        payloads: list[dict] = []
        partition = state.partition
        offline_now: dict[str, float] = defaultdict(float)
        # One look at each active kiosk: offline now or not, and its online and peripherals' down time up to ``t``
        # (the same for every window).
        active: list[tuple[dict, list, dict]] = []
        for kiosk, info in kiosks.items():
            if not info["active"]:
                continue
            h = state.get(f"h:{kiosk}")
            # Offline counts only kiosks scheduled to serve now (closed for the night or a holiday is not
            # offline); a kiosk that never reported counts once a timeout of its service time has passed.
            silent = (
                h["status"] == "offline"
                if h is not None
                else never_reported_offline(info, t, self.timeout, self.closed)
            )
            if silent and is_open(info["hours"], t, self.closed):
                offline_now[info["district"]] += 1
            online = online_intervals(h["segs"], h["last"], t, self.timeout) if h else []
            dev = state.get(f"d:{kiosk}") or {}
            down = {
                per: merge((s, e if e is not None else t) for s, e in p["down"]) for per, p in dev.items()
            }
            active.append((info, online, down))
        observed_at = _iso(t)  # also the observations' CloudEvents time (as the other processors publish it)
        for w, ws in windows:
            end = min(ws + w, t)
            agg: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
            for info, online, down in active:
                av = kiosk_availability(info, online, down, ws, end, self.closed)
                a = agg[info["district"]]
                a["scheduled"] += av.scheduled_s
                a["online"] += av.online_s
                for journey, (up, sched) in av.journeys.items():
                    up_key, sched_key = _JOURNEY_KEYS[journey]
                    a[up_key] += up
                    a[sched_key] += sched
            for key, c in SESSIONS.items(state, w, int(ws)):
                entry = kiosks.get(key.entity)
                if entry is None:
                    continue  # registry entry not seen yet; counted once it is (same state)
                a = agg[entry["district"]]
                for field in ("n", "completed", "abandoned", "failed", "rating_sum", "rating_n"):
                    a[field] += c[field]
            for key, f in FAULTS.items(state, w, int(ws)):
                entry = kiosks.get(key.entity)
                if entry is None:
                    continue
                a = agg[entry["district"]]
                a["faults"] += f["n"]
                for ftype, (secs, n) in f["repairs"].items():
                    a[f"repair_s:{ftype}"] += secs
                    a[f"repair_n:{ftype}"] += n
            city: dict[str, float] = defaultdict(float)
            for a in agg.values():
                for k, v in a.items():
                    city[k] += v
            scopes = [("district", d, a) for d, a in sorted(agg.items())] + [("city", CITY_CODE, city)]
            for level, code, a in scopes:
                offline = None
                if w == HOUR and ws == TUMBLING[HOUR].start(t):
                    offline = sum(offline_now.values()) if level == "city" else offline_now.get(code, 0.0)
                payloads.extend(self._observations(level, code, a, offline, w, ws, observed_at, partition))
        # Payloads are built as the model dumps them and encoded in one go (no model objects: thousands of
        # observations per pass); their fields are this processor's own constants and validated inputs.
        out.extend(encode_many(KPI_EVENT, payloads, source=self.source, time=observed_at) if payloads else ())
        return out

    def _observations(
        self,
        level: str,
        code: str,
        a: dict[str, float],
        offline: float | None,
        w: int,
        ws: float,
        observed_at: str,
        partition: int,
    ) -> list[dict]:
        """``KpiObserved`` payloads of one area and window that changed since this partition last published
        them (availability of a closed window, or of the night, and session KPIs without new sessions do not)."""
        out: list[dict] = []
        window_iso = _iso(ws)
        changed = self.changed_since_emitted

        def obs(kpi: str, num: float, den: float | None, unit: str, scale: float = 1.0) -> None:
            if den is not None and not den and not num:
                return  # nothing to say for this area and window
            if not changed(partition, (kpi, level, code, w, ws), (num, den)):
                return
            value = num * scale if den is None else ratio(num, den, scale)
            out.append(
                kpi_observed_payload(
                    kpi, level, code, window_iso, w, value, num, den, unit, partition, observed_at
                )
            )

        sessions = a["n"]
        obs("kiosk.technical_availability", a["online"], a["scheduled"], "%", 100.0)
        for journey in JOURNEYS:
            obs(
                f"kiosk.functional_availability.{journey}",
                a[f"fa_up:{journey}"],
                a[f"fa_sched:{journey}"],
                "%",
                100.0,
            )
        if offline is not None:
            obs("kiosk.kiosks_offline", offline, None, "kiosks")
        if sessions:
            obs("kiosk.sessions", sessions, None, "sessions")
        obs("kiosk.sessions_per_kiosk_hour", sessions, a["scheduled"] / HOUR, "sessions/h")
        obs("kiosk.session_success_rate", a["completed"], sessions, "%", 100.0)
        obs("kiosk.abandonment_rate", a["abandoned"], sessions, "%", 100.0)
        obs("kiosk.faults_per_1000_sessions", a["faults"], sessions, "faults/1000", 1000.0)
        obs("kiosk.satisfaction_score", a["rating_sum"], a["rating_n"], "score")
        all_s = sum(a[f"repair_s:{f}"] for f in FAULT_TYPES)
        all_n = sum(a[f"repair_n:{f}"] for f in FAULT_TYPES)
        obs("kiosk.mttr_seconds", all_s, all_n, "s")
        for ftype in FAULT_TYPES:
            obs(f"kiosk.mttr_seconds.{ftype}", a[f"repair_s:{ftype}"], a[f"repair_n:{ftype}"], "s")
        return out

    def _prune(self, state: State, t: float) -> None:
        """Forget what no window still being published needs (older than the previous day or hour)."""
        horizon = TUMBLING[DAY].horizon(t)
        for key, h in state.items("h:"):
            segs = [s for s in h["segs"] if s[1] >= horizon]
            if len(segs) != len(h["segs"]):
                h["segs"] = segs
                state.put(key, h)
        for key, dev in state.items("d:"):
            changed = False
            for p in dev.values():
                down = [iv for iv in p["down"] if iv[1] is None or iv[1] >= horizon]
                if len(down) != len(p["down"]):
                    p["down"], changed = down, True
            if changed:
                state.put(key, dev)
        for space in (SESSIONS, FAULTS, SEEN):
            space.evict_expired(state, lambda k: TUMBLING.get(k.duration), t, "start")


def kiosk_kpi_processor(settings) -> KioskKpiProcessor:
    """The KPI processor configured from :class:`services.kiosk.settings.KioskSettings`."""
    from pathlib import Path

    from shared.calendar import city_calendar

    path = getattr(settings, "calendar_csv", "")
    calendar = city_calendar(Path(path)) if path else city_calendar()
    return KioskKpiProcessor(
        heartbeat_timeout_s=settings.heartbeat_timeout_seconds,
        kpi_interval_s=settings.kpi_interval_seconds,
        tick_seconds=settings.tick_seconds,
        closed_days=closed_days_of(calendar.days_off),
    )


PROCESSORS: list[Callable] = [kiosk_kpi_processor]
