"""City burst: one quarter hour of a city's meter readings, from the first POST to the city KPI reflecting all.

A head-end system forwards a quarter hour of readings at once (10,000-reading POSTs, 4 in flight). The path: the
meter service (validation against the registry and each meter's last register, publish) → the meter-kpi processor
→ the city-kpi processor → ``ioc.city.kpis``. The run registers ``readings`` meters, primes each meter's register
with one reading a quarter hour earlier (not timed: it only gives every burst reading a register delta), then
times the burst: every meter's next reading, each with a known delta, so the city's ``meter.energy_kwh`` of that
quarter hour must equal their sum exactly. The clock stops when a city-level update of that window carries it.

Every subprocess is sampled every second (RSS, CPU seconds). The meter service's memory per registered meter is
its RSS after registration minus before, over the fleet. With fewer readings than a city's 3,000,000 the result
states the extrapolation at the measured end-to-end rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import orjson
import psutil

from bench.domain_common import ROOT, bearer, issue_key, service_env
from bench.domain_meter import QUARTER, commune_of, district_codes
from bench.domain_pipeline import Child, _infra_children, _spawn, _spawn_service, _wait_ready
from shared.config import KafkaSettings

LABEL = "city burst: a quarter hour of readings, first POST → city KPI reflecting all"
CITY_METERS = 3_000_000  # Hanoi's meters: one quarter hour is one reading each
ENERGY_KPI = "meter.energy_kwh"
REQUEST_READINGS = 10_000
REGISTRY_REFRESH_S = 30.0  # the meter service's default registry refresh interval
REGISTER_CHUNK = 10_000  # meters per registration request: several requests, so the RSS slope can be read
# Requests the head-end keeps in flight (IOC_BENCH_BURST_IN_FLIGHT: to measure how far concurrency carries)
IN_FLIGHT = int(os.environ.get("IOC_BENCH_BURST_IN_FLIGHT") or 4)


async def _wait_quiet(process: psutil.Process, timeout: float = 120.0) -> None:
    """Waits until ``process`` uses under 10% of a core over half a second (its registry reload done)."""
    cpu = lambda: sum(process.cpu_times()[:2])  # noqa: E731
    last = cpu()
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.5)
        now = cpu()
        if now - last < 0.05:
            break
        last = now


def marginal_bytes_per_meter(rss_after: list[tuple[int, int]]) -> int | None:
    """The slope of the service's RSS over the meters registered, from the first registration request on
    (``rss_after``: (meters registered so far, RSS) after each request); None with fewer than two requests."""
    if len(rss_after) < 2:
        return None
    (m0, r0), (m1, r1) = rss_after[0], rss_after[-1]
    return round((r1 - r0) / (m1 - m0))


def _delta(j: int) -> float:
    # Multiples of 0.25 kWh: their sum is exact in binary floating point, so the check can be equality.
    return 0.25 * (1 + j % 8)


def _bodies(prefix: str, meters: int, end: str, first: bool) -> list[bytes]:
    bodies = []
    for lo in range(0, meters, REQUEST_READINGS):
        items = [
            {
                "meter_id": f"{prefix}{j:07d}",
                "obis": "1-0:1.8.0",
                "interval_end": end,
                "value": 1000.0 + (0.0 if first else _delta(j)),
                "unit": "kWh",
            }
            for j in range(lo, min(meters, lo + REQUEST_READINGS))
        ]
        bodies.append(orjson.dumps({"items": items}))
    return bodies


async def _post_all(client: httpx.AsyncClient, bodies: list[bytes], headers: dict[str, str]) -> int:
    queue = list(reversed(bodies))
    accepted = 0

    async def lane() -> None:
        nonlocal accepted
        while queue:
            body = queue.pop()
            r = await client.post("/v1/readings", content=body, headers=headers)
            if r.status_code >= 300:
                raise RuntimeError(f"readings refused: {r.status_code} {r.text[:300]}")
            accepted += int(r.json().get("accepted", 0))

    await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    return accepted


async def _wait_city_value(
    kafka: KafkaSettings, window_start: str, expected: float, timeout: float
) -> float | None:
    """Tails ``ioc.city.kpis`` (from where it is now) until a city-level quarter-hour energy update of the window
    reaches ``expected``; the arrival time, or None."""
    from aiokafka import AIOKafkaConsumer

    from shared.contracts.city import CITY_KPI_TOPIC

    c = AIOKafkaConsumer(
        CITY_KPI_TOPIC.name,
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
        auto_offset_reset="earliest",
    )
    await c.start()
    deadline = time.perf_counter() + timeout
    try:
        while time.perf_counter() < deadline:
            batch = await c.getmany(timeout_ms=200, max_records=5000)
            for recs in batch.values():
                for rec in recs:
                    if not rec.key or not rec.key.startswith(f"{ENERGY_KPI}|city|".encode()):
                        continue
                    d = orjson.loads(rec.value)
                    if d.get("window_seconds") != QUARTER or not str(d.get("window_start", "")).startswith(
                        window_start
                    ):
                        continue
                    value = d["value"] if d.get("value") is not None else d.get("numerator")
                    if value is not None and abs(value - expected) < 1e-6:
                        return time.perf_counter()
    finally:
        await c.stop()
    return None


def _profile(children: list[Child], log_dir: Path) -> list[subprocess.Popen]:
    """With ``IOC_BENCH_PYSPY`` set (a directory), py-spy samples each service and processor of the burst (raw
    collapsed stacks, ``<dir>/burst-<name>-<time>.txt``); py-spy is a dev tool, not installed by the project."""
    out_dir = os.environ.get("IOC_BENCH_PYSPY")
    if not out_dir:
        return []
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    stamp = int(time.time())
    return [
        subprocess.Popen(
            [
                "py-spy",
                "record",
                "--nonblocking",
                "--format",
                "raw",
                "--rate",
                "100",
                "--pid",
                str(ch.ps[0].pid),
                "-o",
                str(Path(out_dir) / f"burst-{ch.name}-{stamp}.txt"),
            ],
            stdout=open(log_dir / f"py-spy-{ch.name}.log", "wb"),  # closed with the process
            stderr=subprocess.STDOUT,
        )
        for ch in children
        if ch.ps
    ]


async def burst(
    kafka: KafkaSettings, database_url: str, readings: int = 300_000, timeout: float = 600.0
) -> dict:
    """The burst path's result row (see the module's docstring)."""
    log_dir = ROOT / "bench-results" / f"burst-{uuid.uuid4().hex[:6]}"
    log_dir.mkdir(parents=True, exist_ok=True)
    bootstrap = kafka.bootstrap_servers
    children: list[Child] = []
    try:
        # The registry refresh re-reads every meter written since its last pass, its own registrations
        # included: a one-off reload of the whole new fleet, on the event loop (docs/performance-targets.md).
        # The production interval, stated, so the bench knows when it comes and starts the burst after it.
        children.append(
            _spawn_service(
                "meter",
                bootstrap,
                database_url,
                log_dir,
                IOC_METER_REGISTRY_REFRESH_SECONDS=str(REGISTRY_REFRESH_S),
            )
        )
        children.append(_spawn_service("city", bootstrap, database_url, log_dir))
        async with httpx.AsyncClient(timeout=5) as c:
            await asyncio.gather(*(_wait_ready(c, ch) for ch in children))
        t_ready = time.perf_counter()
        meter_url = f"http://127.0.0.1:{children[0].port}"
        for name in ("meter-kpi", "city-kpi"):
            children.append(
                _spawn(f"processor-{name}", ["process", name], service_env(bootstrap, database_url), log_dir)
            )
        measured = (
            children
            + _infra_children(bootstrap, database_url)
            + [Child("bench driver", None, None, None, [psutil.Process()])]
        )

        _, key = await issue_key(database_url, ["meter:admin", "meter:ingest"], kind="admin")
        headers = {**bearer(key), "content-type": "application/json"}
        prefix = f"U{uuid.uuid4().hex[:5]}-"
        districts = district_codes()
        communes = {d: commune_of(d) for d in districts}
        fleet = [
            {
                "meter_id": f"{prefix}{j:07d}",
                "customers": 1,
                "district": districts[j % len(districts)],
                "commune": communes[districts[j % len(districts)]],
                "feeder": f"F-{districts[j % len(districts)]}-{j % 4}",
                "installed_on": "2020-01-01",
                "interval_seconds": QUARTER,
            }
            for j in range(readings)
        ]
        service = children[0].ps[0]
        rss_before = service.memory_info().rss
        async with httpx.AsyncClient(base_url=meter_url, timeout=300) as client:
            rss_after: list[tuple[int, int]] = []  # (meters registered, service RSS)
            for lo in range(0, readings, REGISTER_CHUNK):
                chunk = fleet[lo : lo + REGISTER_CHUNK]
                r = await client.post("/v1/meters", json={"items": chunk}, headers=headers)
                if r.status_code >= 300:
                    raise RuntimeError(f"registration refused: {r.status_code} {r.text[:300]}")
                rss_after.append((lo + len(chunk), service.memory_info().rss))
            await asyncio.sleep(1.0)
            rss_registered = service.memory_info().rss
            now = int(time.time())
            end = (
                now - now % QUARTER - QUARTER
            )  # the burst's interval end; the priming reading ends before it
            iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
            await _post_all(client, _bodies(prefix, readings, iso(end - QUARTER), first=True), headers)
            bodies = _bodies(prefix, readings, iso(end), first=False)
            expected = sum(_delta(j) for j in range(readings))
            # The city holds its windows per area: wait for the priming window to have gone through, so the
            # burst's clock starts with the pipeline idle.
            await asyncio.sleep(3.0)
            # Past the service's next registry refresh (it reloads the fleet just registered), then idle.
            since_ready = time.perf_counter() - t_ready
            await asyncio.sleep(REGISTRY_REFRESH_S - since_ready % REGISTRY_REFRESH_S + 1.0)
            await _wait_quiet(service)
            for ch in measured:
                ch.sample(time.perf_counter())
            waiter = asyncio.create_task(
                _wait_city_value(
                    kafka, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(end - QUARTER)), expected, timeout
                )
            )
            await asyncio.sleep(0.5)  # the tail is reading before the first POST

            async def sample_forever() -> None:
                while True:
                    await asyncio.sleep(1.0)
                    for ch in measured:
                        ch.sample(time.perf_counter())

            sampler = asyncio.create_task(sample_forever())
            profilers = _profile(children, log_dir)
            t0 = time.perf_counter()
            accepted = await _post_all(client, bodies, headers)
            t_acked = time.perf_counter()
            seen = await waiter
            rss_burst = (
                service.memory_info().rss
            )  # the registers every meter now has, and the burst's garbage
            sampler.cancel()
            for prof in profilers:  # py-spy writes its profile on SIGINT
                prof.send_signal(signal.SIGINT)
            for prof in profilers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    prof.wait(30)
        for ch in measured:
            ch.sample(time.perf_counter())
        if seen is None:
            return {
                "error": f"the city KPI did not reach {expected} kWh within {timeout:.0f}s",
                "accepted": accepted,
            }
        seconds = seen - t0
        rate = readings / seconds
        processes = {}
        for ch in measured:
            if len(ch.samples) >= 2:
                (_, _, c0), (_, _, c1) = ch.samples[0], ch.samples[-1]
                processes[ch.name] = {
                    "cpu_us_per_reading": round((c1 - c0) / readings * 1e6, 2),
                    "peak_rss_mib": round(max(s[1] for s in ch.samples), 1),
                }
        return {
            "events": readings,
            "accepted": accepted,
            "seconds": round(seconds, 2),
            "events_per_s": round(rate),
            "ingest_acked_s": round(t_acked - t0, 2),
            "city_value_kwh": expected,
            "exact": True,
            "extrapolated_city_quarter_hour_s": round(CITY_METERS / rate, 1),
            "target_city_quarter_hour_s": 60,
            "requests_in_flight": IN_FLIGHT,
            "meter_service_bytes_per_meter": round((rss_registered - rss_before) / readings),
            # What each further meter adds once the first request's parsing buffers are in place (a city's
            # registry is millions of meters: the fixed part vanishes there)
            "meter_service_marginal_bytes_per_meter": marginal_bytes_per_meter(rss_after),
            "target_meter_service_bytes_per_meter": 300,
            # After the priming readings and the burst: each meter's register state is in too
            "meter_service_bytes_per_meter_after_burst": round((rss_burst - rss_before) / readings),
            "processes": processes,
        }
    finally:
        for ch in children:
            ch.stop()
        await asyncio.sleep(1.0)
        for ch in children:
            with contextlib.suppress(Exception):
                ch.kill()
