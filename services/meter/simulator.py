"""A head-end system (HES) feeding the meter service over HTTP, for demos and load.

It registers a fleet (~20,000 meters × scale over Hanoi's 30 districts, feeders of ~200 meters), then posts
15-minute load profiles with a daily shape, in compressed time: one simulated quarter hour every
``step_seconds`` starting a day in the past, until simulated time catches up with the clock (then real time).
Along the way: feeder outages (last gasp then power-up, some momentary), tamper events, late and duplicate
deliveries, and a few broken meters whose register runs backwards.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import httpx

from shared.areas import hanoi
from shared.tasks import wait_event

log = logging.getLogger(__name__)
QUARTER = 900
BATCH = 10_000


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def load_shape(hour: float) -> float:
    """Relative household demand over a day: night trough, morning and evening peaks (evening highest)."""
    return 0.35 + 0.45 * math.exp(-((hour - 7.5) ** 2) / 3) + 0.9 * math.exp(-((hour - 19.5) ** 2) / 4)


class Fleet:
    """The simulated meters and what each one's register says."""

    def __init__(
        self, n: int, rng: random.Random, districts: Sequence[str] | None = None, prefix: str = "MTR-"
    ):
        areas = hanoi()
        districts = [d for d in areas.districts if districts is None or d.code in districts]
        self.meters: list[dict] = []
        self.register: dict[str, float] = {}
        self.kw: dict[str, float] = {}
        self.broken: set[str] = set()
        per_feeder = 200
        for i in range(n):
            d = districts[i % len(districts)]
            communes = areas.children(d.code)
            feeder_no = (i // len(districts)) // per_feeder
            mid = f"{prefix}{i:07d}"
            bulk = rng.random() < 0.02  # apartment building bulk meter
            self.meters.append(
                {
                    "meter_id": mid,
                    "customers": rng.randint(10, 60) if bulk else 1,
                    "district": d.code,
                    "commune": communes[(i // len(districts)) % len(communes)].code,
                    "feeder": f"F-{d.code}-{feeder_no:03d}",
                    "transformer": f"T-{d.code}-{feeder_no:03d}-{i % 8}",
                    "installed_on": (date(2019, 1, 1) + timedelta(days=i % 1500)).isoformat(),
                    "interval_seconds": 3600 if rng.random() < 0.03 else 900,
                }
            )
            self.register[mid] = rng.uniform(1_000, 60_000)
            self.kw[mid] = rng.uniform(8, 40) if bulk else rng.uniform(0.3, 2.0)
        for m in rng.sample(self.meters, max(1, n // 2000)):
            self.broken.add(m["meter_id"])
        self.feeders: dict[str, list[str]] = {}
        for m in self.meters:
            self.feeders.setdefault(m["feeder"], []).append(m["meter_id"])


async def _post(client: httpx.AsyncClient, path: str, body: dict, stop: asyncio.Event) -> dict | None:
    """POST with retries on overload/unavailability (the service said: nothing accepted, retry)."""
    delay = 0.5
    while not stop.is_set():
        try:
            r = await client.post(path, json=body)
        except httpx.HTTPError as exc:
            log.warning("simulator post failed: %s", type(exc).__name__)
        else:
            if r.status_code in (200, 422):
                return r.json()
            if r.status_code not in (429, 503):
                log.warning("simulator post to %s answered %s", path, r.status_code)
                return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10)
    return None


async def run(
    base_url: str,
    api_key: str,
    *,
    stop: asyncio.Event,
    scale: float = 1.0,
    step_seconds: float = 3.0,
    seed: int | None = None,
    districts: Sequence[str] | None = None,
    prefix: str = "MTR-",
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Register the fleet, then post readings and events until ``stop`` is set.

    ``districts`` limits the fleet to some districts, ``prefix`` names its meters, ``transport`` lets tests
    run the simulator against an in-process app.
    """
    rng = random.Random(seed)
    fleet = Fleet(max(10, int(20_000 * scale)), rng, districts, prefix)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=60, transport=transport
    ) as client:
        for i in range(0, len(fleet.meters), 5000):
            await _post(client, "/v1/meters", {"items": fleet.meters[i : i + 5000]}, stop)
        log.info("simulator fleet registered", extra={"meters": len(fleet.meters)})
        now = datetime.now(UTC)
        start = int((now - timedelta(days=1)).timestamp())
        sim = datetime.fromtimestamp(start - start % QUARTER, UTC)
        late: list[dict] = []
        outages: dict[str, datetime] = {}  # feeder → restoration time
        while not stop.is_set():
            end = sim + timedelta(seconds=QUARTER)
            wait = (end - datetime.now(UTC)).total_seconds() + 5
            if wait > 0:  # caught up with the clock: real time from now on
                await wait_event(stop, wait)
                continue
            readings, events = _interval(fleet, rng, sim, end, late, outages)
            for i in range(0, len(readings), BATCH):
                await _post(client, "/v1/readings", {"items": readings[i : i + BATCH]}, stop)
            if events:
                await _post(client, "/v1/events", {"items": events}, stop)
            sim = end
            await wait_event(stop, step_seconds)


def _interval(
    fleet: Fleet,
    rng: random.Random,
    start: datetime,
    end: datetime,
    late: list[dict],
    outages: dict[str, datetime],
) -> tuple[list[dict], list[dict]]:
    """Readings and events of one quarter hour (plus late readings held back from the previous one)."""
    hour = start.hour + start.minute / 60 + 7  # Hanoi is UTC+7
    shape = load_shape(hour % 24)
    events: list[dict] = []
    # Feeder outages: restore due ones, maybe start a new one.
    for feeder, until in list(outages.items()):
        if until <= end:
            for mid in fleet.feeders[feeder]:
                events.append({"meter_id": mid, "at": _iso(until), "code": 2, "raw_code": "2"})
            del outages[feeder]
    if rng.random() < 0.15:
        feeder = rng.choice(list(fleet.feeders))
        if feeder not in outages:
            down = start + timedelta(seconds=rng.randint(0, QUARTER - 200))
            minutes = rng.choice([1, 2, 3]) if rng.random() < 0.4 else rng.randint(10, 90)
            outages[feeder] = down + timedelta(minutes=minutes)
            for mid in fleet.feeders[feeder]:
                events.append(
                    {
                        "meter_id": mid,
                        "at": _iso(down + timedelta(seconds=rng.randint(0, 20))),
                        "raw_code": "LAST_GASP",
                    }
                )
    down_meters = {m for f in outages for m in fleet.feeders[f]}
    # Tamper: a cover opened and closed again, a magnet, reverse energy (vendor code).
    for _ in range(rng.randint(0, 3)):
        m = rng.choice(fleet.meters)["meter_id"]
        t = start + timedelta(seconds=rng.randint(0, QUARTER - 120))
        kind = rng.choice(
            [(44, "44", 45, "45"), (42, "42", 43, "43"), (None, "REV_ENERGY", None, "REV_ENERGY_END")]
        )
        events.append({"meter_id": m, "at": _iso(t), "code": kind[0], "raw_code": kind[1]})
        events.append(
            {"meter_id": m, "at": _iso(t + timedelta(seconds=90)), "code": kind[2], "raw_code": kind[3]}
        )
    readings: list[dict] = list(late)
    late.clear()
    end_iso = _iso(end)
    end_epoch = int(end.timestamp())
    for m in fleet.meters:
        mid = m["meter_id"]
        if end_epoch % m["interval_seconds"] or mid in down_meters:
            continue
        hours = m["interval_seconds"] / 3600
        fleet.register[mid] += fleet.kw[mid] * shape * hours * rng.uniform(0.7, 1.3)
        value = round(fleet.register[mid], 3)
        if mid in fleet.broken:
            value = round(value * rng.uniform(0.5, 0.99), 3)  # a faulty register: goes backwards
        r = rng.random()
        if r < 0.005:
            continue  # lost on the way (a gap)
        reading = {
            "meter_id": mid,
            "obis": "1-0:1.8.0",
            "interval_end": end_iso,
            "value": value,
            "unit": "kWh",
            "quality": "estimated" if r > 0.997 else "measured",
        }
        if r < 0.015:
            late.append(reading)  # delivered with the next interval
            continue
        readings.append(reading)
        if r > 0.99:
            readings.append(dict(reading))  # duplicate delivery
    return readings, events
