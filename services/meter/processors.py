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
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from services.meter.domain import (
    ENERGY_IMPORT,
    TAMPER_CLEAR,
    TAMPER_RAISE,
    caidi_minutes,
    expected_intervals,
    feeder_in_outage,
    iso_utc,
    maifi,
    saidi_minutes,
    saifi,
    window_start,
)
from services.meter.settings import MeterSettings
from shared.areas import CITY_CODE
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

QUARTER = 900
DAY = 86400
WINDOWS = (QUARTER, DAY)
# Windows are kept (and late data still folded in) this long behind the watermark; older data is ignored
# rather than re-opening a pruned window with a partial value. 26 h covers the service's 62-interval
# de-duplication horizon for late readings.
RETENTION = {QUARTER: 26 * 3600, DAY: 3 * DAY}
VALID_QUALITY = "measured"
REGISTRY_BUCKETS = 64
# The meters read in a day window live in bucket keys "dm:<day start>:<district>:<bucket>" (meter id → 1),
# not inside the window's aggregate: the aggregate changes with every batch and is re-written to the changelog
# each time, while a bucket changes only when a meter is read for the first time that day.
DAY_METER_BUCKETS = 32


@lru_cache(maxsize=65536)
def _epoch(ts: str) -> int:
    # Cached: the readings of a batch share a few interval ends.
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())


def _new_agg() -> dict[str, Any]:
    # kwh: energy; valid: valid intervals; meters: how many distinct meters were read (day windows only; the
    # meters themselves are in the "dm:" buckets); tamper: events; ci / cmi / mi: customers interrupted
    # (sustained), customer-minutes, customer momentary interruptions.
    return {"kwh": 0.0, "valid": 0, "meters": 0, "tamper": 0, "ci": 0.0, "cmi": 0.0, "mi": 0.0}


def _day_bucket(meter_id: str) -> int:
    return zlib.crc32(meter_id.encode()) % DAY_METER_BUCKETS


def _upgraded(state: State, key: str, agg: dict) -> dict:
    """``agg`` in the current layout: an aggregate written by an older version holds its day's meters as a
    dict, which moves to the "dm:" buckets (so state recovered from an older changelog keeps counting
    exactly)."""
    meters = agg["meters"]
    if type(meters) is dict:
        _, _seconds, ws, district = key.split(":", 3)
        agg["meters"] = len(meters)
        for mid in meters:
            bucket_key = f"dm:{ws}:{district}:{_day_bucket(mid)}"
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
        if epoch > state.get("wm", 0):
            old = state.get("wm", 0)
            state["wm"] = epoch
            if window_start(epoch, QUARTER) != window_start(old, QUARTER):
                state["supply_dirty"] = True

    def _agg(self, state: State, seconds: int, epoch: int, district: str) -> tuple[str, dict] | None:
        """The aggregate of the window holding ``epoch``; None when the window is already pruned."""
        ws = window_start(epoch, seconds)
        if ws + seconds <= state.get("wm", 0) - RETENTION[seconds]:
            return None
        key = f"agg:{seconds}:{ws}:{district}"
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
                    bucket_key = f"dm:{window_start(start, DAY)}:{d['district']}:{_day_bucket(mid)}"
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
                        bucket = day_buckets[b] = get(f"dm:{slot[6]}:{district}:{b}") or {}
                    if mid not in bucket:
                        bucket[mid] = 1
                        changed_buckets.add((slot[6], district, b))
                        dagg["meters"] += 1
        if late:
            self.ignored_late(late)
        if wm != get("wm", 0):
            self._set_wm(state, wm)
        for ws, district, b in changed_buckets:
            state[f"dm:{ws}:{district}:{b}"] = day_sets[(ws, district)][b]
        for key, agg in touched.items():
            self._touch(state, key, agg)

    def _slot(self, state: State, start: int, district: str, wm: int, touched: dict[str, dict]) -> list:
        slot: list = []
        for seconds in WINDOWS:
            ws = window_start(start, seconds)
            limit = ws + seconds + RETENTION[seconds]
            agg = None
            key = f"agg:{seconds}:{ws}:{district}"
            if wm < limit:
                agg = touched.get(key)
                if agg is None:
                    found = self._agg(state, seconds, start, district)
                    assert found is not None
                    agg = touched[key] = found[1]
                    # In the state at once: an interleaved non-reading event must find this same dict.
                    state[key] = agg
            slot += (key, agg, limit)
        slot.append(window_start(start, DAY))
        return slot

    def _set_wm(self, state: State, wm: int) -> None:
        state["wm"] = wm

    def _meter_event(self, d: dict, state: State) -> None:
        at = _epoch(d["at"])
        self._advance(state, at)
        kind = d["event"]
        mid = d["meter_id"]
        if kind == "power_down":
            if f"down:{mid}" not in state:
                state[f"down:{mid}"] = [d["district"], at]
                state["supply_dirty"] = True
        elif kind == "power_up":
            down = state.get(f"down:{mid}")
            if down is not None and down[1] <= at:
                state.pop(f"down:{mid}")
                state["supply_dirty"] = True
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
        self._advance(state, _epoch(d["ended_at"]))
        customers = d["customers"]
        for seconds in WINDOWS:
            found = self._agg(state, seconds, started, d["district"])
            if found is None:
                continue
            key, agg = found
            if d["kind"] == "momentary":
                agg["mi"] += customers
            else:
                agg["ci"] += customers
                agg["cmi"] += customers * d["duration_seconds"] / 60.0
            self._touch(state, key, agg)

    def _registry(self, d: dict, state: State) -> None:
        mid = d["meter_id"]
        new = [d["district"], d["customers"], d["interval_seconds"]]
        # Registry entries live in a few bucket keys, not one key per meter: the state's prefix scans (emit,
        # prune) would otherwise walk every meter of the partition.
        bucket_key = f"mb:{zlib.crc32(mid.encode()) % REGISTRY_BUCKETS}"
        bucket = state.get(bucket_key) or {}
        old = bucket.get(mid)
        if old == new:
            return
        if old is not None:
            self._count(state, old, -1)
        self._count(state, new, +1)
        bucket[mid] = new
        state[bucket_key] = bucket
        # Denominators of this district (and of the one a moved meter left) changed: their retained windows are
        # re-emitted (expanded in emit, once).
        changed = state.get("reg_changed") or []
        for district in (d["district"], old[0] if old is not None else d["district"]):
            if district not in changed:
                changed.append(district)
                state["reg_changed"] = changed
        state["supply_dirty"] = True

    def _count(self, state: State, entry: list, sign: int) -> None:
        district, customers, interval = entry
        reg = state.get(f"reg:{district}") or {"meters": 0, "customers": 0, "by_interval": {}}
        reg["meters"] += sign
        reg["customers"] += sign * customers
        by = reg["by_interval"]
        by[str(interval)] = by.get(str(interval), 0) + sign
        state[f"reg:{district}"] = reg

    # -------------------------------------------------------------------------------------------- emit
    def emit(self, state: State, now: datetime) -> Iterable[EncodedEvent]:
        """KPIs of the windows changed since the last emit (district and city), supply, alarms.

        Only observations whose numerator or denominator differ from what this worker last published for the
        partition are encoded (``changed_since_emitted``): a batch of readings moves energy, reads and
        completeness, not the reliability KPIs of the same window. After a restart or rebalance everything of a
        dirty window is published again once.
        """
        out: list[EncodedEvent] = []
        now_iso = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
        p = state.partition
        dirty = dict(state.get("dirty") or {})
        changed = state.pop("reg_changed")
        if changed:
            districts = set(changed)
            dirty.update({k: 1 for k in state.keys("agg:") if k.rsplit(":", 1)[1] in districts})
        windows = sorted({tuple(k.split(":")[1:3]) for k in dirty})
        regs: dict[str, tuple[dict, dict[int, int]]] = {}
        for seconds_s, ws_s in windows:
            seconds, ws = int(seconds_s), int(ws_s)
            city = {"n_meters": 0, "n_customers": 0, "expected": 0, **_new_agg()}
            for key, agg in state.items(f"agg:{seconds}:{ws}:"):
                if type(agg["meters"]) is dict:
                    agg = _upgraded(state, key, agg)
                district = key.rsplit(":", 1)[1]
                reg_by = regs.get(district)
                if reg_by is None:
                    reg = state.get(f"reg:{district}") or {"meters": 0, "customers": 0, "by_interval": {}}
                    reg_by = regs[district] = (reg, {int(k): v for k, v in reg["by_interval"].items()})
                reg = reg_by[0]
                expected = expected_intervals(seconds, ws, reg_by[1])
                meters_read = agg["meters"] if seconds == DAY else agg["valid"]
                expected_meters = reg["meters"] if seconds == DAY else expected
                if key in dirty:
                    out += self._kpis(
                        "district",
                        district,
                        ws,
                        seconds,
                        agg,
                        meters_read,
                        expected_meters,
                        expected,
                        reg["customers"],
                        p,
                        now_iso,
                    )
                city["n_meters"] += expected_meters
                city["n_customers"] += reg["customers"]
                city["expected"] += expected
                city["meters"] += meters_read
                for f in ("kwh", "valid", "tamper", "ci", "cmi", "mi"):
                    city[f] += agg[f]
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
        if state.get("supply_dirty"):
            out += self._supply(state, p, now_iso)
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
    ) -> list[EncodedEvent]:
        out: list[EncodedEvent] = []
        changed = self.changed_since_emitted

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
        if seconds == QUARTER:
            # Average demand over the quarter hour (kWh / 0.25 h); the day's peak is the max of these.
            demand = kwh * 3600.0 / seconds
            obs("meter.peak_demand_kw", demand, None, "kW", lambda: demand)
        return out

    def _supply(self, state: State, p: int, now_iso: str) -> list[EncodedEvent]:
        """Meters currently without supply, per district and city, in the watermark's quarter hour (those that
        changed since last published)."""
        counts: dict[str, int] = {k.split(":", 1)[1]: 0 for k in state.keys("reg:")}
        for _, (district, _at) in state.items("down:"):
            counts[district] = counts.get(district, 0) + 1
        ws = window_start(state.get("wm", 0), QUARTER)
        kpi = "meter.meters_without_supply"
        changed = self.changed_since_emitted
        scopes = [("district", dist, n) for dist, n in sorted(counts.items())]
        scopes.append(("city", CITY_CODE, sum(counts.values())))
        return [
            _obs(kpi, level, code, ws, QUARTER, n, None, "meters", n, p, now_iso)
            for level, code, n in scopes
            if changed(p, (kpi, level, code, ws, QUARTER), (n, None))
        ]

    def _prune(self, state: State) -> None:
        wm = state.get("wm", 0)
        last = self.__dict__.setdefault("_pruned_at", {}).get(state.partition)
        if last is not None and last[0] is state and last[1] == wm:
            return  # nothing can have expired since this state was last pruned
        for key in state.keys("agg:"):
            _, seconds, ws, _district = key.split(":", 3)
            if int(ws) + int(seconds) <= wm - RETENTION[int(seconds)]:
                state.pop(key)
        for key in state.keys("dm:"):
            if int(key.split(":", 2)[1]) + DAY <= wm - RETENTION[DAY]:
                state.pop(key)
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
    lambda settings: MeterKpiProcessor(),
    lambda settings: FeederOutageProcessor(
        settings.feeder_outage_fraction, settings.feeder_outage_min_meters
    ),
]
