"""Fault-injection harness: a ledger of accepted (2xx) writes, a retrying gateway, kiosk fixtures data, KPI
reconciliation, and kill -9-able worker subprocesses.

Every scenario follows the same pattern: drive writes through the real HTTP app while a fault happens, record
in the :class:`Ledger` every item whose request got a 2xx, then reconcile the ledger with what the broker
topics, the tables and the KPI observations hold: nothing lost, nothing doubled.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from shared.config import KafkaSettings
from shared.contracts.kiosk import KPI_EVENT, SESSIONS_TOPIC
from shared.testing import auth, read_topic

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python")
WORKER_SCRIPT = str(Path(__file__).with_name("worker.py"))
RETRYABLE = {409, 429, 503}
KPI_TOPIC = KPI_EVENT.topic


def uid() -> str:
    return uuid.uuid4().hex[:10]


@dataclass
class Ledger:
    """What the clients were told: every status seen, and the ids of every item accepted with a 2xx."""

    accepted: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    #: (status, Retry-After header) of every 429/503 answer: backpressure must always say when to retry
    refusals: list[tuple[int, str | None]] = field(default_factory=list)

    def record(self, response: httpx.Response, item_ids: Iterable[str]) -> None:
        """Note one answer; the items count as accepted only on 2xx."""
        self.statuses[response.status_code] += 1
        if 200 <= response.status_code < 300:
            self.accepted.extend(item_ids)
        elif response.status_code in (429, 503):
            self.refusals.append((response.status_code, response.headers.get("retry-after")))

    @property
    def accepted_set(self) -> set[str]:
        return set(self.accepted)


async def post_until_accepted(
    client: httpx.AsyncClient,
    url: str,
    body: dict,
    headers: dict,
    ledger: Ledger,
    item_ids: list[str],
    *,
    idempotency_key: str | None = None,
    deadline_s: float = 60.0,
    max_wait_s: float = 0.5,
) -> httpx.Response:
    """Behave like a field gateway: retry 409/429/503 (and transport errors) with the same Idempotency-Key
    until a final answer, waiting what Retry-After says (capped at ``max_wait_s`` to keep tests short)."""
    hdrs = dict(headers)
    if idempotency_key:
        hdrs["Idempotency-Key"] = idempotency_key
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            r = await client.post(url, json=body, headers=hdrs)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(max_wait_s)
            continue
        ledger.record(r, item_ids)
        if r.status_code not in RETRYABLE or time.monotonic() > deadline:
            return r
        await asyncio.sleep(min(max_wait_s, float(r.headers.get("retry-after", "1"))))


# Kiosk data ---------------------------------------------------------------------------------------------------
def kiosk_entry(district: str) -> dict:
    """A registry entry open 24/7 (so every session counts), in service since yesterday."""
    return {
        "building": "Trung tâm phục vụ hành chính công",
        "address": "Số 1 phố Thử nghiệm",
        "district": district,
        "opening_hours": [{"days": [1, 2, 3, 4, 5, 6, 7], "open": "00:00", "close": "24:00"}],
        "peripherals": ["touchscreen", "printer"],
        "software_version": "3.2.1",
        "in_service_since": (datetime.now(UTC) - timedelta(days=1)).isoformat(),
    }


def session_items(kiosks: list[str], n: int, prefix: str | None = None) -> list[dict]:
    """``n`` completed sessions spread over ``kiosks`` (ids unique to this call), ended a minute ago."""
    prefix = prefix or uid()
    end = datetime.now(UTC) - timedelta(seconds=60)
    start = end - timedelta(seconds=45)
    return [
        {
            "session_id": f"s-{prefix}-{i}",
            "kiosk_id": kiosks[i % len(kiosks)],
            "journey": "check_status",
            "started_at": start.isoformat(),
            "ended_at": end.isoformat(),
            "outcome": "completed",
        }
        for i in range(n)
    ]


def session_event_id(item: dict) -> str:
    """The CloudEvents id the kiosk service gives a session (services/kiosk/publishing.py)."""
    return f"ses:{item['kiosk_id']}:{item['session_id']}"


async def register_kiosks(client: httpx.AsyncClient, admin_key: str, district: str, n: int) -> list[str]:
    """Register ``n`` fresh kiosks in ``district``; their ids."""
    ids = [f"RK-{uid()}" for _ in range(n)]
    for kiosk in ids:
        r = await client.put(f"/v1/kiosks/{kiosk}", headers=auth(admin_key), json=kiosk_entry(district))
        assert r.status_code == 200, r.text
        assert r.json()["published"] is True, r.text
    return ids


async def session_ids_on_topic(
    kafka: KafkaSettings, session_ids: set[str], *, expect: int | None = None, timeout: float = 20.0
) -> Counter:
    """How many times each of ``session_ids`` is on the sessions topic (by CloudEvents id: a re-publish of the
    same event counts twice here; consumers are the ones who deduplicate)."""
    events = await read_topic(
        kafka,
        SESSIONS_TOPIC.name,
        where=lambda e: e.data.get("session_id") in session_ids,
        expect=expect,
        timeout=timeout,
    )
    return Counter(e.data["session_id"] for e in events)


# KPI reconciliation -------------------------------------------------------------------------------------------
def sessions_total(observations: list, source: str, district: str) -> float:
    """The ``kiosk.sessions`` total a reader of the KPI topic gets for ``district`` from one processor:
    the latest observation per (partition, day window), summed (the documented combine rule)."""
    latest: dict[tuple[int, str], float] = {}
    for e in observations:
        d = e.data
        if (
            e.source == source
            and d["kpi"] == "kiosk.sessions"
            and d["scope_level"] == "district"
            and d["scope_code"] == district
            and d["window_seconds"] == 86400
        ):
            latest[(d["partition"], d["window_start"])] = d["numerator"]
    return sum(latest.values())


async def wait_for_sessions_total(
    kafka: KafkaSettings,
    source: str,
    district: str,
    expected: float,
    *,
    timeout: float = 60.0,
    settle_s: float = 1.5,
) -> float:
    """Poll the KPI topic until the total equals ``expected`` and stays there for ``settle_s`` (a later
    observation that overshoots would fail the test); returns the last total seen."""
    deadline = time.monotonic() + timeout
    total = -1.0
    while time.monotonic() < deadline:
        obs = await read_topic(kafka, KPI_TOPIC, where=lambda e: e.source == source, timeout=10)
        total = sessions_total(obs, source, district)
        if total > expected:
            return total
        if total == expected:
            await asyncio.sleep(settle_s)
            obs = await read_topic(kafka, KPI_TOPIC, where=lambda e: e.source == source, timeout=10)
            return sessions_total(obs, source, district)
        await asyncio.sleep(0.5)
    return total


# Worker subprocesses ------------------------------------------------------------------------------------------
class Worker:
    """``tests/reliability/worker.py`` as a child process: the kiosk KPI processor in a ProcessorRuntime."""

    def __init__(
        self,
        bootstrap: str,
        name: str,
        source: str,
        *,
        pause_s: float = 0.0,
        max_records: int = 20000,
        log_path: Path | None = None,
        processor: str = "kiosk",
        driver: str = "faust",
    ):
        self.args = [
            PYTHON,
            WORKER_SCRIPT,
            "--bootstrap",
            bootstrap,
            "--name",
            name,
            "--source",
            source,
            "--pause",
            str(pause_s),
            "--max-records",
            str(max_records),
            "--processor",
            processor,
            "--driver",
            driver,
        ]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> Worker:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, "IOC_KAFKA_BOOTSTRAP_SERVERS": self.args[3], "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            self.args,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return self

    def kill9(self) -> None:
        """SIGKILL: no shutdown hook, no final commit, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


async def wait_until(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.2) -> None:
    """Poll an async or sync predicate until truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok = predicate()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok:
            return
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def python_executable() -> str:
    return PYTHON if Path(PYTHON).exists() else sys.executable
