"""The dossier service through its HTTP API, the real PostgreSQL and the real broker."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.dossier import watcher
from services.dossier.app import create_app
from services.dossier.domain import calendar_from_csv, due_date_for
from services.dossier.settings import DossierSettings
from shared.config import KafkaSettings
from shared.contracts.dossier import LIFECYCLE_TOPIC
from shared.embedded.tansu import free_port
from shared.kafka.producer import EventPublisher
from shared.testing import auth, read_topic, running_app
from tests.areas import BA_DINH, BA_DINH_UNIT

pytestmark = pytest.mark.integration
TWO_TIER = Path(__file__).parent / "data" / "two_tier.csv"
SEED_2019 = Path(__file__).parents[2] / "shared" / "data" / "hanoi_admin_units_2019.csv"
LIFECYCLE = LIFECYCLE_TOPIC.name


def settings(kafka, db, **kw) -> DossierSettings:
    defaults = {
        "deadline_scan_seconds": 3600.0,
        "outbox_poll_seconds": 0.1,
        "outbox_max_backoff_seconds": 0.5,
    }
    return DossierSettings(kafka=kafka, database=db, **{**defaults, **kw})


def uid() -> str:
    return uuid.uuid4().hex[:8]


def applicant(n: str) -> dict:
    return {
        "name": f"Nguyễn Văn A{n}",
        "id_number": f"0010{int(n, 16) % 10**8:08d}",
        "address": f"Số {n} phố Synthetic, Ba Đình",
        "phone": f"09{int(n, 16) % 10**8:08d}",
    }


async def reference(client, admin_key, *, admin_unit=BA_DINH_UNIT, days=5, pauses=True, level="fully_online"):
    """A fresh procedure and agency; returns their codes."""
    s = uid()
    proc, agency = f"P{s}", f"AG{s}"
    r = await client.put(
        "/v1/procedures",
        headers=auth(admin_key),
        json={
            "items": [
                {
                    "code": proc,
                    "name": "Cấp giấy phép xây dựng",
                    "online_level": level,
                    "service_level": 4,
                    "processing_days": days,
                    "has_fees": True,
                    "pauses_clock": pauses,
                }
            ]
        },
    )
    assert r.status_code == 200, r.text
    r = await client.put(
        "/v1/agencies",
        headers=auth(admin_key),
        json={
            "items": [{"code": agency, "name": "UBND phường", "level": "commune", "admin_unit": admin_unit}]
        },
    )
    assert r.status_code == 200, r.text
    return proc, agency


async def keys(make_key, agency):
    _, admin = await make_key(["*"], kind="admin")
    _, agent = await make_key(["dossier:read", "dossier:write"], kind="agency", attributes={"agency": agency})
    return admin, agent


async def test_whole_life_through_the_api_with_events_history_and_audit(
    kafka_settings, db_settings, topics_ready, make_key, platform_pool
):
    app = create_app(settings(kafka_settings, db_settings))
    async with running_app(app) as client:
        _, admin = await make_key(["*"], kind="admin")
        proc, agency = await reference(client, admin)
        _, agent = await make_key(
            ["dossier:read", "dossier:write"], kind="agency", attributes={"agency": agency}
        )
        code = f"HS-{uid()}"
        person = applicant(code[3:])
        start = datetime.now(UTC) - timedelta(hours=2)
        r = await client.post(
            "/v1/dossiers",
            headers=auth(agent),
            json={
                "code": code,
                "procedure_code": proc,
                "agency_code": agency,
                "channel": "online",
                "applicant": person,
                "received": False,
                "at": start.isoformat(),
            },
        )
        assert r.status_code == 201, r.text
        assert r.json()["status"] == 1 and r.json()["due_date"] is None
        steps = [
            ("receive", {}),
            ("start_processing", {}),
            ("request_documents", {}),
            ("supply_documents", {}),
            ("request_fees", {}),
            ("pay_fees", {"paid_online": True}),
            ("resolve", {}),
            ("return_result", {}),
        ]
        statuses = []
        for i, (action, extra) in enumerate(steps):
            at = (start + timedelta(minutes=5 * (i + 1))).isoformat()
            if action == "resolve":
                h = await client.post(
                    f"/v1/dossiers/{code}/handovers",
                    headers=auth(agent),
                    json={"step_name": "Lãnh đạo phê duyệt", "at": at},
                )
                assert h.status_code == 200 and h.json()["step"] == 2
            r = await client.post(
                f"/v1/dossiers/{code}/transitions",
                headers=auth(agent),
                json={"action": action, "at": at, **extra},
            )
            assert r.status_code == 200, r.text
            statuses.append(r.json()["status"])
        assert statuses == [2, 4, 5, 4, 6, 4, 9, 10]
        body = r.json()
        # 5 working days from the legal day of receipt (after hours or on a day off: the next working day).
        expected_due = due_date_for(start + timedelta(minutes=5), 5, calendar_from_csv())
        assert body["due_date"] == expected_due.isoformat() and body["timeliness"] in ("early", "on_time")
        assert body["allowed_actions"] == []

        # An illegal transition: a result returned twice (the dossier is in status 10, not 9).
        r = await client.post(
            f"/v1/dossiers/{code}/transitions", headers=auth(agent), json={"action": "return_result"}
        )
        assert r.status_code == 409
        err = r.json()["error"]
        assert err["code"] == "illegal_transition"
        assert err["details"][0]["from_status"] == 10 and err["details"][0]["to_status"] == 10

        r = await client.get(f"/v1/dossiers/{code}", headers=auth(agent))
        assert r.status_code == 200
        got = r.json()
        assert got["applicant"] == person  # the owning agency sees its applicant
        assert [h["action"] for h in got["history"]] == [
            "submit",
            *[a for a, _ in steps[:6]],
            "hand_over",
            "resolve",
            "return_result",
        ]

    events = await read_topic(
        kafka_settings, LIFECYCLE, where=lambda e: e.data["dossier_code"] == code, expect=10
    )
    assert len(events) == 10
    assert [e.data["status"] for e in events if e.type == "ioc.dossier.status.changed.v1"] == [1, *statuses]
    assert [e.type for e in events].count("ioc.dossier.step.handed_over.v1") == 1
    assert all(e.source == "/ioc/dossier" and e.data["agency_code"] == agency for e in events)
    paid = [e for e in events if e.data.get("action") == "pay_fees"]
    assert paid[0].data["paid_online"] is True
    audit = await platform_pool.fetch(
        "SELECT action FROM platform.audit_log WHERE target=$1 AND detail->>'agency'=$2 ORDER BY id",
        code,
        agency,
    )
    assert [a["action"] for a in audit][-1] == "dossier.return_result" and len(audit) == 10


async def test_an_agency_cannot_see_or_touch_another_agencys_dossier(
    kafka_settings, db_settings, topics_ready, make_key
):
    app = create_app(settings(kafka_settings, db_settings))
    async with running_app(app) as client:
        _, admin = await make_key(["*"], kind="admin")
        proc, mine = await reference(client, admin)
        _, other = await reference(client, admin)
        _, me = await make_key(["dossier:read", "dossier:write"], kind="agency", attributes={"agency": mine})
        _, them = await make_key(
            ["dossier:read", "dossier:write"], kind="agency", attributes={"agency": other}
        )
        _, reader = await make_key(["dossier:read"], kind="agency", attributes={"agency": mine})
        code = f"HS-{uid()}"
        r = await client.post(
            "/v1/dossiers",
            headers=auth(me),
            json={
                "code": code,
                "procedure_code": proc,
                "agency_code": mine,
                "channel": "in_person",
                "applicant": applicant(code[3:]),
            },
        )
        assert r.status_code == 201 and r.json()["status"] == 2
        # The other agency: not found (its existence is not revealed), for reads and changes.
        assert (await client.get(f"/v1/dossiers/{code}", headers=auth(them))).status_code == 404
        r = await client.post(
            f"/v1/dossiers/{code}/transitions", headers=auth(them), json={"action": "resolve"}
        )
        assert r.status_code == 404
        listed = (await client.get("/v1/dossiers", headers=auth(them))).json()["items"]
        assert code not in [d["code"] for d in listed]
        # Recording a dossier for another agency is forbidden; reading needs dossier:read, writing dossier:write.
        r = await client.post(
            "/v1/dossiers",
            headers=auth(them),
            json={
                "code": f"HS-{uid()}",
                "procedure_code": proc,
                "agency_code": mine,
                "channel": "online",
                "applicant": applicant("abc"),
            },
        )
        assert r.status_code == 403 and r.json()["error"]["details"][0]["field"] == "agency_code"
        r = await client.post(
            f"/v1/dossiers/{code}/transitions", headers=auth(reader), json={"action": "resolve"}
        )
        assert r.status_code == 403
        assert (await client.get(f"/v1/dossiers/{code}", headers=auth(reader))).status_code == 200
        assert (await client.get(f"/v1/dossiers/{code}")).status_code == 401
        # The admin sees every agency's dossiers.
        assert (await client.get(f"/v1/dossiers/{code}", headers=auth(admin))).status_code == 200
        # The dossier is untouched.
        r = await client.get(f"/v1/dossiers/{code}", headers=auth(me))
        assert r.json()["status"] == 2 and len(r.json()["history"]) == 1


async def test_bad_input_gets_a_clear_error_without_echoing_personal_data(
    kafka_settings, db_settings, topics_ready, make_key
):
    app = create_app(settings(kafka_settings, db_settings))
    async with running_app(app) as client:
        _, admin = await make_key(["*"], kind="admin")
        proc, agency = await reference(client, admin)
        code = f"HS-{uid()}"
        bad = {**applicant("abc"), "id_number": "SECRET-ID-123"}
        r = await client.post(
            "/v1/dossiers",
            headers=auth(admin),
            json={
                "code": code,
                "procedure_code": proc,
                "agency_code": agency,
                "channel": "online",
                "applicant": bad,
            },
        )
        assert r.status_code == 422
        detail = r.json()["error"]["details"][0]
        assert detail["field"] == "id_number" and "SECRET-ID-123" not in r.text
        r = await client.post(
            "/v1/dossiers",
            headers=auth(admin),
            json={
                "code": code,
                "procedure_code": "NOPE",
                "agency_code": agency,
                "channel": "online",
                "applicant": applicant("abc"),
            },
        )
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "procedure_code"
        r = await client.put(
            "/v1/agencies",
            headers=auth(admin),
            json={"items": [{"code": "AG-X", "name": "x", "level": "commune", "admin_unit": "NOWHERE"}]},
        )
        assert r.status_code == 422 and r.json()["error"]["details"][0]["item"] == 0
        r = await client.post(f"/v1/dossiers/{code}/transitions", headers=auth(admin), json={"action": "fly"})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "action"
        ok = {
            "code": code,
            "procedure_code": proc,
            "agency_code": agency,
            "channel": "online",
            "applicant": applicant("abc"),
        }
        assert (await client.post("/v1/dossiers", headers=auth(admin), json=ok)).status_code == 201
        r = await client.post("/v1/dossiers", headers=auth(admin), json=ok)
        assert r.status_code == 409 and r.json()["error"]["code"] == "duplicate"
        # Same Idempotency-Key, same body: the first answer is replayed, nothing is applied twice.
        hdrs = {**auth(admin), "Idempotency-Key": uid()}
        first = await client.post(
            f"/v1/dossiers/{code}/transitions", headers=hdrs, json={"action": "start_processing"}
        )
        again = await client.post(
            f"/v1/dossiers/{code}/transitions", headers=hdrs, json={"action": "start_processing"}
        )
        assert (
            first.status_code == again.status_code == 200
            and again.headers.get("Idempotent-Replayed") == "true"
        )


async def test_no_personal_data_in_any_event_or_header(kafka_settings, db_settings, topics_ready, make_key):
    app = create_app(settings(kafka_settings, db_settings))
    code = f"HS-{uid()}"
    person = applicant(code[3:])
    async with running_app(app) as client:
        _, admin = await make_key(["*"], kind="admin")
        proc, agency = await reference(client, admin, days=1)
        at = (datetime.now(UTC) - timedelta(days=10)).isoformat()
        r = await client.post(
            "/v1/dossiers",
            headers=auth(admin),
            json={
                "code": code,
                "procedure_code": proc,
                "agency_code": agency,
                "channel": "postal",
                "applicant": person,
                "at": at,
            },
        )
        assert r.status_code == 201
        r = await client.post(
            f"/v1/dossiers/{code}/apologies",
            headers=auth(admin),
            json={"new_due_date": (date.today() + timedelta(days=7)).isoformat()},
        )
        assert r.status_code == 200, r.text
        await watcher.scan_once(app.state.dossier_service, 2)
    records = await read_topic(kafka_settings, LIFECYCLE, raw=True)
    mine = [r for r in records if r.key.endswith(b":" + code.encode())]  # key: <agency>:<code>
    assert {dict(r.headers)["ce_type"] for r in mine} == {
        b"ioc.dossier.status.changed.v1",
        b"ioc.dossier.apology.issued.v1",
        b"ioc.dossier.deadline.missed.v1",
    }
    secrets = [v.encode() for v in person.values()] + [b"Nguy"]
    for r in mine:
        blob = r.value + r.key + b"".join(k.encode() + v for k, v in r.headers)
        for s in secrets:
            assert s not in blob


async def test_deadline_watcher_warns_and_reports_overdue_once(
    kafka_settings, db_settings, topics_ready, make_key
):
    app = create_app(settings(kafka_settings, db_settings))
    async with running_app(app) as client:
        _, admin = await make_key(["*"], kind="admin")
        short, agency = await reference(client, admin, days=3)
        long_, _ = await reference(client, admin, days=10)
        late, soon, far = f"HS-{uid()}", f"HS-{uid()}", f"HS-{uid()}"
        # A working Monday at 09:00 in Hanoi, not the wall clock: received after 17:00, "soon" would count from
        # Tuesday and fall due on Friday, outside Monday's 3-working-day horizon (Thursday).
        now = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
        for code, proc, received in (
            (late, short, now - timedelta(days=20)),
            (soon, short, now),
            (far, long_, now),
        ):
            r = await client.post(
                "/v1/dossiers",
                headers=auth(admin),
                json={
                    "code": code,
                    "procedure_code": proc,
                    "agency_code": agency,
                    "channel": "online",
                    "applicant": applicant(code[3:]),
                    "at": received.isoformat(),
                },
            )
            assert r.status_code == 201
        svc = app.state.dossier_service
        # Horizon 3 working days: "soon" (due in 3) is warned, "far" (due in 10) is not, "late" is overdue.
        assert await watcher.scan_once(svc, 3, now) >= 2
        assert await watcher.scan_once(svc, 3, now) == 0  # once per due date
    events = await read_topic(
        kafka_settings,
        LIFECYCLE,
        expect=2,
        where=lambda e: e.data["dossier_code"] in (late, soon, far) and "deadline" in e.type,
    )
    by_code = {e.data["dossier_code"]: e for e in events}
    assert len(events) == 2 and far not in by_code
    assert by_code[late].type == "ioc.dossier.deadline.missed.v1" and by_code[late].data["days_overdue"] >= 13
    assert by_code[soon].type == "ioc.dossier.deadline.approached.v1"
    assert by_code[soon].data["working_days_left"] == 3


async def test_outbox_survives_a_broker_outage_without_loss_or_duplicates(
    kafka_settings, db_settings, topics_ready, make_key, platform_pool
):
    dead = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    app = create_app(settings(dead, db_settings, create_topics=False))
    async with running_app(app) as client:
        _, admin = await make_key(["*"], kind="admin")
        proc, agency = await reference(client, admin)
        codes = [f"HS-{uid()}" for _ in range(3)]
        for code in codes:
            r = await client.post(
                "/v1/dossiers",
                headers=auth(admin),
                json={
                    "code": code,
                    "procedure_code": proc,
                    "agency_code": agency,
                    "channel": "online",
                    "applicant": applicant(code[3:]),
                },
            )
            assert r.status_code == 201, r.text  # committed to PostgreSQL with its event: accepted
            for action in ("start_processing", "resolve"):
                r = await client.post(
                    f"/v1/dossiers/{code}/transitions", headers=auth(admin), json={"action": action}
                )
                assert r.status_code == 200
        rows = await platform_pool.fetch(
            "SELECT event_id FROM dossier.outbox WHERE key = ANY($1::bytea[])",
            [f"{agency}:{c}".encode() for c in codes],  # the record key is the dossier id
        )
        ids = {r["event_id"] for r in rows}
        assert len(ids) == 9
        await asyncio.sleep(1.0)  # the relay keeps trying against the dead broker
        state = await app.state.dossier_service.outbox.state(list(ids))
        assert not any(state.values())
        assert REGISTRY.get_sample_value("ioc_outbox_backlog_events", {"service": "dossier"}) >= 9
        # The broker is back: the relay publishes the backlog.
        app.state.ctx.publisher = EventPublisher(kafka_settings, client_id="ioc-dossier")
        for _ in range(100):
            state = await app.state.dossier_service.outbox.state(list(ids))
            if all(state.values()):
                break
            await asyncio.sleep(0.1)
        assert all(state.values())
    events = await read_topic(
        kafka_settings, LIFECYCLE, where=lambda e: e.data["dossier_code"] in codes, expect=9
    )
    assert {e.id for e in events} == ids  # nothing lost; dedup on id leaves exactly one of each
    for code in codes:
        assert [e.data["status"] for e in events if e.data["dossier_code"] == code] == [
            2,
            4,
            9,
        ]  # order kept per dossier


async def test_hierarchy_as_data_three_tier_seed_and_two_tier(
    kafka_settings, db_settings, topics_ready, make_key
):
    # the 2019 seed (three levels: a commune's district is its parent), the loaded hierarchy (the two-tier one of
    # 2025 by default) and a generic two-tier CSV: a commune-level unit directly under the city is its own top
    # area, the ``district`` events and KPIs carry (shared/areas.py)
    for hierarchy, unit, district in (
        (str(SEED_2019), "BD-01", "BD"),
        ("", BA_DINH_UNIT, BA_DINH),
        (str(TWO_TIER), "HN-X001", "HN-X001"),
    ):
        app = create_app(settings(kafka_settings, db_settings, hierarchy_csv=hierarchy))
        async with running_app(app) as client:
            _, admin = await make_key(["*"], kind="admin")
            proc, agency = await reference(client, admin, admin_unit=unit)
            listed = {
                a["code"]: a for a in (await client.get("/v1/agencies", headers=auth(admin))).json()["items"]
            }
            assert listed[agency]["district"] == district
            r = await client.post(
                "/v1/dossiers",
                headers=auth(admin),
                json={
                    "code": f"HS-{uid()}",
                    "procedure_code": proc,
                    "agency_code": agency,
                    "channel": "online",
                    "applicant": applicant("abc"),
                },
            )
            assert (
                r.status_code == 201 and r.json()["admin_unit"] == unit and r.json()["district"] == district
            )
            # a unit of the other structure is unknown here
            other = "BD-01" if unit == "HN-X001" else "HN-X001"
            r = await client.put(
                "/v1/agencies",
                headers=auth(admin),
                json={
                    "items": [{"code": f"AG{uid()}", "name": "x", "level": "commune", "admin_unit": other}]
                },
            )
            assert r.status_code == 422
