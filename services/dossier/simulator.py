"""A synthetic one-stop-shop: agencies recording dossiers through the HTTP API only.

Loads a small procedure catalogue and agencies (city departments, district and commune people's committees)
if needed, then keeps creating dossiers whose lives were lived over the past days: a mix of procedures and
channels, intake rejections, withdrawals, supplement requests, fees paid online or at the counter, step
hand-offs, some late dossiers with apologies, and some still open (a few of them overdue). Personal data is
fake and obviously synthetic ("Nguyễn Văn A<n>").

Dossiers keep their clocks: a dossier whose next steps lie in the future stays open and takes them when their
time comes, and after a restart the simulator lists the open synthetic dossiers through the API and carries
them on to resolution (most on time, some late with an apology) instead of abandoning them.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from shared.areas import hanoi
from shared.tasks import wait_event

from .domain import local_date

log = logging.getLogger(__name__)

PROCEDURES = [
    # code, name, online level, service level, working days, fees, clock pauses
    ("SIM.1.000001", "Cấp giấy phép xây dựng nhà ở riêng lẻ", "partly_online", 3, 15, True, True),
    ("SIM.1.000002", "Đăng ký khai sinh", "fully_online", 4, 1, False, False),
    ("SIM.1.000003", "Chứng thực bản sao từ bản chính", "partly_online", 3, 1, True, False),
    ("SIM.1.000004", "Đăng ký thành lập hộ kinh doanh", "fully_online", 4, 3, True, True),
    ("SIM.1.000005", "Cấp giấy chứng nhận quyền sử dụng đất lần đầu", "partly_online", 3, 30, True, True),
    ("SIM.1.000006", "Đăng ký kết hôn", "fully_online", 4, 5, False, False),
    ("SIM.1.000007", "Cấp phiếu lý lịch tư pháp", "fully_online", 4, 10, True, True),
    ("SIM.1.000008", "Xác nhận tình trạng hôn nhân", "offline", 2, 3, False, False),
]
CITY_AGENCIES = [
    ("SIM-SXD", "Sở Xây dựng"),
    ("SIM-STP", "Sở Tư pháp"),
    ("SIM-STNMT", "Sở Tài nguyên và Môi trường"),
]
DISTRICTS = ["BD", "HK", "TH", "LB", "CG", "DD"]
# Share of dossiers resolved after their due date: the on-time KPI's target is 98 % (shared/kpis/dossier.yaml),
# which a healthy city meets; each late open dossier becomes an "overdue" alarm.
LATE_SHARE = 0.02


@dataclass
class SimProcedure:
    code: str
    online_level: str
    days: int
    has_fees: bool


def applicant(n: int) -> dict[str, str]:
    """Obviously synthetic personal data."""
    return {
        "name": f"Nguyễn Văn A{n}",
        "id_number": f"{n % 10**12:012d}",
        "address": f"Số {n} phố Giả Lập",
        "phone": f"0900{n % 10**6:06d}",
    }


async def load_reference(client: httpx.AsyncClient) -> tuple[list[SimProcedure], list[str]]:
    """Create the synthetic catalogue and agencies (idempotent upserts); returns what to use."""
    r = await client.put(
        "/v1/procedures",
        json={
            "items": [
                {
                    "code": c,
                    "name": n,
                    "online_level": lvl,
                    "service_level": sl,
                    "processing_days": d,
                    "has_fees": f,
                    "pauses_clock": p,
                }
                for c, n, lvl, sl, d, f, p in PROCEDURES
            ]
        },
    )
    r.raise_for_status()
    agencies = [{"code": c, "name": n, "level": "city", "admin_unit": "HN"} for c, n in CITY_AGENCIES]
    areas = hanoi()
    if areas.top_level == "district":
        agencies += _district_agencies()
    else:  # two-tier (2025): the people's committees of a few communes and wards, named as in the hierarchy
        for a in sorted(areas.top_areas, key=lambda a: a.code)[: 2 * len(DISTRICTS)]:
            unit = "phường" if a.kind == "ward" else "xã"
            agencies.append(
                {
                    "code": f"SIM-UBND-{a.code}",
                    "name": f"UBND {unit} {a.name}",
                    "level": "commune",
                    "admin_unit": a.code,
                }
            )
    r = await client.put("/v1/agencies", json={"items": agencies})
    if r.status_code == 422:
        # Another hierarchy (e.g. two-tier): keep only the city-level agencies.
        agencies = agencies[: len(CITY_AGENCIES)]
        r = await client.put("/v1/agencies", json={"items": agencies})
    r.raise_for_status()
    procs = [SimProcedure(c, lvl, d, f) for c, _, lvl, _, d, f, _ in PROCEDURES]
    return procs, [a["code"] for a in agencies]


def _district_agencies() -> list[dict[str, Any]]:
    """2019: the people's committees of a few districts and three of each one's communes."""
    agencies: list[dict[str, Any]] = []
    for d in DISTRICTS:
        agencies.append(
            {"code": f"SIM-UBND-{d}", "name": f"UBND quận {d}", "level": "district", "admin_unit": d}
        )
        for i in (1, 2, 3):
            agencies.append(
                {
                    "code": f"SIM-UBND-{d}-{i:02d}",
                    "name": f"UBND phường {d}-{i:02d}",
                    "level": "commune",
                    "admin_unit": f"{d}-{i:02d}",
                }
            )
    return agencies


def plan(rng: random.Random, proc: SimProcedure, channel: str) -> list[tuple[str, dict]]:
    """The transitions a dossier goes through (before timing)."""
    if channel != "in_person" and rng.random() < 0.08:
        return [("reject", {})]
    steps: list[tuple[str, dict]] = [] if channel == "in_person" else [("receive", {})]
    if rng.random() < 0.04:
        return [*steps, ("withdraw", {})]
    steps.append(("start_processing", {}))
    if rng.random() < 0.5:
        steps.append(("hand_over", {"step_name": "Chuyên viên thẩm định"}))
    if rng.random() < 0.2:
        steps += [("request_documents", {}), ("supply_documents", {})]
    if proc.has_fees:
        online_pay = rng.random() < (0.6 if channel == "online" else 0.15)
        steps += [("request_fees", {}), ("pay_fees", {"paid_online": online_pay})]
    if rng.random() < 0.02:
        return [*steps, ("stop", {})]
    steps.append(("hand_over", {"step_name": "Lãnh đạo phê duyệt"}))
    steps.append(("resolve", {}))
    if rng.random() < 0.85:
        steps.append(("return_result", {}))
    return steps


async def one_dossier(
    client: httpx.AsyncClient,
    rng: random.Random,
    n: int,
    run_id: str,
    procs: list[SimProcedure],
    agencies: list[str],
    now: datetime,
    pending: list | None = None,
) -> None:
    proc = rng.choice(procs)
    if proc.online_level == "offline":
        channel = "in_person"
    else:
        channel = rng.choices(["online", "in_person", "postal"], [0.55, 0.4, 0.05])[0]
    start = now - timedelta(days=rng.uniform(0, 14))
    code = f"SIM{run_id}-{n:07d}"
    r = await client.post(
        "/v1/dossiers",
        json={
            "code": code,
            "procedure_code": proc.code,
            "agency_code": rng.choice(agencies),
            "channel": channel,
            "applicant": applicant(n),
            "received": channel == "in_person",
            "at": start.isoformat(),
        },
    )
    if r.status_code != 201:
        log.warning("simulator: dossier not created", extra={"status": r.status_code})
        return
    steps = plan(rng, proc, channel)
    # Most finish within their legal time; LATE_SHARE run late.
    late = rng.random() < LATE_SHARE
    span_days = max(0.2, proc.days * 1.4 * (rng.uniform(1.1, 2.0) if late else rng.uniform(0.2, 0.9)))
    gap = timedelta(days=span_days / max(1, len(steps)))
    at = start
    due: date | None = date.fromisoformat(r.json()["due_date"]) if r.json().get("due_date") else None
    timed = []
    for action, extra in steps:
        at = at + gap * rng.uniform(0.5, 1.5)
        timed.append((at, action, extra))
    await carry_on(client, code, timed, due, now, pending)


async def carry_on(
    client: httpx.AsyncClient,
    code: str,
    timed: list[tuple[datetime, str, dict]],
    due: date | None,
    now: datetime,
    pending: list | None,
) -> None:
    """Post the steps due by ``now``; the rest waits in ``pending`` (a heap) for its time: the clock runs on."""
    for i, (at, action, extra) in enumerate(timed):
        if at >= now:
            if pending is not None:
                heapq.heappush(pending, (at, code, timed[i:], due.isoformat() if due else None))
            return
        due = await _step(client, code, action, extra, at, due)
        if due is False:
            return


async def _step(client: httpx.AsyncClient, code: str, action: str, extra: dict, at: datetime, due):
    """One transition (an apology first when resolving past the due date); the new due date, False if refused."""
    if action == "resolve" and due is not None and local_date(at) > due:
        promised = local_date(at) + timedelta(days=2)
        await client.post(
            f"/v1/dossiers/{code}/apologies",
            json={"new_due_date": promised.isoformat(), "at": (at - timedelta(minutes=1)).isoformat()},
        )
    if action == "hand_over":
        r = await client.post(f"/v1/dossiers/{code}/handovers", json={**extra, "at": at.isoformat()})
    else:
        r = await client.post(
            f"/v1/dossiers/{code}/transitions", json={"action": action, "at": at.isoformat(), **extra}
        )
    if r.status_code != 200:
        log.warning("simulator: transition refused", extra={"action": action, "status": r.status_code})
        return False
    if r.json().get("due_date"):
        return date.fromisoformat(r.json()["due_date"])
    return due


async def advance_due(client: httpx.AsyncClient, pending: list, now: datetime) -> None:
    """Take the steps of open dossiers whose time has come."""
    while pending and pending[0][0] <= now:
        _, code, timed, due = heapq.heappop(pending)
        await carry_on(client, code, timed, date.fromisoformat(due) if due else None, now, pending)


# What an open dossier still has to go through, by status (2 received, 4 processing, 5 documents requested,
# 6 fees requested, 1 submitted).
REMAINING: dict[int, list[tuple[str, dict[str, Any]]]] = {
    1: [("receive", {}), ("start_processing", {}), ("resolve", {}), ("return_result", {})],
    2: [("start_processing", {}), ("resolve", {}), ("return_result", {})],
    4: [("resolve", {}), ("return_result", {})],
    5: [("supply_documents", {}), ("resolve", {}), ("return_result", {})],
    6: [("pay_fees", {"paid_online": True}), ("resolve", {}), ("return_result", {})],
}
RESUME_LIMIT = 2000


async def resume_open(client: httpx.AsyncClient, rng: random.Random, pending: list, now: datetime) -> int:
    """After a restart: carry on the open synthetic dossiers the service kept (their clocks kept running)."""
    resumed = 0
    for status, rest in REMAINING.items():
        after = None
        while resumed < RESUME_LIMIT:
            params = {"status": status, "limit": 500, **({"after": after} if after else {})}
            r = await client.get("/v1/dossiers", params=params)
            if r.status_code != 200:
                break
            body = r.json()
            for d in body["items"]:
                if not d["code"].startswith("SIM"):
                    continue
                due = date.fromisoformat(d["due_date"]) if d.get("due_date") else None
                # the remaining steps spread until the due date (LATE_SHARE run late)
                end_of = datetime.combine(due, datetime.min.time(), UTC) if due else now + timedelta(days=2)
                span = max(timedelta(hours=1), end_of - now) * (
                    1.3 if rng.random() < LATE_SHARE else rng.uniform(0.2, 0.9)
                )
                timed = [(now + span * (k + 1) / len(rest), a, e) for k, (a, e) in enumerate(rest)]
                heapq.heappush(pending, (timed[0][0], d["code"], timed, due.isoformat() if due else None))
                resumed += 1
            after = body.get("next_after")
            if not after:
                break
    return resumed


async def run(base_url: str, api_key: str, *, stop: asyncio.Event, scale: float = 1.0) -> None:
    """Feed the dossier service until ``stop`` is set; ``scale`` multiplies the rate (about 1 dossier/s)."""
    rng = random.Random()
    run_id = uuid.uuid4().hex[:6]
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        while not stop.is_set():
            try:
                procs, agencies = await load_reference(client)
                break
            except (httpx.HTTPError, OSError) as exc:
                log.warning("simulator: reference data not loaded yet (%s)", type(exc).__name__)
                await _wait(stop, 2.0)
        else:
            return
        pending: list = []
        try:
            resumed = await resume_open(client, rng, pending, datetime.now(UTC))
            log.info("simulator: open dossiers carried on", extra={"dossiers": resumed})
        except (httpx.HTTPError, OSError, KeyError) as exc:
            log.warning("simulator: open dossiers not listed (%s)", type(exc).__name__)
        n = 0
        interval = 1.0 / max(scale, 0.01)
        while not stop.is_set():
            n += 1
            try:
                await advance_due(client, pending, datetime.now(UTC))
                await one_dossier(client, rng, n, run_id, procs, agencies, datetime.now(UTC), pending)
            except (httpx.HTTPError, OSError) as exc:
                log.warning("simulator: request failed (%s)", type(exc).__name__)
                await _wait(stop, 2.0)
            await _wait(stop, interval * rng.uniform(0.5, 1.5))


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    await wait_event(stop, seconds)
