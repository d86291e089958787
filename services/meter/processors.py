"""Meter stream processors: energy and reliability KPIs per district and city, tamper and feeder alarms.

``MeterKpiProcessor`` folds readings, meter events, interruptions and the registry (co-partitioned by meter id)
into per-(window, district) aggregates and emits mergeable KPI observations for 15-minute and daily windows.
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
from shared.contracts.common import kpi_key
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


@lru_cache(maxsize=65536)
def _epoch(ts: str) -> int:
    # Cached: the readings of a batch share a few interval ends.
    return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())


def _new_agg() -> dict[str, Any]:
    # kwh: energy; valid: valid intervals; meters: distinct meters read (day windows only); tamper: events;
    # ci / cmi / mi: customers interrupted (sustained), customer-minutes, customer momentary interruptions.
    return {"kwh": 0.0, "valid": 0, "meters": {}, "tamper": 0, "ci": 0.0, "cmi": 0.0, "mi": 0.0}


def _percent(numerator: float, denominator: float) -> float | None:
    return numerator / denominator * 100.0 if denominator else None


def _obs(kpi: str, level: str, code: str, ws: int, seconds: int, numerator: float, denominator: float | None,
         unit: str, value: float | None, partition: int, now_iso: str) -> EncodedEvent:
    """One KpiObserved; ``value`` is the KPI over this partition alone (None when undefined)."""
    value = None if value is None else float(value)
    key = kpi_key(kpi, level, code)
    payload = {"kpi": kpi, "scope_level": level, "scope_code": code, "window_start": iso_utc(ws),
               "window_seconds": seconds, "value": value, "numerator": float(numerator),
               "denominator": None if denominator is None else float(denominator), "unit": unit,
               "partition": partition, "observed_at": now_iso, "key": key}
    return encode(KPI_EVENT, payload, source="/ioc/meter/processor",
                  id=f"{key}|{ws}|{seconds}|{partition}|{now_iso}")


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
        for seconds in WINDOWS:
            found = self._agg(state, seconds, start, d["district"])
            if found is None:
                continue
            key, agg = found
            if delta is not None:
                agg["kwh"] += delta
            if valid:
                agg["valid"] += 1
                if seconds == DAY:
                    agg["meters"][d["meter_id"]] = 1
            self._touch(state, key, agg)

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
        pending.append({
            "alarm_id": f"meter:tamper_{tamper}:{d['meter_id']}", "domain": "meter",
            "alarm_type": f"tamper_{tamper}", "state": change, "severity": "major", "source_id": d["meter_id"],
            "district": d["district"], "commune": d["commune"], "at": d["at"],
            "message": f"meter tamper: {what} {'detected' if change == 'raised' else 'ended'}",
        })
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
        # Denominators of this district changed: its retained windows are re-emitted (expanded in emit, once).
        changed = state.get("reg_changed") or []
        if d["district"] not in changed:
            changed.append(d["district"])
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
        out: list[EncodedEvent] = []
        now_iso = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
        p = state.partition
        dirty = dict(state.get("dirty") or {})
        changed = state.pop("reg_changed")
        if changed:
            districts = set(changed)
            dirty.update({k: 1 for k in state.keys("agg:") if k.rsplit(":", 1)[1] in districts})
        windows = sorted({tuple(k.split(":")[1:3]) for k in dirty})
        for seconds_s, ws_s in windows:
            seconds, ws = int(seconds_s), int(ws_s)
            city = {"n_meters": 0, "n_customers": 0, "expected": 0, **_new_agg()}
            city["meters"] = 0
            for key, agg in state.items(f"agg:{seconds}:{ws}:"):
                district = key.rsplit(":", 1)[1]
                reg = state.get(f"reg:{district}") or {"meters": 0, "customers": 0, "by_interval": {}}
                expected = expected_intervals(seconds, ws, {int(k): v for k, v in reg["by_interval"].items()})
                meters_read = len(agg["meters"]) if seconds == DAY else agg["valid"]
                expected_meters = reg["meters"] if seconds == DAY else expected
                if key in dirty:
                    out += self._kpis("district", district, ws, seconds, agg, meters_read, expected_meters,
                                      expected, reg["customers"], p, now_iso)
                city["n_meters"] += expected_meters
                city["n_customers"] += reg["customers"]
                city["expected"] += expected
                city["meters"] += meters_read
                for f in ("kwh", "valid", "tamper", "ci", "cmi", "mi"):
                    city[f] += agg[f]
            out += self._kpis("city", CITY_CODE, ws, seconds, city, city["meters"], city["n_meters"],
                              city["expected"], city["n_customers"], p, now_iso)
        if "dirty" in state:
            state.pop("dirty")
        if state.get("supply_dirty"):
            out += self._supply(state, p, now_iso)
            state.pop("supply_dirty")
        pending = state.get("out")
        if pending:
            out += [encode(ALARM_EVENT, a, source="/ioc/meter/processor", id=f"{a['alarm_id']}|{a['state']}|{a['at']}")
                    for a in pending]
            state.pop("out")
        self._prune(state)
        return out

    def _kpis(self, level: str, code: str, ws: int, seconds: int, agg: dict, meters_read: int,
              expected_meters: int, expected: int, customers: int, p: int, now_iso: str) -> list[EncodedEvent]:
        def obs(kpi: str, num: float, den: float | None, unit: str, value: float | None) -> EncodedEvent:
            return _obs(kpi, level, code, ws, seconds, num, den, unit, value, p, now_iso)

        kwh, ci, cmi, mi = agg["kwh"], agg["ci"], agg["cmi"], agg["mi"]
        out = [
            obs("meter.energy_kwh", kwh, None, "kWh", kwh),
            obs("meter.read_success_rate", meters_read, expected_meters, "%", _percent(meters_read, expected_meters)),
            obs("meter.interval_completeness", agg["valid"], expected, "%", _percent(agg["valid"], expected)),
            obs("meter.tamper_alarms", agg["tamper"], None, "count", agg["tamper"]),
            obs("meter.saifi", ci, customers, "int/cust", saifi(ci, customers)),
            obs("meter.saidi_minutes", cmi, customers, "min", saidi_minutes(cmi, customers)),
            obs("meter.caidi_minutes", cmi, ci, "min", caidi_minutes(cmi, ci)),
            obs("meter.maifi", mi, customers, "int/cust", maifi(mi, customers)),
        ]
        if seconds == QUARTER:
            # Average demand over the quarter hour (kWh / 0.25 h); the day's peak is the max of these.
            demand = kwh * 3600.0 / seconds
            out.append(obs("meter.peak_demand_kw", demand, None, "kW", demand))
        return out

    def _supply(self, state: State, p: int, now_iso: str) -> list[EncodedEvent]:
        """Meters currently without supply, per district and city, in the watermark's quarter hour."""
        counts: dict[str, int] = {k.split(":", 1)[1]: 0 for k in state.keys("reg:")}
        for _, (district, _at) in state.items("down:"):
            counts[district] = counts.get(district, 0) + 1
        ws = window_start(state.get("wm", 0), QUARTER)
        out = [_obs("meter.meters_without_supply", "district", dist, ws, QUARTER, n, None, "meters", n, p,
                    now_iso) for dist, n in sorted(counts.items())]
        total = sum(counts.values())
        out.append(_obs("meter.meters_without_supply", "city", CITY_CODE, ws, QUARTER, total, None, "meters", total,
                        p, now_iso))
        return out

    def _prune(self, state: State) -> None:
        wm = state.get("wm", 0)
        for key in state.keys("agg:"):
            _, seconds, ws, _district = key.split(":", 3)
            if int(ws) + int(seconds) <= wm - RETENTION[int(seconds)]:
                state.pop(key)


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
            pending.append({
                "alarm_id": f"meter:feeder_outage:{d['feeder']}", "domain": "meter", "alarm_type": "feeder_outage",
                "state": "raised" if out else "cleared", "severity": "critical", "source_id": d["feeder"],
                "district": f["district"], "commune": None, "at": d["at"],
                "message": (f"feeder outage: {n} of {f['meters']} meters without supply" if out
                            else f"feeder supply restored ({n} of {f['meters']} meters still without supply)"),
            })
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
        return [encode(ALARM_EVENT, a, source="/ioc/meter/processor", id=f"{a['alarm_id']}|{a['state']}|{a['at']}")
                for a in pending]


PROCESSORS: list[Callable[[MeterSettings], StreamProcessor]] = [
    lambda settings: MeterKpiProcessor(),
    lambda settings: FeederOutageProcessor(settings.feeder_outage_fraction, settings.feeder_outage_min_meters),
]
