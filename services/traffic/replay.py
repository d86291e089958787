"""Replay a hi-res controller log CSV through the traffic service's HTTP API.

Accepts the ATSPM layouts ``TimeStamp, DeviceId, EventId, Parameter`` and UDOT's
``Timestamp, SignalID, EventCode, EventParam`` (header names are matched case- and punctuation-insensitively),
one or many controllers per file. Timestamps without a UTC offset are controller local time
(``Asia/Ho_Chi_Minh`` unless told otherwise). ``speed=None`` sends as fast as the API accepts; ``speed=1.0``
keeps the recorded pace, ``10.0`` ten times faster.

``backfill=True`` sends the log as history (``POST /v1/events?backfill=true``): any age is accepted, it is
measured apart from the live stream, and each controller's last request says ``final=true`` so its last bin is
published at once instead of after the idle flush.
"""

from __future__ import annotations

import asyncio
import csv
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx

TIME_COLUMNS = ("timestamp", "time", "eventtime")
DEVICE_COLUMNS = ("deviceid", "signalid", "controllerid", "signal")
CODE_COLUMNS = ("eventid", "eventcode", "code")
PARAM_COLUMNS = ("parameter", "eventparam", "param")


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _column(header: list[str], names: tuple[str, ...]) -> int:
    for i, h in enumerate(header):
        if _norm(h) in names:
            return i
    raise ValueError(f"no column named like {names[0]!r} in the CSV header")


def parse_timestamp(value: str, tz: ZoneInfo) -> datetime:
    """ATSPM timestamps: ISO or ``M/D/YYYY h:mm:ss.f`` (SQL Server exports); naive means local time."""
    value = value.strip()
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        for fmt in (
            "%m/%d/%Y %H:%M:%S.%f",
            "%m/%d/%Y %H:%M:%S",
            "%m/%d/%Y %I:%M:%S.%f %p",
            "%m/%d/%Y %I:%M:%S %p",
        ):
            try:
                t = datetime.strptime(value, fmt)
                break
            except ValueError:
                continue
        else:
            raise ValueError("unreadable timestamp") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=tz)


def read_hires_csv(path: str | Path, tz: str = "Asia/Ho_Chi_Minh") -> list[tuple[datetime, str, int, int]]:
    """``(timestamp, controller id, code, parameter)`` rows of a hi-res log, in time order (stable)."""
    zone = ZoneInfo(tz)
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        ti, di, ci, pi = (
            _column(header, c) for c in (TIME_COLUMNS, DEVICE_COLUMNS, CODE_COLUMNS, PARAM_COLUMNS)
        )
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row or not any(row):
                continue
            try:
                rows.append((parse_timestamp(row[ti], zone), row[di].strip(), int(row[ci]), int(row[pi])))
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{path}: line {line_no}: {exc}") from None
    rows.sort(key=lambda r: r[0])
    return rows


@dataclass
class ReplayReport:
    """What a replay sent and what the service answered."""

    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    requests: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for a person: sent, accepted, duplicates and refused by reason."""
        refused = ", ".join(f"{code} {n}" for code, n in sorted(self.reasons.items())) or "none"
        return (
            f"sent {self.sent}, accepted {self.accepted}, duplicates {self.duplicates}, "
            f"refused {self.rejected} ({refused}) in {self.requests} requests"
        )


def _batches(
    rows: list[tuple[datetime, str, int, int]],
    batch_size: int,
    span_s: float | None,
    per_controller: bool = False,
) -> Iterator[list[tuple[datetime, str, int, int]]]:
    """Consecutive rows, at most ``batch_size`` per batch, (paced replay) at most ``span_s`` of log time and
    (``per_controller``) one controller per batch."""
    batch: list[tuple[datetime, str, int, int]] = []
    for row in rows:
        if batch and (
            len(batch) >= batch_size
            or (span_s is not None and (row[0] - batch[0][0]).total_seconds() >= span_s)
            or (per_controller and row[1] != batch[0][1])
        ):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch


async def replay_file(
    path: str | Path,
    base_url: str,
    api_key: str,
    speed: float | None = None,
    *,
    tz: str = "Asia/Ho_Chi_Minh",
    batch_size: int = 5000,
    client: httpx.AsyncClient | None = None,
    backfill: bool = False,
) -> ReplayReport:
    """Feed a hi-res log CSV through ``POST /v1/events``, paced by ``speed`` (None: as fast as possible), as
    history when ``backfill`` (then one controller after the other, each ending with ``final=true``).

    Retries 429/503 answers after their ``Retry-After``; returns a :class:`ReplayReport`.
    """
    if backfill and speed:
        raise ValueError("a backfill is sent as fast as possible: no speed")
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive (or None for as fast as possible)")
    rows = read_hires_csv(path, tz)
    report = ReplayReport()
    own = client is None
    http = client or httpx.AsyncClient(base_url=base_url, timeout=60)
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        if not rows:
            return report
        first = rows[0][0]
        started = time.monotonic()
        if backfill:
            rows.sort(key=lambda r: r[1])  # stable: each controller's rows stay in time order
        batches = list(_batches(rows, batch_size, 1.0 if speed else None, per_controller=backfill))
        for n, batch in enumerate(batches):
            if speed:
                # Send a batch once its last event is due at the recorded pace.
                due = (batch[-1][0] - first).total_seconds() / speed
                wait = started + due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            items = [
                {"timestamp": t.isoformat(), "controller_id": cid, "event_code": code, "parameter": param}
                for t, cid, code, param in batch
            ]
            params = None
            if backfill:
                last_of_controller = n + 1 == len(batches) or batches[n + 1][0][1] != batch[0][1]
                params = {"backfill": "true", "final": "true" if last_of_controller else "false"}
            body = await _post(http, headers, items, params)
            report.requests += 1
            report.sent += len(items)
            report.accepted += body.get("accepted", 0)
            report.duplicates += body.get("duplicates", 0)
            for err in body.get("rejected", ()):
                report.rejected += 1
                report.reasons[err["code"]] = report.reasons.get(err["code"], 0) + 1
    finally:
        if own:
            await http.aclose()
    return report


async def _post(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    items: list[dict[str, Any]],
    params: dict[str, str] | None = None,
) -> dict:
    for _ in range(30):
        r = await http.post("/v1/events", json={"items": items}, headers=headers, params=params)
        if r.status_code in (429, 503):
            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
            continue
        if r.status_code in (200, 422):
            return r.json()
        raise RuntimeError(f"replay: the service answered {r.status_code}: {r.text[:300]}")
    raise RuntimeError("replay: the service stayed unavailable")
