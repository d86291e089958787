"""The incident workflow through the real broker and PostgreSQL: filters, assign/reassign, comments without
personal data, the SOP checklist in order, the clear gate and a supervisor's override, escalation and shelf
expiry driven by an injected clock, and the audit history of every action."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.city.app import create_app
from services.city.settings import CitySettings
from shared.contracts.cloudevents import encode
from shared.kafka import EventPublisher
from shared.testing import auth, issue_test_key, running_app

from .conftest import KPI_FILE
from .test_api import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def city(test_domain, kafka_settings, db_settings, topics_ready, platform_pool):
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-inc-{uuid.uuid4().hex[:8]}",
        incident_escalation_interval_seconds=0.2,
    )
    app = create_app(settings)
    pub = EventPublisher(kafka_settings, client_id="city-inc-test")
    async with running_app(app) as client:
        pool = app.state.ctx.pool
        keys = {}
        # scopes as the console's roles hold them (a supervisor also supervises)
        for role in ("supervisor", "operator", "leader"):
            scopes = ["city:read", "city:operate"] + (["city:supervise"] if role == "supervisor" else [])
            keys[role] = await issue_test_key(pool, scopes, kind="operator", attributes={"role": role})
        keys["operator2"] = await issue_test_key(
            pool, ["city:read", "city:operate"], kind="operator", attributes={"role": "operator"}
        )
        yield client, pub, app, keys
    await pub.stop()


def _alarm(alarm_et, district, domain, alarm_type, source, severity, at, commune=None, state="raised"):
    return encode(
        alarm_et,
        {
            "alarm_id": f"{domain}:{alarm_type}:{source}",
            "domain": domain,
            "alarm_type": alarm_type,
            "state": state,
            "severity": severity,
            "source_id": source,
            "district": district,
            "commune": commune,
            "at": at.isoformat(),
            "message": f"{alarm_type} at {source}",
        },
        source="/ioc/test",
    )


async def _incident(client, headers, district, alarms: int):
    async def found():
        r = await client.get("/v1/incidents", params={"area": district, "state": "all"}, headers=headers)
        items = [i for i in r.json()["items"] if len(i["alarms"]) == alarms]
        return items[0] if items else None

    return await eventually(found)


async def test_an_incident_goes_assign_comment_sop_clear_and_every_step_is_audited(city, test_domain):
    client, pub, _, keys = city
    _, alarm_et = test_domain
    tag = uuid.uuid4().hex[:6]
    district, commune = f"T{tag}", f"C{tag}"
    now = datetime.now(UTC) - timedelta(minutes=1)
    sup_id, sup = keys["supervisor"]
    op_id, op = keys["operator"]
    op2_id, op2 = keys["operator2"]
    _, leader = keys["leader"]
    await pub.publish(
        [
            _alarm(alarm_et, district, "meter", "feeder_outage", f"F-{tag}", "critical", now),
            _alarm(alarm_et, district, "kiosk", "kiosk_offline", f"K-{tag}", "minor", now, commune=commune),
        ]
    )
    inc = await _incident(client, auth(leader), district, 2)
    iid = inc["incident_id"]
    assert (inc["severity"], inc["procedure_id"], inc["assignee"], inc["escalation_level"]) == (
        "critical",
        "power-outage",
        None,
        0,
    )

    async def listed(**params):
        r = await client.get("/v1/incidents", params={"state": "all", **params}, headers=auth(op2))
        assert r.status_code == 200, r.text
        return iid in {i["incident_id"] for i in r.json()["items"]}

    # filters: domain, severity, area (the district or a commune of its alarms), state, assignee
    assert (
        await listed(domain="meter") and await listed(domain="kiosk") and not await listed(domain="dossier")
    )
    assert await listed(severity="critical") and not await listed(severity="minor")
    assert await listed(area=commune) and await listed(district=district) and not await listed(area="X" + tag)
    assert await listed(state="unacknowledged") and not await listed(state="acknowledged")
    assert await listed(assignee="none") and not await listed(assignee=op_id)
    r = await client.get("/v1/incidents", params={"severity": "urgent"}, headers=auth(op))
    assert r.status_code == 422

    # assign: a supervisor's action, to someone who works incidents
    path = f"/v1/incidents/{iid}"
    r = await client.post(path + "/assign", json={"assignee": op_id}, headers=auth(op))
    assert r.status_code == 403 and "city:supervise" in r.json()["error"]["message"]
    r = await client.post(path + "/assign", json={"assignee": keys["leader"][0]}, headers=auth(sup))
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "assignee"
    r = await client.post(path + "/assign", json={"assignee": "nobody-" + tag}, headers=auth(sup))
    assert r.status_code == 422
    r = await client.post(path + "/assign", json={"assignee": op_id}, headers=auth(sup))
    assert r.status_code == 200, r.text
    assert await listed(assignee=op_id) and not await listed(assignee="none")
    r = await client.post(path + "/assign", json={"assignee": op_id}, headers=auth(sup))
    assert r.status_code == 409
    r = await client.post(path + "/assign", json={"assignee": op2_id}, headers=auth(sup))
    assert r.status_code == 200 and r.json()["action"] == "incident.reassign"
    assert await listed(assignee="me")  # op2's own

    # comments: operators, no citizen personal data (refused without echoing it)
    r = await client.post(path + "/comments", json={"text": "crew on the way"}, headers=auth(leader))
    assert r.status_code == 403
    r = await client.post(
        path + "/comments", json={"text": "caller 0912 345 678 reports smoke"}, headers=auth(op2)
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "personal_data"
    assert "0912" not in r.text and r.json()["error"]["details"][0]["field"] == "text"
    r = await client.post(
        path + "/comments", json={"text": "EVN crew on the way, ETA 20 min"}, headers=auth(op2)
    )
    assert r.status_code == 200, r.text

    # the procedure: in order; clearing waits for the mandatory steps
    r = await client.post(path + "/steps/notify-evn", headers=auth(op2))
    assert r.status_code == 409 and r.json()["error"]["details"] == [
        {"step": "notify-evn", "waiting_for": ["confirm-scope"]}
    ]
    assert (await client.post(path + "/steps/nonsense", headers=auth(op2))).status_code == 404
    for step in ("confirm-scope", "notify-evn"):
        r = await client.post(path + f"/steps/{step}", headers=auth(op2))
        assert r.status_code == 200, r.text
    r = await client.post(path + "/clear", headers=auth(op2))
    assert r.status_code == 409 and r.json()["error"]["details"][0]["missing_steps"] == ["confirm-restored"]
    # clearing its alarms one by one meets the same gate at the last one
    kiosk_id = f"kiosk:kiosk_offline:K-{tag}"
    assert (await client.post(f"/v1/alarms/{kiosk_id}/clear", headers=auth(op2))).status_code == 200
    r = await client.post(f"/v1/alarms/meter:feeder_outage:F-{tag}/clear", headers=auth(op2))
    assert r.status_code == 409
    assert (await client.post(path + "/steps/confirm-restored", headers=auth(op2))).status_code == 200

    detail = (await client.get(path, headers=auth(leader))).json()
    assert detail["assignee"] == op2_id and detail["missing_mandatory_steps"] == []
    steps = {s["id"]: s for s in detail["procedure"]["steps"]}
    assert steps["notify-evn"]["done_by"] == op2_id and steps["traffic-police"]["done_by"] is None
    assert [(c["author"], c["text"]) for c in detail["comments"]] == [
        (op2_id, "EVN crew on the way, ETA 20 min")
    ]
    assert detail["comments"][0]["at"]

    r = await client.post(path + "/clear", headers=auth(op2))
    assert r.status_code == 200 and len(r.json()["alarms"]) == 1
    detail = (await client.get(path, headers=auth(leader))).json()
    assert detail["state"] == "closed"
    assert (await client.post(path + "/steps/inform-public", headers=auth(op2))).status_code == 409

    history = (await client.get(path + "/history", headers=auth(leader))).json()["items"]
    assert [(h["principal"], h["action"]) for h in history] == [
        (sup_id, "incident.assign"),
        (sup_id, "incident.reassign"),
        (op2_id, "incident.comment"),
        (op2_id, "incident.sop_step"),
        (op2_id, "incident.sop_step"),
        (op2_id, "alarm.clear"),  # the kiosk alarm on its own
        (op2_id, "incident.sop_step"),
        (op2_id, "alarm.clear"),
        (op2_id, "incident.clear"),
    ]
    assert history[1]["detail"]["from"] == op_id and history[1]["detail"]["to"] == op2_id
    assert [h["detail"].get("step") for h in history if h["action"] == "incident.sop_step"] == [
        "confirm-scope",
        "notify-evn",
        "confirm-restored",
    ]
    assert all(h["at"] for h in history)
    assert (await client.get("/v1/incidents/INC-none/history", headers=auth(leader))).status_code == 404


async def test_a_supervisor_clears_before_the_procedure_with_a_reason(city, test_domain):
    client, pub, _, keys = city
    _, alarm_et = test_domain
    tag = uuid.uuid4().hex[:6]
    sup_id, sup = keys["supervisor"]
    _, op = keys["operator"]
    await pub.publish(
        [_alarm(alarm_et, f"T{tag}", "traffic", "comm_loss", f"I-{tag}", "major", datetime.now(UTC))]
    )
    inc = await _incident(client, auth(op), f"T{tag}", 1)
    path = f"/v1/incidents/{inc['incident_id']}"
    assert inc["procedure_id"] == "traffic-signal"
    r = await client.post(
        path + "/clear-override", json={"reason": "crew already fixed it"}, headers=auth(op)
    )
    assert r.status_code == 403
    r = await client.post(path + "/clear", headers=auth(sup))
    assert r.status_code == 409 and "clear-override" in r.json()["error"]["message"]
    r = await client.post(path + "/clear-override", json={"reason": ""}, headers=auth(sup))
    assert r.status_code == 422
    r = await client.post(
        path + "/clear-override",
        json={"reason": "crew fixed it before the alarm reached us"},
        headers=auth(sup),
    )
    assert r.status_code == 200 and len(r.json()["alarms"]) == 1, r.text
    history = (await client.get(path + "/history", headers=auth(op))).json()["items"]
    last = history[-1]
    assert (last["principal"], last["action"]) == (sup_id, "incident.clear_override")
    assert last["detail"]["reason"] == "crew fixed it before the alarm reached us"
    assert last["detail"]["missing_steps"] == ["verify-camera", "dispatch-crew", "confirm-normal"]


async def test_escalation_rises_with_the_injected_clock_until_acknowledged(city, test_domain):
    client, pub, app, keys = city
    _, alarm_et = test_domain
    tag = uuid.uuid4().hex[:6]
    _, op = keys["operator"]
    service = app.state.incident_service
    raised = datetime.now(UTC) - timedelta(minutes=1)
    await pub.publish([_alarm(alarm_et, f"T{tag}", "meter", "feeder_outage", f"F-{tag}", "critical", raised)])
    inc = await _incident(client, auth(op), f"T{tag}", 1)
    iid = inc["incident_id"]

    def mine(done):
        return [d for d in done if d["incident_id"] == iid]

    # critical: level 1 after 5 minutes unacknowledged, 2 after 15, 3 after 30 (incident_procedures.yaml)
    assert mine(await service.escalate(raised + timedelta(minutes=4, seconds=59))) == []
    (first,) = mine(await service.escalate(raised + timedelta(minutes=5)))
    assert (first["from"], first["to"]) == (0, 1)
    assert mine(await service.escalate(raised + timedelta(minutes=6))) == []  # once per level

    # the background task reads the injected clock
    original = service.clock
    service.clock = lambda: raised + timedelta(minutes=16)
    try:

        async def level_two():
            r = await client.get(f"/v1/incidents/{iid}", headers=auth(op))
            return r.json() if r.json()["escalation_level"] == 2 else None

        detail = await eventually(level_two)
    finally:
        service.clock = original
    assert detail["escalation_name"] == {"vi": "Trực lãnh đạo trung tâm", "en": "Duty manager"}

    # acknowledged: the climb stops, the level reached stays
    assert (await client.post(f"/v1/incidents/{iid}/acknowledge", headers=auth(op))).status_code == 200
    assert mine(await service.escalate(raised + timedelta(hours=2))) == []
    assert (await client.get(f"/v1/incidents/{iid}", headers=auth(op))).json()["escalation_level"] == 2
    history = (await client.get(f"/v1/incidents/{iid}/history", headers=auth(op))).json()["items"]
    escalations = [h for h in history if h["action"] == "incident.escalate"]
    assert [(h["principal"], h["detail"]["from"], h["detail"]["to"]) for h in escalations] == [
        ("system:escalation", 0, 1),
        ("system:escalation", 1, 2),
    ]


async def test_a_shelved_alarm_returns_by_itself_when_its_shelf_expires(city, test_domain):
    client, pub, app, keys = city
    _, alarm_et = test_domain
    tag = uuid.uuid4().hex[:6]
    _, op = keys["operator"]
    alarm_id = f"kiosk:kiosk_offline:K-{tag}"
    await pub.publish(
        [_alarm(alarm_et, f"T{tag}", "kiosk", "kiosk_offline", f"K-{tag}", "minor", datetime.now(UTC))]
    )
    await _incident(client, auth(op), f"T{tag}", 1)
    r = await client.post(
        f"/v1/alarms/{alarm_id}/shelve", json={"minutes": 5, "reason": "ward informed"}, headers=auth(op)
    )
    assert r.status_code == 200, r.text
    until = datetime.fromisoformat(r.json()["shelved_until"].replace("Z", "+00:00"))

    async def shelved():
        r = await client.get(
            "/v1/alarms", params={"state": "shelved", "district": f"T{tag}"}, headers=auth(op)
        )
        return [a for a in r.json()["items"] if a["alarm_id"] == alarm_id]

    assert await shelved()
    service = app.state.incident_service
    assert alarm_id not in await service.expire_shelves(until - timedelta(seconds=1))
    assert alarm_id in await service.expire_shelves(until)
    assert await shelved() == []
    r = await client.get("/v1/alarms", params={"state": "open", "district": f"T{tag}"}, headers=auth(op))
    (row,) = [a for a in r.json()["items"] if a["alarm_id"] == alarm_id]
    assert (row["shelved_until"], row["shelved_by"]) == (None, None)
    audit = await app.state.ctx.pool.fetch(
        "SELECT principal, action FROM platform.audit_log WHERE target=$1 ORDER BY id", alarm_id
    )
    assert [tuple(a) for a in audit][-1] == ("system:shelf-expiry", "alarm.shelf_expired")


async def test_procedures_and_assignees_are_served(city):
    client, _, _, keys = city
    _, op = keys["operator"]
    body = (await client.get("/v1/incident-procedures", headers=auth(op))).json()
    assert body["items"][-1]["id"] == "default"
    assert body["escalation"]["minutes"]["critical"] == [5, 15, 30]
    people = (await client.get("/v1/incident-assignees", headers=auth(op))).json()["items"]
    roles = {p["id"]: p["role"] for p in people}
    assert roles[keys["operator"][0]] == "operator" and keys["leader"][0] not in roles
