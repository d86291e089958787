"""A kiosk's status (GET /v1/kiosks/{id}/status) against the real broker and PostgreSQL: registry facts without
secrets, peripherals' current states, sessions of today, and availability over a day worked out by hand from the
kiosk KPIs' definition (shared/kpis/kiosk.yaml, docs/kiosk-status.md)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from services.kiosk.app import create_app
from services.kiosk.settings import KioskSettings
from shared.calendar import city_calendar
from shared.testing import auth, issue_test_key, running_app
from tests.areas import BA_DINH

pytestmark = pytest.mark.integration
HANOI = timezone(timedelta(hours=7))
HOURS = [{"days": [1, 2, 3, 4, 5, 6, 7], "open": "08:00", "close": "17:00"}]


@pytest.fixture(scope="module")
async def client(kafka_settings, db_settings, topics_ready, platform_pool):
    settings = KioskSettings(kafka=kafka_settings, database=db_settings, heartbeat_timeout_seconds=180.0)
    async with running_app(create_app(settings)) as c:
        yield c


def a_past_open_day() -> date:
    """A recent Hanoi day (within the 7 days ingest accepts) that is no day off of the city calendar."""
    off = set(city_calendar().days_off)
    today = datetime.now(HANOI).date()
    return next(d for d in (today - timedelta(days=n) for n in range(2, 6)) if d not in off)


def at(day: date, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=HANOI)


async def test_availability_of_a_hand_made_day_sessions_and_peripherals(client, platform_pool):
    _, admin_key = await issue_test_key(platform_pool, ["kiosk:admin", "kiosk:ingest"], kind="admin")
    admin = auth(admin_key)
    kiosk = f"KS-{uuid.uuid4().hex[:10]}"
    day = a_past_open_day()
    r = await client.put(
        f"/v1/kiosks/{kiosk}",
        headers=admin,
        json={
            "building": "UBND phường Ba Đình",
            "address": "Số 1, Ba Đình",
            "district": BA_DINH,
            "opening_hours": HOURS,
            "peripherals": ["touchscreen", "printer"],
            "software_version": "3.2.1",
            "in_service_since": (at(day, 0) - timedelta(days=1)).isoformat(),
            "gateway": f"gw-{kiosk}",
        },
    )
    assert r.status_code == 200, r.text
    # Heartbeats every 60 s from 08:00 to 12:00 and from 13:00 to 17:00; silence 12:00-13:00 (> the 180 s
    # timeout). One extra heartbeat at 07:00 (outside opening hours: counts for nothing).
    beats = [at(day, 7)]
    beats += [at(day, 8) + timedelta(minutes=m) for m in range(0, 4 * 60 + 1)]
    beats += [at(day, 13) + timedelta(minutes=m) for m in range(0, 4 * 60 + 1)]
    r = await client.post(
        "/v1/heartbeats",
        headers=admin,
        json={"items": [{"kiosk_id": kiosk, "at": b.isoformat(), "app_version": "3.2.1"} for b in beats]},
    )
    assert r.status_code == 200 and r.json()["accepted"] == len(beats), r.text
    # The printer runs out of paper 10:00-10:30 (CEN/XFS: the device online, paper out = not usable), and
    # the touchscreen is busy at 09:00 (busy = online working on a command: usable).
    changes = [
        ("printer", at(day, 10), "online", "out"),
        ("printer", at(day, 10, 30), "online", "full"),
        ("touchscreen", at(day, 9), "busy", None),
    ]
    r = await client.post(
        "/v1/peripherals",
        headers=admin,
        json={
            "items": [
                {"kiosk_id": kiosk, "peripheral": p, "at": t.isoformat(), "state": s}
                | ({"paper": paper} if paper else {})
                for p, t, s, paper in changes
            ]
        },
    )
    assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    now = datetime.now(UTC)
    sessions = [
        ("s1", at(day, 9), "completed"),
        ("s2", at(day, 14), "abandoned"),
        ("s3", now - timedelta(seconds=2), "completed"),  # today
    ]
    r = await client.post(
        "/v1/sessions",
        headers=admin,
        json={
            "items": [
                {
                    "session_id": f"{kiosk}-{sid}",
                    "kiosk_id": kiosk,
                    "journey": "lookup_procedure",
                    "started_at": t.isoformat(),
                    "ended_at": (t + timedelta(seconds=1)).isoformat(),
                    "outcome": outcome,
                }
                for sid, t, outcome in sessions
            ]
        },
    )
    assert r.status_code == 200 and r.json()["accepted"] == 3, r.text
    # the same heartbeats and sessions again (a gateway's retry): stored once
    r = await client.post(
        "/v1/heartbeats",
        headers=admin,
        json={
            "items": [{"kiosk_id": kiosk, "at": b.isoformat(), "app_version": "3.2.1"} for b in beats[:10]]
        },
    )
    assert r.status_code == 200, r.text

    _, reader_key = await issue_test_key(platform_pool, ["kiosk:read"], kind="operator")
    reader = auth(reader_key)
    r = await client.get(
        f"/v1/kiosks/{kiosk}/status",
        headers=reader,
        params={"from": at(day, 0).isoformat(), "to": (at(day, 0) + timedelta(days=1)).isoformat()},
    )
    assert r.status_code == 200, r.text
    s = r.json()
    # Registry facts, without who may report for it (an access-control secret of the service)
    assert s["kiosk"]["building"] == "UBND phường Ba Đình" and s["kiosk"]["district"] == BA_DINH
    assert "gateway_principal" not in s["kiosk"] and f"gw-{kiosk}" not in r.text
    av = s["availability"]
    # Technical availability = time online / scheduled service time (domain notes §4; kiosk.yaml
    # kiosk.technical_availability: online = between heartbeats at most heartbeat_timeout apart, within opening
    # hours). Scheduled: 08:00-17:00 = 9 h = 32,400 s. Online: 08:00-12:00 (heartbeats 60 s apart) and
    # 13:00-17:00 = 8 h = 28,800 s (the 12:00 → 13:00 gap of 3,600 s > 180 s is offline; 07:00 is before
    # opening, and the 07:00 → 08:00 gap is offline anyway). 28,800 / 32,400 = 88.888... %.
    assert av["scheduled_seconds"] == 32_400
    assert av["online_seconds"] == 28_800
    assert av["technical_pct"] == pytest.approx(100 * 28_800 / 32_400)
    journeys = {j["journey"]: j for j in av["journeys"]}
    # Functional availability per journey (kiosk.yaml kiosk.functional_availability.*): online time in which
    # every peripheral the journey needs is usable. Touchscreen + printer fitted: lookup_procedure,
    # check_status, rate_service need the touchscreen (busy is usable): 28,800 s; print_result and queue_ticket
    # also need the printer, out of paper 10:00-10:30 (1,800 s, inside online time): 27,000 s = 83.33 %.
    # submit_dossier (id scanner) and pay_fee (payment terminal) are not offered.
    assert set(journeys) == {
        "lookup_procedure",
        "check_status",
        "rate_service",
        "print_result",
        "queue_ticket",
    }
    assert journeys["lookup_procedure"]["available_seconds"] == 28_800
    assert journeys["print_result"]["available_seconds"] == 27_000
    assert journeys["print_result"]["functional_pct"] == pytest.approx(100 * 27_000 / 32_400)
    assert s["sessions"] == {"total": 2, "completed": 1, "abandoned": 1}
    assert s["sessions_today"] == {"total": 1, "completed": 1}
    peripherals = {p["peripheral"]: p for p in s["peripherals"]}
    assert peripherals["printer"]["state"] == "online" and peripherals["printer"]["paper"] == "full"
    assert peripherals["printer"]["usable"] is True
    assert peripherals["touchscreen"]["state"] == "busy" and peripherals["touchscreen"]["usable"] is True
    # The last heartbeat was days ago: offline now
    assert s["online"] is False and s["last_heartbeat"].startswith(str(day))

    # the default period is today (Hanoi day) up to now
    r = await client.get(f"/v1/kiosks/{kiosk}/status", headers=reader)
    assert r.status_code == 200 and r.json()["sessions"]["total"] == 1

    # the read scope is needed; a bad period and an unknown kiosk are named
    _, other = await issue_test_key(platform_pool, ["kiosk:ingest"], kind="gateway")
    r = await client.get(f"/v1/kiosks/{kiosk}/status", headers=auth(other))
    assert r.status_code == 403 and "kiosk:read" in r.json()["error"]["message"]
    assert (await client.get(f"/v1/kiosks/{kiosk}", headers=reader)).status_code == 403  # the registry: admin
    r = await client.get(
        f"/v1/kiosks/{kiosk}/status",
        headers=reader,
        params={"from": (now - timedelta(days=9)).isoformat()},
    )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "from"
    r = await client.get("/v1/kiosks/KS-none/status", headers=reader)
    assert r.status_code == 404


def test_the_status_folds_peripheral_changes_as_the_kpi_processor_does():
    """The status view's fold (``domain.fold_peripheral``) gives the KPI processor's down intervals and current
    state on random time-ordered changes (states, paper carried forward, repeats at one instant)."""
    import random

    from services.kiosk.domain import fold_peripheral
    from services.kiosk.processors import KioskKpiProcessor
    from shared.contracts.kiosk import PeripheralStatusChanged
    from shared.stream.processor import State
    from shared.testing import received

    rnd = random.Random(41)
    states = [
        "online",
        "busy",
        "offline",
        "power_off",
        "no_device",
        "hardware_error",
        "user_error",
        "fraud_attempt",
    ]
    base = datetime(2024, 5, 6, tzinfo=UTC).timestamp()
    for _ in range(50):
        t = base
        changes = []
        for _ in range(rnd.randint(1, 30)):
            t += rnd.choice([0, 0.5, 30, 600])
            peripheral = rnd.choice(["printer", "touchscreen"])
            paper = rnd.choice([None, "full", "low", "out", "jammed"]) if peripheral == "printer" else None
            changes.append((peripheral, t, rnd.choice(states), paper))
        proc = KioskKpiProcessor(heartbeat_timeout_s=180)
        st = State(0)
        for p, at_s, state, paper in changes:
            proc.apply(
                received(
                    PeripheralStatusChanged,
                    {
                        "kiosk_id": "K-F",
                        "peripheral": p,
                        "state": state,
                        "paper": paper,
                        "at": datetime.fromtimestamp(at_s, UTC).isoformat(),
                    },
                ),
                st,
            )
        dev = st.get("d:K-F") or {}
        for p in {c[0] for c in changes}:
            folded = fold_peripheral(p, [(a, s, paper) for q, a, s, paper in changes if q == p])
            want = dev[p]
            assert [tuple(iv) for iv in want["down"]] == folded.down
            assert (want["state"], want["paper"], want["fault"], want["since"]) == (
                folded.state,
                folded.paper,
                folded.fault,
                folded.since,
            )
