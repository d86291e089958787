"""Traffic simulator: a few hundred signalised intersections across Hanoi's top areas, posting hi-res logs.

``300 × scale`` intersections over 2019's 30 districts, as many per area (10 × scale) over 2025's 126 communes and
wards (:func:`shared.simulation.fleet_size`).

Each controller runs a coordinated two-barrier cycle (phases 2+6 main street, 4+8 side street) and logs the
Indiana events a real one would: greens, gap-outs / max-outs / force-offs, yellow and red clearance,
advance-detector actuations (platoons that arrive on green at well-timed intersections and on red at badly
timed ones), stop-bar occupancy (sometimes a queue that does not clear: a split failure), pedestrian calls and
walks, and now and then a detector fault, a flash period or a power failure. Everything goes through the HTTP
API with httpx, like a field gateway.

Rates are calibrated (docs/simulation.md): a detector fault about once a year per detector, a flash period
once a year and a power failure twice a year per controller; most corridors are well timed. Scripted
incidents (``incidents`` or ``IOC_SIM_INCIDENTS="<district>@<ISO start>/<minutes>"``): the district's
signals lose power (event 182) at the start and get it back (184) at the end, logging nothing between.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field

import httpx

from shared.areas import hanoi, hierarchy_name, label_points
from shared.simulation import fleet_size
from shared.simulation import parse_incidents as parse_scripted
from shared.tasks import wait_event

log = logging.getLogger(__name__)
BASE_INTERSECTIONS = 300  # at scale 1 over 30 districts (10 per area), see shared.simulation.fleet_size
ADVANCE = {2: 1, 6: 2}  # phase → advance detector channel
STOP_BAR = {2: 5, 6: 6, 4: 3, 8: 4}  # phase → stop-bar presence channel
YELLOW, RED_CLEAR = 3.0, 2.0
# At start-up each controller is already one or two cycles into its plan and its gateway uploads that buffered
# log first (at most this many seconds), so the first complete cycles (arrivals on green, split failures)
# reach the processor's live KPIs within a minute instead of after two cycles.
BACKFILL_SECONDS = 120.0
YEAR_S = 365 * 86400.0
DETECTOR_FAULTS_PER_YEAR = 1.0  # per detector (6 per intersection); assumption, see docs/simulation.md
FLASHES_PER_YEAR = 1.0
POWER_FAILURES_PER_YEAR = 2.0
WELL_TIMED = 0.92  # share of intersections whose platoons arrive on green


def detectors() -> list[dict]:
    dets = [
        {"channel": ch, "phase": p, "function": "advance", "distance_m": 110.0, "speed_kmh": 40.0}
        for p, ch in ADVANCE.items()
    ]
    dets += [{"channel": ch, "phase": p, "function": "presence"} for p, ch in STOP_BAR.items()]
    return dets


@dataclass
class SimController:
    """One controller's timeline; ``events_until`` yields its log up to a time."""

    controller_id: str
    rng: random.Random
    cycle: float
    main_green: float
    platoon_offset: float  # when the upstream platoon reaches the stop bar, seconds into the cycle
    demand: float  # vehicles per cycle per main approach outside the platoon
    next_cycle: float
    pending: list[tuple[float, int, int]] = field(default_factory=list)
    ped_waiting: dict[int, bool] = field(default_factory=dict)
    dark: tuple[float, float] | None = None  # a scripted power cut (start, end)

    def power_out(self, t0: float, t1: float) -> None:
        """The controller loses power at ``t0`` until ``t1``: nothing logged between (a scripted incident)."""
        self.pending = [e for e in self.pending if e[0] < t0] + [(t0, 182, 0), (t1, 184, 0)]
        self.next_cycle = max(self.next_cycle, t1 + 1)
        self.ped_waiting.clear()
        self.dark = (t0, t1)

    def events_until(self, t_end: float) -> list[tuple[float, int, int]]:
        # One cycle ahead: detector actuations of a cycle start before it (travel time to the stop bar).
        while self.next_cycle <= t_end + self.cycle:
            self.pending.extend(self._cycle(self.next_cycle))
            self.pending.sort()
        n = 0
        while n < len(self.pending) and self.pending[n][0] < t_end:
            n += 1
        out, self.pending = self.pending[:n], self.pending[n:]
        if self.dark is not None:  # the next cycle's early actuations fall before power came back
            t0, t1 = self.dark
            out = [e for e in out if not t0 < e[0] < t1]
        return out

    def _cycle(self, s: float) -> list[tuple[float, int, int]]:
        rng, ev = self.rng, []
        roll = rng.random()
        p_power = POWER_FAILURES_PER_YEAR * self.cycle / YEAR_S
        p_flash = FLASHES_PER_YEAR * self.cycle / YEAR_S
        p_detector = 6 * DETECTOR_FAULTS_PER_YEAR * self.cycle / YEAR_S
        if roll < p_power:  # power failure for 1-3 minutes: nothing logged meanwhile
            off = rng.uniform(60, 180)
            ev += [(s, 182, 0), (s + off, 184, 0)]
            self.next_cycle = s + off + 1
            return ev
        if roll < p_power + p_flash:  # flash (NTCIP unitFlashStatus 5 fault monitor, then 2 not flash)
            dur = rng.uniform(120, 600)
            ev += [(s, 173, 5), (s + dur, 173, 2)]
            self.next_cycle = s + dur + 1
            return ev
        if roll < p_power + p_flash + p_detector:
            ev.append(
                (
                    s + rng.uniform(0, self.cycle),
                    rng.choice([84, 86, 87]),
                    rng.choice(list(STOP_BAR.values())),
                )
            )
        g1 = self.main_green
        side_start = g1 + YELLOW + RED_CLEAR
        side_end = self.cycle - YELLOW - RED_CLEAR
        for phases, g0, g_end in (((2, 6), 0.0, g1), ((4, 8), side_start, side_end)):
            for p in phases:
                max_out = rng.random() < 0.08
                term = 5 if max_out else (4 if p in (4, 8) else 6)
                if rng.random() < 0.25:
                    # a pedestrian pushes the button during the red before this green and walks at its start
                    t_ped = s + g0 - rng.uniform(1, max(2.0, self.cycle - (g_end - g0) - YELLOW - RED_CLEAR))
                    ev += [(t_ped, 90, p), (t_ped + 0.3, 89, p), (t_ped + 0.1, 45, p)]
                    ev += [(s + g0, 21, p), (s + g0 + 7, 22, p), (s + g0 + 19, 23, p)]
                ev += [
                    (s + g0, 1, p),
                    (s + g_end, term, p),
                    (s + g_end, 7, p),
                    (s + g_end, 8, p),
                    (s + g_end + YELLOW, 9, p),
                    (s + g_end + YELLOW, 10, p),
                    (s + g_end + YELLOW + RED_CLEAR, 11, p),
                ]
                # stop-bar queue discharging at green; a queue that outlasts the green is a split failure
                queue = rng.uniform(4, 12) if rng.random() > 0.05 else (g_end - g0) + 6
                ch = STOP_BAR[p]
                ev += [(s + g0 - 1, 82, ch), (s + g0 + queue, 81, ch)]
        travel = 110 / (40 / 3.6)
        for ch in ADVANCE.values():
            arrivals = [self.platoon_offset + rng.gauss(0, 3) for _ in range(rng.randint(4, 10))]
            arrivals += [rng.uniform(0, self.cycle) for _ in range(max(0, round(rng.gauss(self.demand, 2))))]
            for a in arrivals:
                t_on = s + (a % self.cycle) - travel
                ev += [(t_on, 82, ch), (t_on + 0.4, 81, ch)]
        self.next_cycle = s + self.cycle
        return ev


def build_intersections(
    scale: float, rng: random.Random, now: float
) -> tuple[list[dict], list[SimController]]:
    """Registry items and their controllers, spread round-robin over the districts."""
    districts = sorted(hanoi().districts, key=lambda a: a.code)
    # intersections lie around a point inside their area (the map shows them there), within ~1-2 km of it
    centre = label_points(hierarchy_name())
    spread = 0.02 if len(districts) <= 30 else 0.008
    n = max(1, round(fleet_size(BASE_INTERSECTIONS, scale, len(districts))))
    items, sims = [], []
    for i in range(n):
        d = districts[i % len(districts)]
        iid, cid = f"SIM-{d.code}-{i:04d}", f"SIMC-{i:04d}"
        items.append(
            {
                "intersection_id": iid,
                "name": f"{d.name} nút {i // len(districts) + 1}",
                "district": d.code,
                "lat": round(centre[d.code][0] + rng.uniform(-spread, spread), 6),
                "lon": round(centre[d.code][1] + rng.uniform(-spread, spread), 6),
                "controller_id": cid,
                "phases": [2, 4, 6, 8],
                "detectors": detectors(),
            }
        )
        cycle = rng.choice([90.0, 100.0, 120.0])
        main = round(cycle * rng.uniform(0.45, 0.6))
        good = rng.random() < WELL_TIMED  # well-timed corridors: platoons reach the stop bar during green
        offset = rng.uniform(3, main - 3) if good else rng.uniform(main + 8, cycle - 2)
        sims.append(
            SimController(
                cid,
                random.Random(rng.random()),
                cycle,
                main,
                offset,
                rng.uniform(3, 10),
                now + rng.uniform(0, cycle),
            )
        )
    return items, sims


def parse_incidents(spec: str | None) -> list[tuple[str, float, float]]:
    """The scripted incidents (:func:`shared.simulation.parse_incidents`) in Unix time, as the signal loop
    keeps time."""
    return [(d, start.timestamp(), end.timestamp()) for d, start, end in parse_scripted(spec)]


def apply_incidents(
    items: list[dict],
    sims: list[SimController],
    incidents: list[tuple[str, float, float]],
    now: float,
    done: set,
) -> None:
    """Cut the power of every controller in an incident's district once its start comes (a cycle ahead)."""
    for n, (district, t0, t1) in enumerate(incidents):
        if n in done or now + 150 < t0:
            continue
        done.add(n)
        for item, sim in zip(items, sims, strict=True):
            if item["district"] == district:
                sim.power_out(t0, t1)


async def run(
    base_url: str,
    api_key: str,
    *,
    stop: asyncio.Event,
    scale: float = 1.0,
    incidents: list[tuple[str, float, float]] | None = None,
) -> None:
    """Register the intersections, then post their event logs every second until ``stop`` is set.

    Controllers start up to :data:`BACKFILL_SECONDS` in the past (their first upload is that buffered log),
    then every post carries the last second of events (real time: about 0.8 events/s per intersection)."""
    from datetime import UTC, datetime

    rng = random.Random(1202)
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        items, sims = build_intersections(scale, rng, time.time() - BACKFILL_SECONDS)
        # the first cycle's advance actuations just before it started (travel time) are not logged
        origin = {sim.controller_id: sim.next_cycle for sim in sims}
        for i in range(0, len(items), 500):
            r = await http.post("/v1/intersections", json={"items": items[i : i + 500]}, headers=headers)
            if r.status_code != 200:
                log.warning("simulator: registering intersections answered %s", r.status_code)
        if incidents is None:
            incidents = parse_incidents(os.environ.get("IOC_SIM_INCIDENTS"))
        cut: set[int] = set()
        while not stop.is_set():
            if await wait_event(stop, 1.0):
                break
            now = time.time()
            apply_incidents(items, sims, incidents, now, cut)
            batch = []
            for sim in sims:
                first = origin[sim.controller_id]
                for t, code, param in sim.events_until(now):
                    if t < first:
                        continue
                    batch.append(
                        {
                            "timestamp": datetime.fromtimestamp(t, UTC).isoformat(),
                            "controller_id": sim.controller_id,
                            "event_code": code,
                            "parameter": param,
                        }
                    )
            for i in range(0, len(batch), 20000):
                try:
                    r = await http.post("/v1/events", json={"items": batch[i : i + 20000]}, headers=headers)
                    if r.status_code >= 500:
                        log.warning("simulator: ingest answered %s", r.status_code)
                except httpx.HTTPError as exc:
                    log.warning("simulator: ingest failed: %s", type(exc).__name__)
