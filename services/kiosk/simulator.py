"""A simulated kiosk fleet that talks to the kiosk service over its HTTP API only (httpx).

A few hundred kiosks (10 × ``scale`` per top area: :func:`shared.simulation.fleet_size`) in tall buildings (open
24/7) and one-stop centres (office hours) across the districts (2019) or communes and wards (2025), each with a
heartbeat every minute, sessions following a daily usage curve (Hanoi time), printers running out of paper and
refilled later, peripherals failing and being repaired, network drops, and a few kiosks going dark for good.
Sessions carry no personal data (at most a made-up dossier code).

Fault rates are calibrated (docs/simulation.md): a hardware fault about once a month per kiosk (an ATM's
MTBF of ~29 days), a network drop every ten days. The fleet is the same on every start (ids and layout from
a fixed seed), so a restart continues the kiosks the service knows instead of abandoning them.
Scripted incidents (``incidents`` or ``IOC_SIM_INCIDENTS="<district>@<ISO start>/<minutes>"``): the
district's power is out, its kiosks go dark until the end.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx

from services.kiosk.domain import JOURNEY_NEEDS, offered_journeys
from shared.areas import HANOI_OFFSET_S, hanoi
from shared.simulation import fleet_size, parse_incidents
from shared.tasks import wait_event

log = logging.getLogger(__name__)

OFFICE_HOURS = [
    {"days": [1, 2, 3, 4, 5], "open": "07:30", "close": "17:00"},
    {"days": [6], "open": "07:30", "close": "11:30"},
]
ALWAYS_OPEN = [{"days": [1, 2, 3, 4, 5, 6, 7], "open": "00:00", "close": "24:00"}]
# Share of a day's sessions per local hour (peaks mid-morning and mid-afternoon, next to nothing at night).
HOURLY_SHAPE = [
    0.1,
    0.05,
    0.05,
    0.05,
    0.1,
    0.3,
    0.8,
    2.0,
    4.0,
    6.0,
    6.0,
    4.5,
    2.5,
    3.0,
    5.0,
    5.5,
    4.5,
    3.0,
    2.0,
    1.5,
    1.0,
    0.6,
    0.3,
    0.2,
]
JOURNEY_WEIGHTS = {
    "lookup_procedure": 30,
    "check_status": 25,
    "submit_dossier": 12,
    "pay_fee": 10,
    "print_result": 10,
    "queue_ticket": 10,
    "rate_service": 3,
}
PAPER_SHEETS = 400
SESSIONS_PER_KIOSK_DAY = 40.0
NETWORK_DROPS_PER_S = 1 / (10 * 86400)  # assumption: a network drop every ten days a kiosk
FAILURES_PER_S = 1 / (29 * 86400)  # a peripheral failure a month a kiosk (ATM MTBF ≈ 28.7 days)
FLEET_SEED = 2026
KIOSKS_PER_CITY = 300  # at scale 1 over 30 districts (10 per area), see shared.simulation.fleet_size
DARK_SHARE = 0.005  # kiosks that go dark for good during a run (a broken power supply)


@dataclass
class SimKiosk:
    kiosk_id: str
    district: str
    commune: str | None
    hours: list[dict]
    peripherals: list[str]
    paper: int = PAPER_SHEETS
    paper_state: str = "full"
    refill_at: datetime | None = None
    broken: dict[str, datetime] = field(default_factory=dict)  # peripheral → repaired at
    offline_until: datetime | None = None
    dark_at: datetime | None = None
    next_heartbeat: datetime | None = None
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    def is_dark(self, now: datetime) -> bool:
        return self.dark_at is not None and now >= self.dark_at

    def reachable(self, now: datetime) -> bool:
        return not self.is_dark(now) and (self.offline_until is None or now >= self.offline_until)


def build_fleet(n: int, rng: random.Random, now: datetime, prefix: str = "SIM") -> list[SimKiosk]:
    """``n`` kiosks spread over the districts; a few of them will go dark within the first half hour."""
    areas = hanoi()
    districts = sorted(d.code for d in areas.districts)
    run = prefix
    fleet = []
    for i in range(n):
        district = districts[i % len(districts)]
        communes = [c.code for c in areas.units_of(district)]  # two-tier: the area itself
        tall_building = rng.random() < 0.6
        peripherals = ["touchscreen", "printer", "id_scanner", "barcode_reader"]
        if rng.random() < 0.7:
            peripherals.append("payment_terminal")
        if rng.random() < 0.5:
            peripherals += ["card_reader", "camera"]
        k = SimKiosk(
            f"KS-{run}-{i:04d}",
            district,
            rng.choice(communes) if communes else None,
            ALWAYS_OPEN if tall_building else OFFICE_HOURS,
            peripherals,
        )
        k.paper = rng.randint(PAPER_SHEETS // 4, PAPER_SHEETS)
        if rng.random() < DARK_SHARE:
            k.dark_at = now + timedelta(seconds=rng.uniform(60, 1800))
        fleet.append(k)
    return fleet


def _area_name(code: str) -> str:
    area = hanoi().areas.get(code)
    return area.name if area is not None else code


def _registry_item(k: SimKiosk) -> dict:
    kind = "Tòa nhà" if k.hours is ALWAYS_OPEN else "Bộ phận một cửa"
    return {
        "kiosk_id": k.kiosk_id,
        "building": f"{kind} {k.kiosk_id[-4:]}",
        "address": f"Số {k.kiosk_id[-3:]}, {_area_name(k.district)}",
        "district": k.district,
        "commune": k.commune,
        "opening_hours": k.hours,
        "peripherals": k.peripherals,
        "software_version": "3.2.1",
    }


def _local_hour(now: datetime) -> int:
    return int((now.timestamp() + HANOI_OFFSET_S) // 3600) % 24


class FleetStep:
    """What one tick of the fleet produces (heartbeats, peripheral changes, sessions), from a random source."""

    def __init__(self, rng: random.Random, heartbeat_seconds: float):
        self.rng = rng
        self.heartbeat_seconds = heartbeat_seconds
        self._seq = 0

    def step(self, fleet: list[SimKiosk], now: datetime, tick_s: float) -> tuple[list, list, list]:
        heartbeats, peripherals, sessions = [], [], []
        rate = SESSIONS_PER_KIOSK_DAY * HOURLY_SHAPE[_local_hour(now)] / sum(HOURLY_SHAPE) / 3600 * tick_s
        for k in fleet:
            if not k.reachable(now):
                continue
            if k.offline_until is not None:
                k.offline_until = None
            if self._happens(NETWORK_DROPS_PER_S, tick_s):  # network drop of 4-15 minutes
                k.offline_until = now + timedelta(seconds=self.rng.uniform(240, 900))
                continue
            if k.next_heartbeat is None or now >= k.next_heartbeat:
                heartbeats.append(
                    {
                        "kiosk_id": k.kiosk_id,
                        "at": now.isoformat(),
                        "app_version": "3.2.1",
                        "uptime_seconds": int((now - k.started).total_seconds()),
                        "network": "wired" if k.hours is ALWAYS_OPEN else "wifi",
                    }
                )
                # The first beat comes at start-up; spreading the next one staggers the fleet.
                spread = self.rng.uniform(0.1, 1.0) if k.next_heartbeat is None else 1.0
                k.next_heartbeat = now + timedelta(seconds=self.heartbeat_seconds * spread)
            peripherals += self._maintenance(k, now, tick_s)
            n = self._poisson(rate)
            for _ in range(n):
                sessions.append(self._session(k, now, peripherals))
        return heartbeats, peripherals, sessions

    def _happens(self, rate_per_s: float, tick_s: float) -> bool:
        return self.rng.random() < 1 - math.exp(-rate_per_s * tick_s)

    def _poisson(self, lam: float) -> int:
        # Knuth's method: fine for the small rates of one tick.
        limit, k, p = math.exp(-lam), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1

    def _status(
        self, k: SimKiosk, peripheral: str, state: str, now: datetime, paper: str | None = None
    ) -> dict:
        # Several changes in one tick get distinct times (ingest treats a repeated kiosk+peripheral+time as a retry).
        self._seq = (self._seq + 1) % 1000
        at = now + timedelta(microseconds=self._seq)
        item = {"kiosk_id": k.kiosk_id, "peripheral": peripheral, "state": state, "at": at.isoformat()}
        if paper is not None:
            item["paper"] = paper
        return item

    def _maintenance(self, k: SimKiosk, now: datetime, tick_s: float) -> list[dict]:
        out = []
        if k.refill_at is not None and now >= k.refill_at:
            k.paper, k.paper_state, k.refill_at = PAPER_SHEETS, "full", None
            out.append(self._status(k, "printer", "online", now, "full"))
        for per, repaired_at in list(k.broken.items()):
            if now >= repaired_at:
                del k.broken[per]
                out.append(self._status(k, per, "online", now, k.paper_state if per == "printer" else None))
        if self._happens(FAILURES_PER_S, tick_s):  # a peripheral fails; a technician comes in 15-90 minutes
            per = self.rng.choice([p for p in k.peripherals if p != "touchscreen"])
            if per not in k.broken:
                k.broken[per] = now + timedelta(seconds=self.rng.uniform(900, 5400))
                state = (
                    "fraud_attempt" if per == "card_reader" and self.rng.random() < 0.2 else "hardware_error"
                )
                out.append(self._status(k, per, state, now))
        return out

    def _session(self, k: SimKiosk, now: datetime, peripherals: list[dict]) -> dict:
        offered = [j for j, _ in offered_journeys(tuple(k.peripherals))]
        journey = self.rng.choices(offered, weights=[JOURNEY_WEIGHTS[j] for j in offered])[0]
        duration = self.rng.uniform(30, 400)
        item: dict = {
            "session_id": uuid.uuid4().hex[:16],
            "kiosk_id": k.kiosk_id,
            "journey": journey,
            "started_at": (now - timedelta(seconds=duration)).isoformat(),
            "ended_at": now.isoformat(),
        }
        blocked = any(p in k.broken for p in JOURNEY_NEEDS[journey]) or (
            "printer" in JOURNEY_NEEDS[journey] and k.paper_state == "out"
        )
        r = self.rng.random()
        if blocked:
            item.update(outcome="failed", failure_reason="device_fault")
        elif r < 0.08:
            item.update(outcome="abandoned", failure_reason=self.rng.choice(["timeout", "user_cancelled"]))
        elif r < 0.11:
            item.update(
                outcome="failed",
                failure_reason=self.rng.choice(["network_error", "service_unavailable", "payment_declined"]),
            )
        else:
            item["outcome"] = "completed"
            if journey in ("submit_dossier", "check_status", "print_result", "pay_fee"):
                item["dossier_code"] = (
                    f"000.00.{self.rng.randint(1, 30):02d}.H26-{now:%y%m%d}-{self.rng.randint(1, 9999):04d}"
                )
            if "printer" in JOURNEY_NEEDS[journey]:
                peripherals += self._print(k, now, self.rng.randint(1, 5))
        if self.rng.random() < 0.3 or journey == "rate_service":
            item["rating"] = self.rng.choices([1, 2, 3, 4, 5], weights=[2, 3, 10, 35, 50])[0]
        return item

    def _print(self, k: SimKiosk, now: datetime, sheets: int) -> list[dict]:
        k.paper = max(0, k.paper - sheets)
        state = "out" if k.paper == 0 else "low" if k.paper < 40 else "full"
        if state == k.paper_state:
            return []
        k.paper_state = state
        if state == "out":  # the centre's staff notice and refill within 10-60 minutes
            k.refill_at = now + timedelta(seconds=self.rng.uniform(600, 3600))
        return [self._status(k, "printer", "online", now, state)]


def black_out(fleet: list[SimKiosk], incidents: list[tuple[str, datetime, datetime]], now: datetime) -> None:
    """Kiosks of a district whose power is out (a scripted incident) are unreachable until it ends."""
    for district, t0, t1 in incidents:
        if t0 <= now < t1:
            for k in fleet:
                if k.district == district and (k.offline_until is None or k.offline_until < t1):
                    k.offline_until = t1


async def _post(client: httpx.AsyncClient, path: str, items: list[dict], stop: asyncio.Event) -> None:
    """Post in chunks; retry a chunk on 429/503 and network errors (with the same Idempotency-Key)."""
    for i in range(0, len(items), 1000):
        chunk = items[i : i + 1000]
        headers = {"Idempotency-Key": uuid.uuid4().hex}
        for attempt in range(5):
            try:
                r = await client.post(path, json={"items": chunk}, headers=headers)
            except httpx.HTTPError as exc:
                log.warning("kiosk simulator: %s failed: %s", path, type(exc).__name__)
            else:
                if r.status_code not in (429, 503, 409):
                    if r.status_code >= 300 or r.json().get("rejected"):
                        log.warning("kiosk simulator: %s answered %s: %s", path, r.status_code, r.text[:300])
                    break
            if stop.is_set():
                return
            await asyncio.sleep(min(5.0, 0.5 * 2**attempt))


async def run(
    base_url: str,
    api_key: str,
    *,
    stop: asyncio.Event,
    scale: float = 1.0,
    tick_seconds: float = 5.0,
    heartbeat_seconds: float = 60.0,
    seed: int | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    incidents: list[tuple[str, datetime, datetime]] | None = None,
    prefix: str = "SIM",
) -> None:
    """Simulate 10 × ``scale`` kiosks per top area (``300 × scale`` over 30 districts) against the kiosk service
    at ``base_url`` until ``stop`` is set.

    ``api_key`` needs ``kiosk:admin`` (to register the fleet) and ``kiosk:ingest``.
    """
    fleet = build_fleet(
        max(3, int(fleet_size(KIOSKS_PER_CITY, scale, len(hanoi().top_areas)))),
        random.Random(FLEET_SEED if seed is None else seed),
        datetime.now(UTC),
        prefix,
    )
    rng = random.Random(seed)
    if incidents is None:
        incidents = parse_incidents(os.environ.get("IOC_SIM_INCIDENTS"))
    step = FleetStep(rng, heartbeat_seconds)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30, transport=transport
    ) as client:
        await _post(client, "/v1/kiosks/import", [_registry_item(k) for k in fleet], stop)
        # Every peripheral starts online (and printers report their paper).
        now = datetime.now(UTC)
        await _post(
            client,
            "/v1/peripherals",
            [
                {
                    "kiosk_id": k.kiosk_id,
                    "peripheral": p,
                    "state": "online",
                    "at": now.isoformat(),
                    **({"paper": "low" if k.paper < 40 else "full"} if p == "printer" else {}),
                }
                for k in fleet
                for p in k.peripherals
            ],
            stop,
        )
        last = datetime.now(UTC)
        while not stop.is_set():
            now = datetime.now(UTC)
            black_out(fleet, incidents, now)
            heartbeats, peripherals, sessions = step.step(
                fleet, now, max(0.001, (now - last).total_seconds())
            )
            last = now
            # Peripheral changes before sessions, heartbeats first: the order a real kiosk would report in.
            for path, items in (
                ("/v1/heartbeats", heartbeats),
                ("/v1/peripherals", peripherals),
                ("/v1/sessions", sessions),
            ):
                if items:
                    await _post(client, path, items, stop)
            await wait_event(stop, tick_seconds)
