"""Meter stream processors: energy and reliability KPIs per district and city, tamper and feeder alarms.

``MeterKpiProcessor`` folds readings, meter events, interruptions and the registry (co-partitioned by meter id)
into per-(window, district) aggregates and emits mergeable KPI observations for 15-minute and daily windows
(Hanoi days, from 17:00 UTC).
``FeederOutageProcessor`` reads supply changes keyed by feeder, so one partition sees a whole feeder, and raises
/ clears feeder-outage alarms.

Windows follow event time; retention is measured from the partition's watermark (the newest event time
seen), so replayed or time-compressed (simulated) data is aggregated the same way as live data.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from prometheus_client import Counter

from services.meter.domain import (
    ENERGY_IMPORT,
    MOMENTARY_LIMIT_SECONDS,
    TAMPER_CLEAR,
    TAMPER_RAISE,
    caidi_minutes,
    expected_intervals,
    feeder_in_outage,
    hanoi_day_start,
    iso_utc,
    maifi,
    momentary_event_starts,
    saidi_minutes,
    saifi,
    window_start,
)
from services.meter.settings import MeterSettings
from shared.areas import CITY_CODE, HANOI_OFFSET_S
from shared.contracts.cloudevents import EncodedEvent, ReceivedEvent, encode
from shared.contracts.common import kpi_observed_payload
from shared.contracts.meter import (
    ALARM_EVENT,
    EVENTS_TOPIC,
    FEEDER_SUPPLY_TOPIC,
    INTERRUPTIONS_TOPIC,
    KPI_EVENT,
    READINGS_TOPIC,
    REGISTRY_TOPIC,
)
from shared.stream import State, StreamProcessor
from shared.stream.windows import KeySpace, TumblingWindows, WindowedEntity

QUARTER = 900
DAY = 86400
WINDOWS = (QUARTER, DAY)
# Readings (and tamper events) still fold into a window this long behind the watermark; older ones are ignored
# rather than re-opening a pruned window with a partial value. 26 h covers the service's 62-interval
# de-duplication horizon for late readings.
RETENTION = {QUARTER: 26 * 3600, DAY: 3 * DAY}
# Interruptions are accrued to the window they began in (IEEE 1366), however late their restoration: a window
# takes them this long behind the watermark (a day window 8 days: a 90-hour outage restored is booked into the
# day it began). Later ones are counted (ioc_meter_interruptions_past_horizon_total) and raise an alarm.
RELIABILITY_RETENTION = {QUARTER: 26 * 3600, DAY: 8 * DAY}
# How long a window is kept at all (the KPI definitions' revisable_seconds cover it).
KEPT = {w: max(RETENTION[w], RELIABILITY_RETENTION[w]) for w in WINDOWS}
_OFFSET = {QUARTER: 0, DAY: HANOI_OFFSET_S}  # day windows are Hanoi days (domain.window_start)
# The windows as readings and tamper events see them, and as interruptions see them: same windows, same
# retention (``KEPT``), different grace.
READING_WINDOWS = {
    w: TumblingWindows(w, grace=RETENTION[w], retention=KEPT[w], offset=_OFFSET[w]) for w in WINDOWS
}
RELIABILITY_WINDOWS = {
    w: TumblingWindows(w, grace=RELIABILITY_RETENTION[w], retention=KEPT[w], offset=_OFFSET[w])
    for w in WINDOWS
}
INTERRUPTIONS_PAST_HORIZON = Counter(
    "ioc_meter_interruptions_past_horizon_total",
    "Interruptions restored after the window they began in was closed for revision (not in its indices)",
    ["window_seconds"],
)
VALID_QUALITY = "measured"
REGISTRY_BUCKETS = 64
# The meters read in a day window live in bucket keys "dm:<day start>:<district>:<bucket>" (meter id → 1),
# not inside the window's aggregate: the aggregate changes with every batch and is re-written to the changelog
# each time, while a bucket changes only when a meter is read for the first time that day.
DAY_METER_BUCKETS = 32


class DayMeters(NamedTuple):
    """The key of one bucket of the meters read in a day in a district."""

    start: int
    district: str
    bucket: int


class District(NamedTuple):
    district: str


AGGREGATES = KeySpace("agg", WindowedEntity)  # a district's aggregate in a window (entity: the district)
DAY_METERS = KeySpace("dm", DayMeters)
NETWORK = KeySpace("nt", District)  # a district's registry steps (meters, customers) over time
LEGACY_REGISTRY = KeySpace("reg", District)  # an older layout of the same, upgraded into NETWORK


@lru_cache(maxsize=65536)
def _epoch(ts: str) -> int:
    # Cached: the readings of a batch share a few interval ends.
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())


def _new_agg() -> dict[str, Any]:
    # kwh: energy; valid: valid intervals; meters: how many distinct meters were read (day windows only; the
    # meters themselves are in the "dm:" buckets); tamper: events; ci / cmi / mi / mie: customers interrupted
    # (sustained), customer-minutes, customer momentary interruptions, customer momentary interruption events
    # (an aggregate of an older version has no "mie": read with .get).
    return {"kwh": 0.0, "valid": 0, "meters": 0, "tamper": 0, "ci": 0.0, "cmi": 0.0, "mi": 0.0, "mie": 0.0}


def _day_epoch(text: str | None) -> int | None:
    return None if text is None else hanoi_day_start(date.fromisoformat(text))


def _segments(entry: list) -> list[list]:
    """A meter's registry segments [district, customers, interval, from, to or None]; an entry of an older
    state layout ([district, customers, interval]) served from the beginning."""
    if entry and type(entry[0]) is str:
        return [[*entry, 0, None]]
    return entry


def _served(nt: dict, ws: int, seconds: int) -> tuple[int, int, dict[int, int]]:
    """(meters, customers, meters by reading interval) a district serves in the window [ws, ws + seconds): the
    meters in service at any time of it (installed before its end, not removed by its start)."""
    we = ws + seconds
    meters = customers = 0
    by: dict[int, int] = {}
    for sign, side, inside in ((1, nt["a"], lambda t: t < we), (-1, nt["r"], lambda t: t <= ws)):
        for key, (m, c) in side.items():
            t, interval = key.split("|")
            if inside(int(t)):
                meters += sign * m
                customers += sign * c
                by[int(interval)] = by.get(int(interval), 0) + sign * m
    return meters, customers, by


def _day_bucket(meter_id: str) -> int:
    return zlib.crc32(meter_id.encode()) % DAY_METER_BUCKETS


def _upgraded(state: State, key: str, agg: dict) -> dict:
    """``agg`` in the current layout: an aggregate written by an older version holds its day's meters as a
    dict, which moves to the "dm:" buckets (so state recovered from an older changelog keeps counting
    exactly)."""
    meters = agg["meters"]
    if type(meters) is dict:
        window = AGGREGATES.parse(key)
        agg["meters"] = len(meters)
        for mid in meters:
            bucket_key = DAY_METERS.key(DayMeters(window.start, window.entity, _day_bucket(mid)))
            bucket = state.get(bucket_key) or {}
            bucket[mid] = 1
            state[bucket_key] = bucket
        state[key] = agg
    return agg


def _percent(numerator: float, denominator: float) -> float | None:
    return numerator / denominator * 100.0 if denominator else None


def _obs(
    kpi: str,
    level: str,
    code: str,
    ws: int,
    seconds: int,
    numerator: float,
    denominator: float | None,
    unit: str,
    value: float | None,
    partition: int,
    now_iso: str,
) -> EncodedEvent:
    """One KpiObserved; ``value`` is the KPI over this partition alone (None when undefined)."""
    payload = kpi_observed_payload(
        kpi, level, code, iso_utc(ws), seconds, value, numerator, denominator, unit, partition, now_iso
    )
    # ce_time is when it was observed (the emit's now), not read from the clock again for every observation
    return encode(
        KPI_EVENT,
        payload,
        source="/ioc/meter/processor",
        id=f"{payload['key']}|{ws}|{seconds}|{partition}|{now_iso}",
        time=now_iso,
    )


class MeterKpiProcessor(StreamProcessor):
    """Energy, read success, completeness, supply, tamper and IEEE 1366 KPIs per district and city."""

    name = "meter-kpi"
    topics = (READINGS_TOPIC.name, EVENTS_TOPIC.name, INTERRUPTIONS_TOPIC.name, REGISTRY_TOPIC.name)
    tick_seconds = 5.0

    def __init__(self, momentary_limit_seconds: float = MOMENTARY_LIMIT_SECONDS):
        self.momentary_limit_seconds = momentary_limit_seconds
        # The newest event time of every partition this worker folds (memory only): the clock that opens the
        # windows of a partition whose own meters are silent (see emit).
        self.worker_watermark = 0
        # The oldest event time this worker folded (memory only): how far back a fresh state opens its days.
        self.worker_first = 0
        # Each partition's state and watermark when it was last pruned (memory only): an unchanged pair skips.
        self._pruned_at: dict[int, tuple[State, int]] = {}

    # ------------------------------------------------------------------------------------------- apply
    def apply(self, event: ReceivedEvent, state: State) -> None:
        d = event.data
        topic = event.topic
        if topic == READINGS_TOPIC.name:
            self._reading(d, state)
        elif topic == EVENTS_TOPIC.name:
            self._meter_event(d, state)
        elif topic == INTERRUPTIONS_TOPIC.name:
            self._interruption(d, state)
        elif topic == REGISTRY_TOPIC.name:
            self._registry(d, state)

    def _advance(self, state: State, epoch: int) -> None:
        if epoch < self.worker_first or not self.worker_first:
            self.worker_first = epoch
        if epoch > state.get("wm", 0):
            old = state.get("wm", 0)
            state["wm"] = epoch
            if epoch > self.worker_watermark:
                self.worker_watermark = epoch
            if window_start(epoch, QUARTER) != window_start(old, QUARTER):
                state["supply_dirty"] = True

    def _agg(
        self,
        state: State,
        seconds: int,
        epoch: int,
        district: str,
        windows: dict[int, TumblingWindows] = READING_WINDOWS,
    ) -> tuple[str, dict] | None:
        """The aggregate of the window holding ``epoch``; None when the window no longer takes this kind of
        input (``windows``: its grace)."""
        window = windows[seconds]
        ws = window.start(epoch)
        if not window.accepts(ws, state.get("wm", 0)):
            return None
        key = AGGREGATES.key(WindowedEntity(seconds, ws, district))
        agg = state.get(key)
        if agg is None:
            agg = _new_agg()
        elif type(agg["meters"]) is dict:
            agg = _upgraded(state, key, agg)
        return key, agg

    def _touch(self, state: State, key: str, agg: dict) -> None:
        state[key] = agg
        dirty = state.get("dirty")
        if dirty is None:
            dirty = state["dirty"] = {}
        if key not in dirty:
            dirty[key] = 1
            state["dirty"] = dirty

    def _reading(self, d: dict, state: State) -> None:
        if d["obis"] != ENERGY_IMPORT:
            return
        end = _epoch(d["interval_end"])
        start = end - d["interval_seconds"]
        self._advance(state, end)
        valid = d["quality"] == VALID_QUALITY and d["value"] is not None
        delta = d.get("delta")
        taken = False
        for seconds in WINDOWS:
            found = self._agg(state, seconds, start, d["district"])
            if found is None:
                continue
            taken = True
            key, agg = found
            if delta is not None:
                agg["kwh"] += delta
            if valid:
                agg["valid"] += 1
                if seconds == DAY:
                    mid = d["meter_id"]
                    day = READING_WINDOWS[DAY].start(start)
                    bucket_key = DAY_METERS.key(DayMeters(day, d["district"], _day_bucket(mid)))
                    bucket = state.get(bucket_key) or {}
                    if mid not in bucket:
                        bucket[mid] = 1
                        state[bucket_key] = bucket
                        agg["meters"] += 1
            self._touch(state, key, agg)
        if not taken:
            self.ignored_late(1)

    def apply_batch(self, events: list[ReceivedEvent], state: State) -> None:
        """Same effects as :meth:`apply` per event, in order (float sums included), with the per-reading work cut
        down: readings are folded into the aggregates of their (window, district) found once per batch, and
        each aggregate and day bucket is put into the state once per batch."""
        readings_topic = READINGS_TOPIC.name
        get = state.get
        wm = get("wm", 0)
        # (interval end, interval seconds, district) → [quarter key, quarter agg or None, its retention limit,
        # day key, day agg or None, its retention limit, day start, the day's meter buckets]: a window is still
        # open while wm < limit.
        slots: dict[tuple[str, int, str], list] = {}
        touched: dict[str, dict] = {}  # aggregate key → aggregate, put into the state once at the end
        # (day start, district) → its meter buckets, each loaded from the state once a batch (None: not yet)
        day_sets: dict[tuple[int, str], list[dict | None]] = {}
        changed_buckets: set[tuple[int, str, int]] = set()
        late = 0
        apply = self.apply
        for ev in events:
            if ev.topic != readings_topic:
                # Other events go through the per-event path, which reads and advances the watermark itself.
                if wm != get("wm", 0):
                    self._set_wm(state, wm)
                apply(ev, state)
                wm = get("wm", 0)
                continue
            d = ev.data
            if d["obis"] != ENERGY_IMPORT:
                continue
            district = d["district"]
            sk = (d["interval_end"], d["interval_seconds"], district)
            slot = slots.get(sk)
            if slot is None:
                end = _epoch(sk[0])
                start = end - sk[1]
                if end < self.worker_first or not self.worker_first:
                    self.worker_first = end  # as _advance does on the per-event path
                if end > wm:
                    # Readings can only advance the watermark here: a later reading of the same interval end
                    # finds wm >= end.
                    if window_start(end, QUARTER) != window_start(wm, QUARTER):
                        state["supply_dirty"] = True
                    wm = end
                slot = slots[sk] = self._slot(state, start, district, wm, touched)
                day_key = (slot[6], district)
                day_buckets = day_sets.get(day_key)
                if day_buckets is None:
                    day_buckets = day_sets[day_key] = [None] * DAY_METER_BUCKETS
                slot.append(day_buckets)
            valid = d["quality"] == VALID_QUALITY and d["value"] is not None
            delta = d.get("delta")
            qagg = slot[1]
            if qagg is not None and wm < slot[2]:
                if delta is not None:
                    qagg["kwh"] += delta
                if valid:
                    qagg["valid"] += 1
            elif slot[4] is None or wm >= slot[5]:
                late += 1  # a day outlives its quarter hours: neither window takes this reading any more
            dagg = slot[4]
            if dagg is not None and wm < slot[5]:
                if delta is not None:
                    dagg["kwh"] += delta
                if valid:
                    dagg["valid"] += 1
                    mid = d["meter_id"]
                    b = _day_bucket(mid)
                    day_buckets = slot[7]
                    bucket = day_buckets[b]
                    if bucket is None:
                        bucket = day_buckets[b] = get(DAY_METERS.key(DayMeters(slot[6], district, b))) or {}
                    if mid not in bucket:
                        bucket[mid] = 1
                        changed_buckets.add((slot[6], district, b))
                        dagg["meters"] += 1
        if late:
            self.ignored_late(late)
        if wm != get("wm", 0):
            self._set_wm(state, wm)
        for ws, district, b in changed_buckets:
            state[DAY_METERS.key(DayMeters(ws, district, b))] = day_sets[(ws, district)][b]
        for key, agg in touched.items():
            self._touch(state, key, agg)

    def _slot(self, state: State, start: int, district: str, wm: int, touched: dict[str, dict]) -> list:
        slot: list = []
        for seconds, window in READING_WINDOWS.items():
            ws = window.start(start)
            limit = window.revisable_until(ws)
            agg = None
            key = AGGREGATES.key(WindowedEntity(seconds, ws, district))
            if wm < limit:
                agg = touched.get(key)
                if agg is None:
                    found = self._agg(state, seconds, start, district)
                    assert found is not None
                    agg = touched[key] = found[1]
                    # In the state at once: an interleaved non-reading event must find this same dict.
                    state[key] = agg
            slot += (key, agg, limit)
        slot.append(READING_WINDOWS[DAY].start(start))
        return slot

    def _set_wm(self, state: State, wm: int) -> None:
        state["wm"] = wm
        if wm > self.worker_watermark:
            self.worker_watermark = wm

    def _meter_event(self, d: dict, state: State) -> None:
        at = _epoch(d["at"])
        self._advance(state, at)
        kind = d["event"]
        mid = d["meter_id"]
        if kind == "power_down":
            # Arrival order is not event order: a power-up of a later time already seen restored this one.
            up = state.get(f"up:{mid}")
            if up is not None and up >= at:
                state.pop(f"up:{mid}")
                return
            down = state.get(f"down:{mid}")
            if down is None or at < down[1]:
                state[f"down:{mid}"] = [d["district"], at, d["customers"]]
                state["supply_dirty"] = True
        elif kind == "power_up":
            down = state.get(f"down:{mid}")
            if down is not None and down[1] <= at:
                state.pop(f"down:{mid}")
                state["supply_dirty"] = True
            else:
                # It may restore a power-down still to arrive (store and forward): remembered until then.
                state[f"up:{mid}"] = max(at, state.get(f"up:{mid}", at))
        elif kind in TAMPER_RAISE:
            for seconds in WINDOWS:
                found = self._agg(state, seconds, at, d["district"])
                if found is not None:
                    found[1]["tamper"] += 1
                    self._touch(state, *found)
            flag = f"tamper:{mid}:{TAMPER_RAISE[kind]}"
            if flag not in state:
                state[flag] = 1
                self._alarm(state, d, TAMPER_RAISE[kind], "raised")
        elif kind in TAMPER_CLEAR:
            flag = f"tamper:{mid}:{TAMPER_CLEAR[kind]}"
            if flag in state:
                state.pop(flag)
                self._alarm(state, d, TAMPER_CLEAR[kind], "cleared")

    def _alarm(self, state: State, d: dict, tamper: str, change: str) -> None:
        what = tamper.replace("_", " ")
        pending = state.get("out") or []
        pending.append(
            {
                "alarm_id": f"meter:tamper_{tamper}:{d['meter_id']}",
                "domain": "meter",
                "alarm_type": f"tamper_{tamper}",
                "state": change,
                "severity": "major",
                "source_id": d["meter_id"],
                "district": d["district"],
                "commune": d["commune"],
                "at": d["at"],
                "message": f"meter tamper: {what} {'detected' if change == 'raised' else 'ended'}",
            }
        )
        state["out"] = pending

    def _interruption(self, d: dict, state: State) -> None:
        started = _epoch(d["started_at"])
        ended = _epoch(d["ended_at"])
        self._advance(state, ended)
        customers = d["customers"]
        mid = d["meter_id"]
        down = state.get(f"down:{mid}")
        if down is not None and started <= down[1] <= ended:
            state.pop(f"down:{mid}")  # the service paired it (whatever order its power events arrived in)
            state["supply_dirty"] = True
        momentary = d["kind"] == "momentary"
        new_event = False
        limit = self.momentary_limit_seconds
        if momentary:
            # IEEE 1366 momentary interruption events: reclosings within 5 minutes of the event's first
            # interruption are one event (per meter, from the starts of its recent events).
            starts = state.get(f"me:{mid}") or []
            new_event = momentary_event_starts((started, ended, "momentary"), starts, limit)
            if new_event:
                state[f"me:{mid}"] = [*[s for s in starts if s > started - DAY][-7:], started]
                # MAIFI_E leaves out the events that end in a lockout: a sustained interruption of the meter
                # within the event's 5 minutes is the same outage (whichever of the two arrives first).
                if any(started <= s <= started + limit for s in state.get(f"ss:{mid}") or ()):
                    new_event = False
                    state[f"mex:{mid}"] = [*(state.get(f"mex:{mid}") or [])[-7:], started]
        else:
            sustained = state.get(f"ss:{mid}") or []
            state[f"ss:{mid}"] = [*[s for s in sustained if s > started - DAY][-7:], started]
            excluded = state.get(f"mex:{mid}") or []
            for event_start in state.get(f"me:{mid}") or ():
                if event_start <= started <= event_start + limit and event_start not in excluded:
                    excluded = [*excluded[-7:], event_start]
                    state[f"mex:{mid}"] = excluded
                    self._uncount_momentary_event(state, event_start, d["district"], d["customers"])
        for seconds in WINDOWS:
            found = self._agg(state, seconds, started, d["district"], RELIABILITY_WINDOWS)
            if found is None:
                INTERRUPTIONS_PAST_HORIZON.labels(str(seconds)).inc()
                if seconds == DAY:
                    self._past_horizon_alarm(state, d, started)
                continue
            key, agg = found
            if momentary:
                agg["mi"] += customers
                if new_event:
                    agg["mie"] = agg.get("mie", 0.0) + customers
            else:
                agg["ci"] += customers
                agg["cmi"] += customers * d["duration_seconds"] / 60.0
            self._touch(state, key, agg)

    def _uncount_momentary_event(
        self, state: State, event_start: float, district: str, customers: float
    ) -> None:
        """A momentary event counted before the sustained interruption that ended its reclosing sequence arrived:
        taken out of MAIFI_E (its interruptions stay in MAIFI)."""
        for seconds in WINDOWS:
            found = self._agg(state, seconds, int(event_start), district, RELIABILITY_WINDOWS)
            if found is not None:
                key, agg = found
                agg["mie"] = agg.get("mie", 0.0) - customers
                self._touch(state, key, agg)

    def _past_horizon_alarm(self, state: State, d: dict, started: int) -> None:
        """Tell the operator an interruption came too late for its day's indices (never dropped silently)."""
        day = datetime.fromtimestamp(window_start(started, DAY) + 7 * 3600, UTC).date().isoformat()
        minutes = d["duration_seconds"] / 60.0
        pending = state.get("out") or []
        pending.append(
            {
                "alarm_id": f"meter:interruption_past_horizon:{d['district']}",
                "domain": "meter",
                "alarm_type": "interruption_past_horizon",
                "state": "raised",
                "severity": "major",
                "source_id": d["district"],
                "district": d["district"],
                "commune": d["commune"],
                "at": d["ended_at"],
                "message": f"an interruption of {d['customers']} customer(s), {minutes:.0f} min, began on {day} "
                "but was restored after that day's indices closed for revision: it is not in them",
            }
        )
        state["out"] = pending

    def _registry(self, d: dict, state: State) -> None:
        """A registry entry: the meter's segments of service (district, customers, interval, from, to) change
        from the entry's date on; each district's customers served (N_T) is a step function of time."""
        self._upgrade_registry(state)
        mid = d["meter_id"]
        installed = hanoi_day_start(date.fromisoformat(d["installed_on"]))
        removed = _day_epoch(d.get("decommissioned_on"))
        effective = _day_epoch(d.get("effective_on"))
        # Registry entries live in a few bucket keys, not one key per meter: the state's prefix scans (emit,
        # prune) would otherwise walk every meter of the partition.
        bucket_key = f"mb:{zlib.crc32(mid.encode()) % REGISTRY_BUCKETS}"
        bucket = state.get(bucket_key) or {}
        old = _segments(bucket.get(mid) or [])
        entry = [d["district"], d["customers"], d["interval_seconds"]]
        if effective is None or not old:
            new = [[*entry, installed, removed]]
        else:
            start = max(effective, installed)
            new = [
                [*seg[:4], start if seg[4] is None else min(seg[4], start)] for seg in old if seg[3] < start
            ]
            new.append([*entry, start, removed])
        if removed is not None:
            new = [[*seg[:4], removed if seg[4] is None else min(seg[4], removed)] for seg in new]
        new = [seg for seg in new if seg[4] is None or seg[4] > seg[3]]
        if old == new:
            return
        for seg in old:
            self._count(state, seg, -1)
        for seg in new:
            self._count(state, seg, +1)
        bucket[mid] = new
        state[bucket_key] = bucket
        # Denominators of these districts changed: every window kept is re-emitted (expanded in emit, once).
        changed = state.get("reg_changed") or []
        for district in {seg[0] for seg in old + new}:
            if district not in changed:
                changed.append(district)
                state["reg_changed"] = changed
        state["supply_dirty"] = True

    def _count(self, state: State, seg: list, sign: int) -> None:
        district, customers, interval, start, end = seg
        nt = state.get(NETWORK.key(District(district))) or {"a": {}, "r": {}}
        for side, t in (("a", start), ("r", end)):
            if t is None:
                continue
            key = f"{t}|{interval}"
            m, c = nt[side].get(key, (0, 0))
            m, c = m + sign, c + sign * customers
            if m == 0 and c == 0:
                nt[side].pop(key, None)
            else:
                nt[side][key] = [m, c]
        state[NETWORK.key(District(district))] = nt

    def _upgrade_registry(self, state: State) -> None:
        """Counts of an older state layout ("reg:<district>", meters served since ever) as step functions."""
        for key, reg in state.items(LEGACY_REGISTRY.prefix):
            district = LEGACY_REGISTRY.parse(key).district
            nt = state.get(NETWORK.key(District(district))) or {"a": {}, "r": {}}
            for interval, m in reg["by_interval"].items():
                k = f"0|{interval}"
                old = nt["a"].get(k, (0, 0))
                share = reg["customers"] if interval == next(iter(reg["by_interval"])) else 0
                nt["a"][k] = [old[0] + m, old[1] + share]
            state[NETWORK.key(District(district))] = nt
            state.pop(key)

    # -------------------------------------------------------------------------------------------- emit
    def emit(self, state: State, now: datetime) -> Iterable[EncodedEvent]:
        """KPIs of the windows changed since the last emit (every district served, and the city), supply and
        live outage figures, alarms.

        Every district with customers served in a window gets its observations, whether or not its meters
        reported: N_T (the denominators) must reach the city from every partition. The partition's clock opens
        each quarter hour that has ended and each day that has begun for every district, so a partition whose
        meters are all silent still publishes its customers served. The clock is event time: the partition's
        watermark or, when later, the newest event time of any partition this worker folds (a partition of
        silent meters has no event time of its own); never the wall clock, so replayed data opens the same
        windows. The live outage figures accrue minutes up to the later of that clock and ``now``.

        Only observations whose numerator or denominator differ from what this worker last published for the
        partition are encoded (``changed_since_emitted``). After a restart or rebalance everything of a dirty
        window is published again once.
        """
        out: list[EncodedEvent] = []
        now_iso = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
        p = state.partition
        self._upgrade_registry(state)
        wm = state.get("wm", 0)
        clock = max(wm, self.worker_watermark)
        windows: set[tuple[int, int]] = {
            (k.duration, k.start) for k in map(AGGREGATES.parse, state.get("dirty") or {})
        }
        known = {(int(a), int(b)) for a, b in state.get("win") or []}
        opened = self._open_windows(state, clock)
        windows |= opened
        if state.pop("reg_changed"):
            windows |= known | {(k.duration, k.start) for k in AGGREGATES.keys(state)}
        if windows - known:
            state["win"] = sorted(known | windows)
        nts = {k.district: nt for k, nt in NETWORK.items(state)}
        for seconds, ws in sorted(windows):
            if READING_WINDOWS[seconds].expired(ws, wm):
                continue
            aggs = {k.entity: agg for k, agg in AGGREGATES.items(state, seconds, ws)}
            city = {"n_meters": 0, "n_customers": 0, "expected": 0, **_new_agg()}
            empty = _new_agg()
            for district in sorted(set(aggs) | set(nts)):
                agg = aggs.get(district)
                if agg is None:
                    agg = empty
                elif type(agg["meters"]) is dict:
                    agg = _upgraded(state, AGGREGATES.key(WindowedEntity(seconds, ws, district)), agg)
                nt = nts.get(district)
                served_meters, customers, by = _served(nt, ws, seconds) if nt is not None else (0, 0, {})
                if agg is empty and not served_meters:
                    continue
                expected = expected_intervals(seconds, ws, by)
                meters_read = agg["meters"] if seconds == DAY else agg["valid"]
                expected_meters = served_meters if seconds == DAY else expected
                out += self._kpis(
                    "district",
                    district,
                    ws,
                    seconds,
                    agg,
                    meters_read,
                    expected_meters,
                    expected,
                    customers,
                    p,
                    now_iso,
                    agg is empty,
                )
                city["n_meters"] += expected_meters
                city["n_customers"] += customers
                city["expected"] += expected
                city["meters"] += meters_read
                for f in ("kwh", "valid", "tamper", "ci", "cmi", "mi"):
                    city[f] += agg[f]
                city["mie"] += agg.get("mie", 0.0)
            out += self._kpis(
                "city",
                CITY_CODE,
                ws,
                seconds,
                city,
                city["meters"],
                city["n_meters"],
                city["expected"],
                city["n_customers"],
                p,
                now_iso,
            )
        if "dirty" in state:
            state.pop("dirty")
        if state.get("supply_dirty") or opened or state.keys("down:"):
            out += self._supply(state, p, now_iso, max(clock, int(now.timestamp())))
            state.pop("supply_dirty")
        pending = state.get("out")
        if pending:
            out += [
                encode(
                    ALARM_EVENT,
                    a,
                    source="/ioc/meter/processor",
                    id=f"{a['alarm_id']}|{a['state']}|{a['at']}",
                )
                for a in pending
            ]
            state.pop("out")
        self._prune(state)
        return out

    def _open_windows(self, state: State, clock: int) -> set[tuple[int, int]]:
        """The windows the partition's clock entered since the last emit (each quarter hour and day between,
        within what is kept), for every district to report its customers served in."""
        last = state.get("clock") or {}
        opened: set[tuple[int, int]] = set()
        moved = False
        if not clock:
            return opened
        for seconds in WINDOWS:
            # The quarter hours ended by the clock (a reading ending at the clock belongs to the quarter hour
            # before it; one not ended yet would show reads missing that are only not delivered yet), the day
            # it is in (today's indices accrue during the day).
            current = window_start(clock - (QUARTER if seconds == QUARTER else 1), seconds)
            prev = last.get(str(seconds))
            if prev is not None and prev >= current:
                continue
            if prev is None:
                # A fresh state (first deployment, new partition): the days since the oldest event this worker
                # folded (within what is kept) are opened too, so the indices of days the clock passed before
                # this partition's first emit get every partition's N_T.
                oldest = window_start(min(self.worker_first or clock, clock), DAY)
                first = max(oldest, current - KEPT[DAY]) if seconds == DAY else current
            else:
                first = max(prev + seconds, current - KEPT[seconds])
            ws = current
            while ws >= first:
                opened.add((seconds, ws))
                ws = window_start(ws - 1, seconds)
            last[str(seconds)] = current
            moved = True
        if moved:
            state["clock"] = last
        return opened

    def _kpis(
        self,
        level: str,
        code: str,
        ws: int,
        seconds: int,
        agg: dict,
        meters_read: int,
        expected_meters: int,
        expected: int,
        customers: int,
        p: int,
        now_iso: str,
        silent: bool = False,
    ) -> list[EncodedEvent]:
        """The observations of one area and window. ``silent``: nothing arrived for it in this partition, so
        only the KPIs whose denominators (customers served, meters and intervals expected) it must contribute are
        published; its sums (energy, tamper, demand) and CAIDI would add nothing to the city's merge."""
        out: list[EncodedEvent] = []
        changed = self.changed_since_emitted
        if silent:
            for kpi, num, den, unit in (
                ("meter.read_success_rate", 0, expected_meters, "%"),
                ("meter.interval_completeness", 0, expected, "%"),
                ("meter.saifi", 0.0, customers, "int/cust"),
                ("meter.saidi_minutes", 0.0, customers, "min"),
                ("meter.maifi", 0.0, customers, "int/cust"),
                ("meter.maifi_e", 0.0, customers, "int/cust"),
            ):
                if changed(p, (kpi, level, code, ws, seconds), (num, den)):
                    value = (0.0 if den else None) if unit != "%" else _percent(num, den)
                    out.append(_obs(kpi, level, code, ws, seconds, num, den, unit, value, p, now_iso))
            return out

        def obs(
            kpi: str, num: float, den: float | None, unit: str, value: Callable[[], float | None]
        ) -> None:
            # Checked before encoding (the costly part); ``value`` is computed only for what is published.
            if changed(p, (kpi, level, code, ws, seconds), (num, den)):
                out.append(_obs(kpi, level, code, ws, seconds, num, den, unit, value(), p, now_iso))

        kwh, ci, cmi, mi, valid, tamper = (
            agg["kwh"],
            agg["ci"],
            agg["cmi"],
            agg["mi"],
            agg["valid"],
            agg["tamper"],
        )
        obs("meter.energy_kwh", kwh, None, "kWh", lambda: kwh)
        obs(
            "meter.read_success_rate",
            meters_read,
            expected_meters,
            "%",
            lambda: _percent(meters_read, expected_meters),
        )
        obs("meter.interval_completeness", valid, expected, "%", lambda: _percent(valid, expected))
        obs("meter.tamper_alarms", tamper, None, "count", lambda: tamper)
        obs("meter.saifi", ci, customers, "int/cust", lambda: saifi(ci, customers))
        obs("meter.saidi_minutes", cmi, customers, "min", lambda: saidi_minutes(cmi, customers))
        obs("meter.caidi_minutes", cmi, ci, "min", lambda: caidi_minutes(cmi, ci))
        obs("meter.maifi", mi, customers, "int/cust", lambda: maifi(mi, customers))
        mie = agg.get("mie", 0.0)
        obs("meter.maifi_e", mie, customers, "int/cust", lambda: maifi(mie, customers))
        if seconds == QUARTER:
            # Average demand over the quarter hour (kWh / 0.25 h); the day's peak is the max of these.
            demand = kwh * 3600.0 / seconds
            obs("meter.peak_demand_kw", demand, None, "kW", lambda: demand)
        return out

    def _supply(self, state: State, p: int, now_iso: str, clock: int) -> list[EncodedEvent]:
        """Live outage figures in the watermark's quarter hour, per district and city (those that changed since
        last published): meters without supply, customers interrupted now, and the customer-minutes of the
        outages in progress so far (at the partition's clock)."""
        districts = {k.district: [0, 0, 0.0] for k in NETWORK.keys(state)}
        clock -= clock % 60  # minutes accrue (and are re-published) once a minute, not on every emit
        for _, down in state.items("down:"):
            district, at = down[0], down[1]
            customers = down[2] if len(down) > 2 else 1
            c = districts.setdefault(district, [0, 0, 0.0])
            c[0] += 1
            c[1] += customers
            c[2] += customers * max(0, clock - at) / 60.0
        ws = window_start(state.get("wm", 0), QUARTER)
        changed = self.changed_since_emitted
        scopes = [("district", dist, c) for dist, c in sorted(districts.items())]
        scopes.append(("city", CITY_CODE, [sum(c[i] for c in districts.values()) for i in range(3)]))
        out = []
        # Customers interrupted now and their minutes: the city always, a district while it has an outage and
        # once more when it ends (a sum over partitions: a district without a partial adds nothing).
        was_live = set(state.get("live") or ())
        live = {code for level, code, c in scopes if level == "district" and c[0]}
        for kpi, i, unit in (
            ("meter.meters_without_supply", 0, "meters"),
            ("meter.customers_interrupted_now", 1, "customers"),
            ("meter.customer_minutes_in_progress", 2, "min"),
        ):
            for level, code, c in scopes:
                if i and level == "district" and code not in live and code not in was_live:
                    continue
                n = c[i]
                if changed(p, (kpi, level, code, ws, QUARTER), (n, None)):
                    out.append(_obs(kpi, level, code, ws, QUARTER, n, None, unit, n, p, now_iso))
        if live != was_live:
            state["live"] = sorted(live)
        return out

    def _prune(self, state: State) -> None:
        wm = state.get("wm", 0)
        last = self._pruned_at.get(state.partition)
        if last is not None and last[0] is state and last[1] == wm:
            return  # nothing can have expired since this state was last pruned
        AGGREGATES.evict_expired(state, lambda k: READING_WINDOWS[k.duration], wm, "start")
        days = READING_WINDOWS[DAY]
        for key in state.keys(DAY_METERS.prefix):
            if not days.accepts(DAY_METERS.parse(key).start, wm):  # no reading of that day is taken any more
                state.pop(key)
        known = state.get("win")
        if known:
            kept = [w for w in known if not READING_WINDOWS[w[0]].expired(w[1], wm)]
            if len(kept) != len(known):
                state["win"] = kept
        for key, up in state.items("up:"):
            if up <= wm - KEPT[DAY]:
                state.pop(key)
        for prefix in ("me:", "ss:", "mex:"):  # momentary events, sustained starts, events ended in lockout
            for key, starts in state.items(prefix):
                if not starts or starts[-1] <= wm - DAY:
                    state.pop(key)
        # Registry steps older than every window kept count alike for all of them: merged into one per interval.
        floor = wm - max(KEPT[w] + w for w in WINDOWS) - DAY
        for key, nt in state.items(NETWORK.prefix):
            compact = {}
            for side in ("a", "r"):
                merged: dict[str, list[int]] = {}
                for k, (m, c) in nt[side].items():
                    t, interval = k.split("|")
                    k = f"0|{interval}" if int(t) <= floor else k
                    old = merged.get(k, [0, 0])
                    merged[k] = [old[0] + m, old[1] + c]
                compact[side] = {k: v for k, v in merged.items() if v != [0, 0]}
            if compact != nt:
                state[key] = compact
        self._pruned_at[state.partition] = (state, wm)


class FeederOutageProcessor(StreamProcessor):
    """Feeder outage alarms: many meters of one feeder without supply at the same time."""

    name = "meter-feeder-outage"
    topics = (FEEDER_SUPPLY_TOPIC.name,)
    tick_seconds = 5.0

    def __init__(self, fraction: float = 0.5, minimum: int = 3):
        self.fraction = fraction
        self.minimum = minimum

    def apply(self, event: ReceivedEvent, state: State) -> None:
        d = event.data
        key = f"f:{d['feeder']}"
        f = state.get(key) or {"down": {}, "meters": 0, "raised": False, "district": d["district"]}
        f["meters"] = d["feeder_meters"]
        if d["supply"] == "lost":
            f["down"][d["meter_id"]] = d["at"]
        else:
            f["down"].pop(d["meter_id"], None)
        out = feeder_in_outage(len(f["down"]), f["meters"], fraction=self.fraction, minimum=self.minimum)
        if out != f["raised"]:
            f["raised"] = out
            pending = state.get("out") or []
            n = len(f["down"])
            pending.append(
                {
                    "alarm_id": f"meter:feeder_outage:{d['feeder']}",
                    "domain": "meter",
                    "alarm_type": "feeder_outage",
                    "state": "raised" if out else "cleared",
                    "severity": "critical",
                    "source_id": d["feeder"],
                    "district": f["district"],
                    "commune": None,
                    "at": d["at"],
                    "message": (
                        f"feeder outage: {n} of {f['meters']} meters without supply"
                        if out
                        else f"feeder supply restored ({n} of {f['meters']} meters still without supply)"
                    ),
                }
            )
            state["out"] = pending
        if f["down"] or f["raised"]:
            state[key] = f
        else:
            state.pop(key)

    def emit(self, state: State, now: datetime) -> Iterable[EncodedEvent]:
        pending = state.get("out")
        if not pending:
            return []
        state.pop("out")
        return [
            encode(
                ALARM_EVENT, a, source="/ioc/meter/processor", id=f"{a['alarm_id']}|{a['state']}|{a['at']}"
            )
            for a in pending
        ]


PROCESSORS: list[Callable[[MeterSettings], StreamProcessor]] = [
    lambda settings: MeterKpiProcessor(settings.momentary_limit_seconds),
    lambda settings: FeederOutageProcessor(
        settings.feeder_outage_fraction, settings.feeder_outage_min_meters
    ),
]
