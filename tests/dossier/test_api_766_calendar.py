"""Through the API with the real PostgreSQL and broker: Decision 766 facts and scorecards, office hours, the
calendar alarm, and what a newly decided day off does to open dossiers (issue #37)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from services.dossier import watcher
from services.dossier.app import create_app
from services.dossier.domain import calendar_from_csv, local_date
from shared.calendar import DECISIONS_CSV
from shared.testing import auth, read_topic, running_app
from tests.areas import BA_DINH_UNIT
from tests.dossier.test_api import applicant, keys, reference, settings, uid

pytestmark = pytest.mark.integration


async def new_dossier(client, agent, proc, agency, **kw):
    code = f"HS-{uid()}"
    r = await client.post(
        "/v1/dossiers",
        headers=auth(agent),
        json={
            "code": code,
            "procedure_code": proc,
            "agency_code": agency,
            "channel": "online",
            "applicant": applicant(code[3:]),
            **kw,
        },
    )
    assert r.status_code == 201, r.text
    return code, r.json()


async def test_766_facts_and_scorecard_through_the_api(kafka_settings, db_settings, topics_ready, make_key):
    app = create_app(settings(kafka_settings, db_settings))
    async with running_app(app) as client:
        _, admin_key = await make_key(["*"], kind="admin")
        proc, agency = await reference(client, admin_key, days=10)
        admin, agent = await keys(make_key, agency)
        now = datetime.now(UTC) - timedelta(minutes=30)
        code, body = await new_dossier(client, agent, proc, agency, digitised=True, at=now.isoformat())
        assert body["digitised"] is True
        # feedback: an "unsatisfied" rating; a complaint without a rating; a bad rating is refused by name
        r = await client.post(
            f"/v1/dossiers/{code}/feedback", headers=auth(agent), json={"rating": "unsatisfied"}
        )
        assert r.status_code == 200 and r.json()["rating"] == "unsatisfied", r.text
        r = await client.post(f"/v1/dossiers/{code}/feedback", headers=auth(agent), json={"rating": "meh"})
        assert r.status_code == 422 and "rating" in r.text
        # status 2 synchronised 10 minutes after it happened: on time (within 24 h)
        r = await client.post(
            f"/v1/dossiers/{code}/portal-syncs",
            headers=auth(agent),
            json={"synced_status": 2, "status_at": now.isoformat(), "synced_at": (now + timedelta(minutes=10)).isoformat()},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        r = await client.post(
            f"/v1/dossiers/{code}/transitions",
            headers=auth(agent),
            json={
                "action": "resolve",
                "result_esigned": True,
                "at": (now + timedelta(minutes=20)).isoformat(),
            },
        )
        assert r.status_code == 200 and r.json()["result_esigned"] is True, r.text
        # e-signed is recorded on resolve / return only: a clear error otherwise
        r = await client.post(
            f"/v1/dossiers/{code}/transitions", headers=auth(agent), json={"action": "return_result", "digitised": True}
        )  # fmt: skip
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "digitised"

        period = local_date(now).strftime("%Y-%m")
        # An outside input with an unknown indicator is refused by item and field; a valid one is kept.
        r = await client.put(
            "/v1/index766/inputs",
            headers=auth(admin),
            json={"items": [{"scope_level": "agency", "scope_code": agency, "period": period,
                             "indicator": "progress_on_time", "numerator": 1, "denominator": 1, "source": "x"}]},
        )  # fmt: skip
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "indicator"
        r = await client.put(
            "/v1/index766/inputs",
            headers=auth(admin),
            json={"items": [{"scope_level": "agency", "scope_code": agency, "period": period,
                             "indicator": "procedures_published_on_time", "numerator": 3, "denominator": 4,
                             "source": "national procedures database, monthly report"}]},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        r = await client.get("/v1/index766", headers=auth(agent), params={"period": period})
        assert r.status_code == 200, r.text
        (card,) = r.json()["items"]  # an agency sees only its own scorecard
        assert (card["scope_level"], card["scope_code"]) == ("agency", agency)
        ind = card["indicators"]
        # One dossier, received, digitised, synchronised on time, resolved early with an e-signed result, rated
        # unsatisfied: digitised 4 × 1/1, synced 6 × 1/1, e-results 6 × 1/1, progress 20 × 1/1, satisfaction
        # 6 × 0/1, fully online 12 × 1/1 (online channel), online payment 10 × 0/1 (fees, not paid online),
        # procedures published 4 × 3/4 = 3.
        assert ind["dossiers_digitised"] == 4.0 and ind["status_synced_on_time"] == 6.0
        assert ind["electronic_results"] == 6.0 and ind["progress_on_time"] == 20.0
        assert ind["dossier_satisfaction"] == 0.0 and ind["fully_online"] == 12.0
        assert ind["online_payment"] == 0.0 and ind["procedures_published_on_time"] == 3.0
        assert ind["feedback_handled_on_time"] is None  # not given: no made-up value
        assert card["total"] == pytest.approx(4 + 6 + 6 + 20 + 12 + 3)


async def test_office_hours_per_agency(kafka_settings, db_settings, topics_ready, make_key):
    app = create_app(settings(kafka_settings, db_settings))
    async with running_app(app) as client:
        _, admin = await make_key(["*"], kind="admin")
        bad = {"code": f"AG{uid()}", "name": "x", "level": "commune", "admin_unit": BA_DINH_UNIT,
               "office_open": "17:00", "office_close": "08:00"}  # fmt: skip
        r = await client.put("/v1/agencies", headers=auth(admin), json={"items": [bad]})
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "office_close"
        ok = {**bad, "office_open": "07:30", "office_close": "17:30"}
        r = await client.put("/v1/agencies", headers=auth(admin), json={"items": [ok]})
        assert r.status_code == 200, r.text
        r = await client.get("/v1/agencies", headers=auth(admin))
        mine = [a for a in r.json()["items"] if a["code"] == ok["code"]]
        assert mine[0]["office_open"] == "07:30" and mine[0]["office_close"] == "17:30"


async def test_calendar_alarm_follows_the_confirmed_horizon(kafka_settings, db_settings, topics_ready):
    app = create_app(settings(kafka_settings, db_settings, calendar_horizon_days=90))
    async with running_app(app):
        svc = app.state.dossier_service
        # Confirmed through 31 Dec 2026 (shared/data/calendar_vn_decisions.csv): on 7 Dec 2026 only 24 days ahead
        # (< 90: raised, Tết 2027 undecided), on 1 Sep 2026 121 days (cleared).
        await watcher.check_calendar(svc, 90, now=datetime(2026, 12, 7, 3, tzinfo=UTC))
        assert await watcher.check_calendar(svc, 90, now=datetime(2026, 9, 1, 3, tzinfo=UTC)) == "cleared"
        assert await watcher.check_calendar(svc, 90, now=datetime(2026, 12, 7, 3, tzinfo=UTC)) == "raised"
        alarms = await read_topic(
            kafka_settings,
            "ioc.dossier.alarms",
            where=lambda e: (
                e.data["alarm_id"] == "dossier:calendar_unconfirmed:city"
                and e.data["at"].startswith("2026-09-01")
            ),
            expect=1,
        )
        assert alarms[-1].data["state"] == "cleared"
        assert REGISTRY.get_sample_value("ioc_calendar_unconfirmed", {"service": "dossier"}) == 1.0
        ahead = REGISTRY.get_sample_value("ioc_calendar_confirmed_ahead_seconds", {"service": "dossier"})
        assert ahead == 24 * 86400.0  # 31 Dec - 7 Dec 2026


async def test_a_newly_decided_day_off_moves_open_due_dates_with_history(
    kafka_settings, db_settings, topics_ready, make_key, tmp_path
):
    app = create_app(settings(kafka_settings, db_settings))
    async with running_app(app) as client:
        _, admin_key = await make_key(["*"], kind="admin")
        # 300 working days: due well after every other test's dossiers (the change touches only this one)
        proc, agency = await reference(client, admin_key, days=300)
        _, agent = await keys(make_key, agency)
        code, body = await new_dossier(client, agent, proc, agency)
        due = date.fromisoformat(body["due_date"])
    cal = calendar_from_csv()
    # The government decides a new day off: the working day before the due date.
    new_off = due - timedelta(days=1)
    while not cal.is_working_day(new_off):
        new_off -= timedelta(days=1)
    # One working day fewer before the due date: it moves to the next working day after it.
    expected = cal.next_working_day(due)
    csv_path = tmp_path / "decisions.csv"
    csv_path.write_text(
        DECISIONS_CSV.read_text(encoding="utf-8")
        + f"{new_off.isoformat()},day_off,Nghỉ bổ sung (test),test decision,no\n",
        encoding="utf-8",
    )
    app = create_app(settings(kafka_settings, db_settings, calendar_csv=str(csv_path)))
    async with running_app(app) as client:
        r = await client.get(f"/v1/dossiers/{code}", headers=auth(agent))
        got = r.json()
        assert got["due_date"] == expected.isoformat()
        moves = [h for h in got["history"] if h["action"] == "reschedule"]
        assert len(moves) == 1
        assert moves[0]["detail"]["old_due_date"] == due.isoformat()
        assert moves[0]["detail"]["new_due_date"] == expected.isoformat()
    # Back on the shipped calendar the due date never moves earlier (the receipt slip's date stands).
    app = create_app(settings(kafka_settings, db_settings))
    async with running_app(app) as client:
        r = await client.get(f"/v1/dossiers/{code}", headers=auth(agent))
        assert r.json()["due_date"] == expected.isoformat()
