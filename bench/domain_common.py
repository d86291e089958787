"""Helpers of the per-domain benchmark paths: run a service as its own uvicorn process, issue it an API key,
measure that process (CPU seconds, peak RSS) from outside, and summarise latencies.

The service under test is always a separate process from the load generator, so the load generator's CPU is
never counted as the service's (both share this machine's cores, as a real gateway would not).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import psutil

from shared.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


def service_env(bootstrap: str, database_url: str, **extra: str) -> dict[str, str]:
    """Environment of a service/worker subprocess pointed at the bench's broker and database."""
    env = dict(os.environ)
    env.update(
        {
            "IOC_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "IOC_DATABASE_URL": database_url,
            "IOC_KAFKA_IDEMPOTENCE": "false",
            "IOC_LOG_LEVEL": os.environ.get("IOC_BENCH_LOG_LEVEL", "WARNING"),
            # The benchmark measures throughput, not the per-principal rate limit.
            "IOC_RATE_LIMIT": "1000000/second",
            "IOC_MAX_INFLIGHT_REQUESTS": "256",
            **extra,
        }
    )
    return env


@dataclass
class ServiceProcess:
    """One service app under uvicorn (``ioc serve``), in its own process."""

    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """A child process of the bench (stdout and stderr to ``log_path``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log_file:
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)


def spawn_service(
    name: str, bootstrap: str, database_url: str, *, log_dir: Path | None = None, **env: str
) -> ServiceProcess:
    """``ioc serve NAME`` on a free port (not waiting for it)."""
    port = free_port()
    log_path = (log_dir or ROOT / "bench-results") / f"service-{name}-{port}.log"
    proc = spawn(
        [sys.executable, "-m", "ioc", "serve", name, "--port", str(port), "--host", "127.0.0.1"],
        service_env(bootstrap, database_url, **env),
        log_path,
    )
    return ServiceProcess(name, proc, port, log_path)


async def start_service(
    name: str,
    bootstrap: str,
    database_url: str,
    *,
    log_dir: Path | None = None,
    timeout: float = 90.0,
    **env: str,
) -> ServiceProcess:
    """Start ``ioc serve NAME`` on a free port and wait until ``/readyz`` says database and broker are up."""
    svc = spawn_service(name, bootstrap, database_url, log_dir=log_dir, **env)
    proc, log_path = svc.proc, svc.log_path
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} service exited: {log_path.read_text()[-2000:]}")
            try:
                r = await client.get(svc.base_url + "/readyz")
                if r.status_code == 200:
                    return svc
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
    svc.stop()
    raise TimeoutError(f"{name} service not ready within {timeout}s: {log_path.read_text()[-2000:]}")


async def issue_key(
    database_url: str, scopes: list[str], *, kind: str = "gateway", attributes: dict | None = None
) -> tuple[str, str]:
    """A fresh principal with ``scopes``: ``(principal id, API key)`` (the service must have migrated the platform
    schema)."""
    from shared.auth import KeyStore
    from shared.config import DatabaseSettings
    from shared.db import create_pool

    pool = await create_pool(DatabaseSettings(url=database_url, pool_min=1, pool_max=2))
    try:
        store = KeyStore(pool, cache_seconds=0)
        pid = f"bench-{uuid.uuid4().hex[:8]}"
        await store.upsert_principal(pid, kind, pid, scopes, attributes or {})
        return pid, await store.issue_key(pid)
    finally:
        await pool.close()


class ProcessMeter:
    """CPU seconds and peak RSS of another process between :meth:`start` and :meth:`stop`."""

    def __init__(self, pid: int):
        self.ps = psutil.Process(pid)
        self.cpu0 = self.cpu1 = 0.0
        self.t0 = self.t1 = 0.0

    def _cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def start(self) -> None:
        self.t0, self.cpu0 = time.perf_counter(), self._cpu()

    def stop(self) -> None:
        self.t1, self.cpu1 = time.perf_counter(), self._cpu()

    def rss_mib(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def peak_rss_mib(self) -> float:
        """VmHWM: the process's peak resident memory."""
        try:
            with open(f"/proc/{self.ps.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return self.rss_mib()

    def result(self, events: int, unit: str = "events") -> dict:
        wall = self.t1 - self.t0
        cpu = self.cpu1 - self.cpu0
        return {
            "events": events,
            "unit": unit,
            "seconds": round(wall, 3),
            "events_per_s": round(events / wall) if wall > 0 else None,
            "cpu_s_per_million": round(cpu / events * 1e6, 2) if events else None,
            "service_cpu_utilisation": round(cpu / wall, 2) if wall > 0 else None,
            "peak_rss_mib": round(self.peak_rss_mib(), 1),
        }


def percentiles(samples_s: list[float], prefix: str = "latency") -> dict:
    """p50/p95/p99 of durations in seconds, as ``<prefix>_pNN_ms``."""
    if not samples_s:
        return {}
    s = sorted(samples_s)
    return {
        f"{prefix}_p{p}_ms": round(s[min(len(s) - 1, int(len(s) * p / 100))] * 1000, 1) for p in (50, 95, 99)
    }


async def post_all(
    client: httpx.AsyncClient,
    url: str,
    bodies: list[bytes] | list[list[bytes]],
    headers: dict[str, str],
    concurrency: int,
) -> tuple[list[float], list[httpx.Response]]:
    """POST every pre-serialised body with ``concurrency`` requests in flight; request latencies and responses.

    ``bodies`` as a list of lists: one lane per list, each posting its bodies in order (per-entity ordering).
    """
    lanes = bodies if bodies and isinstance(bodies[0], list) else None
    queue = cast("list[bytes]", list(reversed(bodies))) if lanes is None else []
    latencies: list[float] = []
    responses: list[httpx.Response] = []

    async def lane(mine: list[bytes] | None) -> None:
        source: list[bytes] = list(reversed(mine)) if mine is not None else queue
        while source:
            body = source.pop()
            t = time.perf_counter()
            r = await client.post(url, content=body, headers=headers)
            latencies.append(time.perf_counter() - t)
            responses.append(r)

    if lanes is None:
        await asyncio.gather(*(lane(None) for _ in range(concurrency)))
    else:
        await asyncio.gather(*(lane(m) for m in lanes))
    return latencies, responses


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "content-type": "application/json"}


async def measure_ingest(
    svc: ServiceProcess,
    url: str,
    bodies: list[bytes] | list[list[bytes]],
    headers: dict[str, str],
    *,
    concurrency: int,
    unit: str,
    count=None,
) -> dict:
    """POST ``bodies`` to ``svc`` (``concurrency`` in flight) and measure the service process: items accepted
    per second (``count(response)``, default the batch answer's ``accepted``), its CPU per million items and
    peak memory, request latencies."""
    count = count or (lambda r: r.json().get("accepted", 0) if r.status_code < 300 else 0)
    async with httpx.AsyncClient(
        base_url=svc.base_url, timeout=120, limits=httpx.Limits(max_connections=concurrency)
    ) as client:
        meter = ProcessMeter(svc.proc.pid)
        meter.start()
        latencies, responses = await post_all(client, url, bodies, headers, concurrency)
        meter.stop()
    accepted = sum(count(r) for r in responses)
    failed = [f"{r.status_code} {r.text[:300]}" for r in responses if r.status_code >= 300]
    out = meter.result(accepted, unit=unit)
    out.update(percentiles(latencies, "request_latency"))
    out.update(
        {
            "requests": len(responses),
            "concurrency": concurrency,
            "failed_requests": len(failed),
            "errors": failed[:3],
        }
    )
    return out
