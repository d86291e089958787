"""A head-end system (HES) feeding the meter service over HTTP, for demos and load.

It registers a fleet (~20,000 meters × scale over 2019's 30 districts, as many per area over the 126 communes
and wards of 2025: :func:`shared.simulation.fleet_size`; feeders of ~200 meters), then posts
15-minute load profiles with a daily shape, in compressed time: one simulated quarter hour every
``step_seconds`` starting a day in the past, until simulated time catches up with the clock (then real time).
Along the way: feeder outages (last gasp then power-up, some momentary), tamper events, late and duplicate
deliveries, and a few broken meters whose register runs backwards. Rates are calibrated to published
figures (docs/simulation.md): sustained interruptions ``SAIFI_PER_YEAR`` per customer, CAIDI
``CAIDI_MINUTES``, momentary ones ``MAIFI_PER_YEAR``.

Continuity: the fleet is the same on every start (a fixed seed) and each meter's register is a function of
time (a base plus the integral of its load shape), so after a restart the registers continue from what the
meter service stored, never backwards. When the fleet is already registered (``GET /v1/meters/<first>``
answers 200) the simulator resumes ``RESUME_BACKFILL`` before now instead of a day back.

Scripted incidents (``incidents`` or ``IOC_SIM_INCIDENTS="<district>@<ISO start>/<minutes>,..."``): every
feeder of the district goes down at the start (last gasps) and comes back at the end (power-up).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import zlib
from collections.abc import Collection, Sequence
from datetime import UTC, date, datetime, timedelta

import httpx

from shared.areas import hanoi
from shared.simulation import fleet_size, parse_incidents
from shared.tasks import wait_event

log = logging.getLogger(__name__)
QUARTER = 900
BATCH = 10_000
METERS_PER_CITY = 20_000  # at scale 1 over 30 districts (per area: 667), see fleet_size
FLEET_SEED = 20_26  # the same fleet (ids, feeders, consumption) on every start
# Calibration (sources in docs/simulation.md): EVN reported SAIFI 3.18 and MAIFI 0.83 for the first half of 2018,
# EVNHCMC SAIFI 3.02 and SAIDI 231 min for 2017 (CAIDI = SAIDI / SAIFI ≈ 77 min).
SAIFI_PER_YEAR = 3.0
MAIFI_PER_YEAR = 1.5
CAIDI_MINUTES = 77.0
TAMPER_PER_METER_YEAR = 0.01  # assumption: one meter in a hundred opened or tampered with a year
RESUME_BACKFILL = timedelta(hours=2)
# Delivery quality of the head-end (assumptions, docs/simulation.md): readings lost, delivered one interval
# late, delivered twice; one meter in BROKEN_ONE_IN with a faulty register.
LOST_SHARE, LATE_SHARE, DUPLICATE_SHARE = 0.001, 0.003, 0.005
BROKEN_ONE_IN = 10_000
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
HANOI_OFFSET = 7 * 3600


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def load_shape(hour: float) -> float:
    """Relative household demand over a day: night trough, morning and evening peaks (evening highest)."""
    return 0.35 + 0.45 * math.exp(-((hour - 7.5) ** 2) / 3) + 0.9 * math.exp(-((hour - 19.5) ** 2) / 4)


def _shape_integral(hours: float) -> float:
    """∫₀ʰ load_shape(x) dx (x local hours from midnight, 0 ≤ h ≤ 24): the Gaussians through erf."""

    def bump(a: float, mu: float, var: float) -> float:
        s = math.sqrt(var)
        return a * s * math.sqrt(math.pi) / 2 * (math.erf((hours - mu) / s) - math.erf(-mu / s))

    return 0.35 * hours + bump(0.45, 7.5, 3) + bump(0.9, 19.5, 4)


DAY_SHAPE = _shape_integral(24.0)


def cumulative_shape(t: datetime) -> float:
    """Load-shape hours from :data:`EPOCH` to ``t`` (Hanoi days): a meter's energy is ``kw ×`` its growth."""
    local = (t - EPOCH).total_seconds() + HANOI_OFFSET
    days, rest = divmod(local, 86400)
    return days * DAY_SHAPE + _shape_integral(rest / 3600)


def _unit_noise(meter_id: str, t: datetime) -> float:
    """A number in [0, 1) fixed by meter and time (the same after a restart)."""
    return (zlib.crc32(f"{meter_id}|{int(t.timestamp())}".encode()) & 0xFFFF) / 65536


def register_at(base: float, kw: float, meter_id: str, t: datetime) -> float:
    """The register (kWh) of a meter at ``t``: its base plus ``kw`` times the load-shape integral, with a small
    wobble that telescopes (an interval's energy stays positive: the night trough is 0.35 × 0.25 h per
    quarter hour, the wobble at most 0.05)."""
    return base + kw * (cumulative_shape(t) + 0.05 * _unit_noise(meter_id, t))


class Fleet:
    """The simulated meters and what each one's register says."""

    def __init__(
        self, n: int, rng: random.Random, districts: Sequence[str] | None = None, prefix: str = "MTR-"
    ):
        areas = hanoi()
        fleet_districts = [d for d in areas.districts if districts is None or d.code in districts]
        if not fleet_districts:
            raise ValueError(f"none of the areas {list(districts or [])} is in the loaded hierarchy")
        self.meters: list[dict] = []
        self.register: dict[str, float] = {}
        self.kw: dict[str, float] = {}
        self.broken: set[str] = set()
        per_feeder = 200
        for i in range(n):
            d = fleet_districts[i % len(fleet_districts)]
            communes = areas.units_of(d.code)  # its communes (2019), or the area itself (two-tier 2025)
            feeder_no = (i // len(fleet_districts)) // per_feeder
            mid = f"{prefix}{i:07d}"
            bulk = rng.random() < 0.02  # apartment building bulk meter
            self.meters.append(
                {
                    "meter_id": mid,
                    "customers": rng.randint(10, 60) if bulk else 1,
                    "district": d.code,
                    "commune": communes[(i // len(fleet_districts)) % len(communes)].code,
                    "feeder": f"F-{d.code}-{feeder_no:03d}",
                    "transformer": f"T-{d.code}-{feeder_no:03d}-{i % 8}",
                    "installed_on": (date(2019, 1, 1) + timedelta(days=i % 1500)).isoformat(),
                    "interval_seconds": 3600 if rng.random() < 0.03 else 900,
                }
            )
            self.register[mid] = rng.uniform(1_000, 60_000)  # the register's base at EPOCH
            self.kw[mid] = rng.uniform(8, 40) if bulk else rng.uniform(0.3, 2.0)
        for m in rng.sample(self.meters, n // BROKEN_ONE_IN):
            self.broken.add(m["meter_id"])
        self.feeders: dict[str, list[str]] = {}
        self.district_feeders: dict[str, list[str]] = {}
        for m in self.meters:
            if m["feeder"] not in self.feeders:
                self.district_feeders.setdefault(m["district"], []).append(m["feeder"])
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
    incidents: Sequence[tuple[str, datetime, datetime]] | None = None,
    start: datetime | None = None,
) -> None:
    """Register the fleet, then post readings and events until ``stop`` is set.

    ``districts`` limits the fleet to some districts, ``prefix`` names its meters, ``transport`` lets tests
    run the simulator against an in-process app, ``start`` overrides where simulated time begins.
    """
    size = int(fleet_size(METERS_PER_CITY, scale, len(hanoi().top_areas)))
    fleet = Fleet(max(10, size), random.Random(FLEET_SEED if seed is None else seed), districts, prefix)
    rng = random.Random(seed)
    if incidents is None:
        incidents = parse_incidents(os.environ.get("IOC_SIM_INCIDENTS"))
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, timeout=60, transport=transport
    ) as client:
        known = await _fleet_known(client, fleet.meters[0]["meter_id"])
        for i in range(0, len(fleet.meters), 5000):
            await _post(client, "/v1/meters", {"items": fleet.meters[i : i + 5000]}, stop)
        log.info("simulator fleet registered", extra={"meters": len(fleet.meters), "resumed": known})
        now = datetime.now(UTC)
        # A fleet the service knows already: resume shortly before now (its registers continue where the
        # service's stopped: they are a function of time), not a whole day back.
        first = start or now - (RESUME_BACKFILL if known else timedelta(days=1))
        begin = int(first.timestamp())
        sim = datetime.fromtimestamp(begin - begin % QUARTER, UTC)
        late: list[dict] = []
        outages: dict[str, datetime] = {}  # feeder → restoration time (random faults)
        scripted: dict[str, datetime] = {}  # feeder → restoration time (scripted incidents)
        started: set[int] = set()
        while not stop.is_set():
            end = sim + timedelta(seconds=QUARTER)
            clock = datetime.now(UTC)
            events = _incident_events(fleet, incidents, scripted, started, min(end, clock))
            if events:
                await _post(client, "/v1/events", {"items": events}, stop)
            wait = (end - clock).total_seconds() + 5
            if wait > 0:  # caught up with the clock: real time from now on (incidents announced promptly)
                await wait_event(stop, min(wait, 5.0))
                continue
            readings, events = _interval(fleet, rng, sim, end, late, outages, set(scripted))
            for i in range(0, len(readings), BATCH):
                await _post(client, "/v1/readings", {"items": readings[i : i + BATCH]}, stop)
            if events:
                await _post(client, "/v1/events", {"items": events}, stop)
            sim = end
            await wait_event(stop, step_seconds)


async def _fleet_known(client: httpx.AsyncClient, meter_id: str) -> bool:
    try:
        return (await client.get(f"/v1/meters/{meter_id}")).status_code == 200
    except httpx.HTTPError:
        return False


def _incident_events(
    fleet: Fleet,
    incidents: Sequence[tuple[str, datetime, datetime]],
    scripted: dict[str, datetime],
    started: set[int],
    upto: datetime,
) -> list[dict]:
    """Last gasps of every meter of an incident's district when it starts, power-ups when it ends (up to
    ``upto``), each once."""
    events: list[dict] = []
    for n, (district, t0, t1) in enumerate(incidents):
        if n not in started and t0 <= upto:
            started.add(n)
            for feeder in fleet.district_feeders.get(district, []):
                scripted[feeder] = t1
                for k, mid in enumerate(fleet.feeders[feeder]):
                    at = t0 + timedelta(milliseconds=10 * k)
                    events.append({"meter_id": mid, "at": _iso(at), "raw_code": "LAST_GASP"})
    for feeder, t1 in list(scripted.items()):
        if t1 <= upto:
            del scripted[feeder]
            for mid in fleet.feeders[feeder]:
                events.append({"meter_id": mid, "at": _iso(t1), "code": 2, "raw_code": "2"})
    return events


def _interval(
    fleet: Fleet,
    rng: random.Random,
    start: datetime,
    end: datetime,
    late: list[dict],
    outages: dict[str, datetime],
    dark: Collection[str] = frozenset(),
) -> tuple[list[dict], list[dict]]:
    """Readings and events of one quarter hour (plus late readings held back from the previous one).

    ``dark``: feeders down for a scripted incident (their meters send nothing)."""
    events: list[dict] = []
    # Feeder outages: restore due ones, maybe start a new one. Per feeder and quarter hour, sustained
    # interruptions happen SAIFI_PER_YEAR times a year, momentary ones MAIFI_PER_YEAR times.
    for feeder, until in list(outages.items()):
        if until <= end:
            for mid in fleet.feeders[feeder]:
                events.append({"meter_id": mid, "at": _iso(until), "code": 2, "raw_code": "2"})
            del outages[feeder]
    per_quarter = (SAIFI_PER_YEAR + MAIFI_PER_YEAR) / (365 * 96)
    for feeder in fleet.feeders:
        if feeder in outages or feeder in dark or rng.random() >= per_quarter:
            continue
        down = start + timedelta(seconds=rng.randint(0, QUARTER - 200))
        momentary = rng.random() < MAIFI_PER_YEAR / (SAIFI_PER_YEAR + MAIFI_PER_YEAR)
        # sustained: exponential around CAIDI (at least 5 min, IEEE 1366's momentary limit)
        minutes = rng.uniform(0.5, 4.5) if momentary else max(5.0, rng.expovariate(1 / CAIDI_MINUTES))
        outages[feeder] = down + timedelta(minutes=minutes)
        for mid in fleet.feeders[feeder]:
            events.append(
                {
                    "meter_id": mid,
                    "at": _iso(down + timedelta(seconds=rng.randint(0, 20))),
                    "raw_code": "LAST_GASP",
                }
            )
    down_meters = {m for f in (*outages, *dark) for m in fleet.feeders[f]}
    # Tamper: a cover opened and closed again, a magnet, reverse energy (vendor code).
    tamper_lam = TAMPER_PER_METER_YEAR * len(fleet.meters) / (365 * 96)
    while rng.random() < tamper_lam:
        tamper_lam /= 2  # (a second one in the same quarter hour is rarer still)
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
        value = round(register_at(fleet.register[mid], fleet.kw[mid], mid, end), 3)
        if mid in fleet.broken:
            value = round(value * rng.uniform(0.5, 0.99), 3)  # a faulty register: goes backwards
        r = rng.random()
        if r < LOST_SHARE:
            continue  # lost on the way (a gap)
        reading = {
            "meter_id": mid,
            "obis": "1-0:1.8.0",
            "interval_end": end_iso,
            "value": value,
            "unit": "kWh",
            "quality": "estimated" if r > 0.997 else "measured",
        }
        if r < LOST_SHARE + LATE_SHARE:
            late.append(reading)  # delivered with the next interval
            continue
        readings.append(reading)
        if r > 1 - DUPLICATE_SHARE:
            readings.append(dict(reading))  # duplicate delivery
    return readings, events
