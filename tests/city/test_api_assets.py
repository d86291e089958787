"""Drill-down, multi-series history and daily report through the real broker and database: assets in alarm are
assets (not KPI breaches), an asset page holds its alarms and their history, several series come back on one
time base with the KPI's threshold levels, and the daily report takes one Hanoi day."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from services.city import publishing
from services.city.app import create_app
from services.city.settings import CitySettings
from shared.areas import hanoi
from shared.contracts.cloudevents import encode
from shared.embedded import free_port
from shared.kafka import EventPublisher
from shared.testing import auth, issue_test_key, running_app
from tests.areas import BA_DINH, BA_DINH_UNIT, CAU_GIAY, area, top_codes

from .conftest import KPI_FILE
from .test_api import eventually

pytestmark = pytest.mark.integration
HANOI = timezone(timedelta(hours=7))
TAY_HO = area("TH")


@pytest.fixture(scope="module")
async def city(test_domain, kafka_settings, db_settings, topics_ready):
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-assets-{uuid.uuid4().hex[:8]}",
        # nothing listens here: the kiosk page says the kiosk service did not answer
        kiosk_url=f"http://127.0.0.1:{free_port()}",
    )
    app = create_app(settings)
    pub = EventPublisher(kafka_settings, client_id="city-assets-test")
    async with running_app(app) as client:
        _, key = await issue_test_key(app.state.ctx.pool, ["city:read"], kind="operator")
        yield client, pub, key
    await pub.stop()


def alarm(alarm_et, domain, alarm_type, source, district, severity, at, state="raised", message=None):
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
            "commune": None,
            "at": at.isoformat(),
            "message": message or f"{alarm_type} of {source}",
        },
        source="/ioc/test",
    )


def kpi(kpi_id, code, start, value, window=900, status="ok"):
    return publishing.kpi_updated(
        kpi=kpi_id,
        domain="citytest",
        scope_level="city" if code == "HN" else "district",
        scope_code=code,
        window_start=start.isoformat(),
        window_seconds=window,
        value=value,
        numerator=value,
        denominator=1.0,
        unit="ratio",
        status=status,
        target=0.98,
        partitions=1,
        now=datetime.now(UTC),
    )


async def test_area_and_asset_pages_list_assets_with_their_alarms_and_history(test_domain, city):
    client, pub, key = city
    _, alarm_et = test_domain
    kiosk, feeder = f"K-{uuid.uuid4().hex[:6]}", f"F-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    await pub.publish(
        [
            alarm(alarm_et, "kiosk", "kiosk_offline", kiosk, CAU_GIAY, "major", now - timedelta(minutes=2)),
            alarm(alarm_et, "kiosk", "paper_out", kiosk, CAU_GIAY, "minor", now - timedelta(minutes=1)),
            # (the meter service's own wording: the page reads the count from it)
            alarm(
                alarm_et,
                "meter",
                "feeder_outage",
                feeder,
                CAU_GIAY,
                "critical",
                now - timedelta(minutes=90),
                message="feeder outage: 12 of 40 meters without supply",
            ),
            # a KPI breach of the area: not an asset
            alarm(
                alarm_et, "city", "kpi_breach", f"citytest.availability:{CAU_GIAY}", CAU_GIAY, "critical", now
            ),
        ]
    )

    async def assets():
        body = (await client.get(f"/v1/areas/{CAU_GIAY}", headers=auth(key))).json()
        mine = [a for a in body["assets_in_alarm"] if a["asset_id"] in (kiosk, feeder)]
        return (body, mine) if len(mine) == 2 and mine[1]["open_alarms"] == 2 else None

    body, (first, second) = await eventually(assets)
    assert (first["kind"], first["asset_id"], first["severity"]) == ("feeder", feeder, "critical")
    assert (second["kind"], second["asset_id"], second["severity"]) == ("kiosk", kiosk, "major")
    assert sorted(second["alarm_types"]) == ["kiosk_offline", "paper_out"]
    assert second["href"] == f"#asset/kiosk/{kiosk}"
    assert not [a for a in body["assets_in_alarm"] if ":" in a["asset_id"]]  # no KPI breach among assets
    assert body["level"] == hanoi().top_level and body["name"] and body["status"] == "critical"
    listed = (await client.get("/v1/assets-in-alarm", params={"area": CAU_GIAY}, headers=auth(key))).json()
    assert [a["asset_id"] for a in listed["items"] if a["asset_id"] in (kiosk, feeder)] == [feeder, kiosk]
    r = await client.get("/v1/areas/XX-none", headers=auth(key))
    assert r.status_code == 404 and r.json()["error"]["details"] == [{"area": "XX-none"}]
    assert (await client.get(f"/v1/areas/{CAU_GIAY}")).status_code == 401

    # the kiosk's page: its two alarms, their history, its area; the kiosk service is down: said, not a 500
    await pub.publish([alarm(alarm_et, "kiosk", "paper_out", kiosk, CAU_GIAY, "minor", now, state="cleared")])

    async def page():
        p = (await client.get(f"/v1/assets/kiosk/{kiosk}", headers=auth(key))).json()
        return p if len(p["alarm_history"]) == 3 else None

    p = await eventually(page)
    assert (p["district"], p["status"], p["open_alarms"]) == (CAU_GIAY, "critical", 1)
    assert p["details"] is None and p["details_error"]["reason"] == "unavailable"
    assert [(h["alarm_type"], h["state"]) for h in p["alarm_history"]] == [
        ("paper_out", "cleared"),
        ("paper_out", "raised"),
        ("kiosk_offline", "raised"),
    ]
    assert {a["alarm_type"]: a["state"] for a in p["alarms"]} == {
        "kiosk_offline": "active",
        "paper_out": "cleared",
    }
    f = (await client.get(f"/v1/assets/feeder/{feeder}", headers=auth(key))).json()
    assert f["details"]["in_outage"] and (f["details"]["meters_without_supply"], f["details"]["meters"]) == (
        12,
        40,
    )
    (ongoing,) = f["details"]["interruptions"]
    assert ongoing["end"] is None and f["open_alarms"] == 1
    # the supply comes back after 90 minutes: one interruption of 90 minutes
    await pub.publish(
        [
            alarm(
                alarm_et,
                "meter",
                "feeder_outage",
                feeder,
                CAU_GIAY,
                "critical",
                now,
                state="cleared",
                message="feeder supply restored (0 of 40 meters still without supply)",
            )
        ]
    )

    async def restored():
        f = (await client.get(f"/v1/assets/feeder/{feeder}", headers=auth(key))).json()
        return f if not f["details"]["in_outage"] else None

    f = await eventually(restored)
    assert [i["minutes"] for i in f["details"]["interruptions"]] == [90.0]
    assert f["details"]["meters_without_supply"] is None  # the raise's count no longer holds
    r = await client.get("/v1/assets/bicycle/B1", headers=auth(key))
    assert r.status_code == 422
    r = await client.get("/v1/assets/kiosk/..%2F..", headers=auth(key))
    assert r.status_code in (404, 422)


async def test_several_areas_and_the_previous_period_on_one_chart_with_threshold_levels(city):
    client, pub, key = city
    # a day of its own (tests share the database): 10:00-11:00 UTC, and the hour before for the comparison
    day = datetime(2023, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(300))
    h10 = day.replace(hour=10)
    await pub.publish(
        [
            kpi("citytest.availability", "HN", h10, 0.97),
            kpi("citytest.availability", "HN", h10 + timedelta(minutes=15), 0.96),
            kpi("citytest.availability", CAU_GIAY, h10, 0.91, status="warning"),
            kpi("citytest.availability", "HN", h10 - timedelta(minutes=60), 0.99),
            kpi("citytest.availability", "HN", h10 - timedelta(minutes=45), 0.98),
        ]
    )
    params = [
        ("kpi", "citytest.availability"),
        ("scope", "HN"),
        ("scope", CAU_GIAY),
        ("from", h10.isoformat()),
        ("to", (h10 + timedelta(hours=1)).isoformat()),
        ("step", "raw"),
        ("compare", "previous"),
    ]

    async def loaded():
        body = (await client.get("/v1/history", params=params, headers=auth(key))).json()
        return body if len(body["rows"]) == 5 else None

    body = await eventually(loaded)
    assert body["thresholds"] == {"warning": 0.95, "critical": 0.9} and body["direction"] == "higher"
    assert [(s["scope_code"], s["period"], len(s["points"])) for s in body["series"]] == [
        ("HN", "current", 2),
        ("HN", "previous", 2),
        (CAU_GIAY, "current", 1),
        (CAU_GIAY, "previous", 0),
    ]
    previous = body["series"][1]
    # the previous hour is drawn over this one: 09:00 shown at 10:00
    assert [p["value"] for p in previous["points"]] == [0.99, 0.98]
    assert previous["points"][0]["t"].startswith(h10.replace(hour=9).isoformat()[:16])
    assert previous["points"][0]["shown_at"].startswith(h10.isoformat()[:16])
    # rows: every point of every series, which the chart's CSV export writes
    assert [(r["scope_code"], r["period"], r["value"]) for r in body["rows"]] == [
        ("HN", "current", 0.97),
        ("HN", "current", 0.96),
        ("HN", "previous", 0.99),
        ("HN", "previous", 0.98),
        (CAU_GIAY, "current", 0.91),
    ]
    bad = await client.get(
        "/v1/history", params=[("kpi", "citytest.availability"), ("scope", "NOPE")], headers=auth(key)
    )
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["value"] == "NOPE"
    many = [
        ("kpi", "citytest.availability"),
        *[("scope", c) for c in ("HN", *top_codes()[:8])],
    ]
    assert (await client.get("/v1/history", params=many, headers=auth(key))).status_code == 422
    assert (await client.get("/v1/history", params={"kpi": "no.such"}, headers=auth(key))).status_code == 404


async def test_daily_report_of_one_hanoi_day(test_domain, city):
    client, pub, key = city
    _, alarm_et = test_domain
    day = date(2022, 1, 1) + timedelta(days=random.randrange(300))
    midnight = datetime(
        day.year, day.month, day.day, tzinfo=HANOI
    )  # Hanoi midnight = 17:00 UTC the day before
    kiosk = f"K-{uuid.uuid4().hex[:6]}"
    await pub.publish(
        [
            # the day window (86400 s) of availability: city 0.97 (ok), CG 0.85 (critical: below 0.90)
            kpi("citytest.availability", "HN", midnight, 0.97, window=86400),
            kpi("citytest.availability", CAU_GIAY, midnight, 0.85, window=86400, status="critical"),
            # quarter hours of a KPI without a day window: the report takes their mean, (0.5 + 0.7) / 2 = 0.6
            kpi("citytest.peak_mw", BA_DINH, midnight + timedelta(hours=10), 0.5),
            kpi("citytest.peak_mw", BA_DINH, midnight + timedelta(hours=10, minutes=15), 0.7),
            # an alarm raised at noon Hanoi time that day, one the evening before (another day)
            alarm(
                alarm_et, "kiosk", "kiosk_offline", kiosk, BA_DINH, "major", midnight + timedelta(hours=12)
            ),
            alarm(alarm_et, "kiosk", "paper_out", kiosk, BA_DINH, "minor", midnight - timedelta(hours=2)),
        ]
    )

    async def loaded():
        r = (
            await client.get("/v1/reports/daily", params={"date": day.isoformat()}, headers=auth(key))
        ).json()
        return r if len(r["kpis"]) == 3 and r["alarms_total"] == 1 else None

    r = await eventually(loaded)
    rows = {(k["kpi"], k["scope_code"]): k for k in r["kpis"]}
    assert rows[("citytest.availability", "HN")]["value"] == 0.97
    assert rows[("citytest.availability", "HN")]["status"] == "ok"
    assert rows[("citytest.availability", CAU_GIAY)]["status"] == "critical"
    assert rows[("citytest.availability", CAU_GIAY)]["basis"] == "day_window"
    peak = rows[("citytest.peak_mw", BA_DINH)]
    assert peak["value"] == pytest.approx(0.6) and peak["basis"] == "mean_of_windows" and peak["windows"] == 2
    # 0.6 MW is above the 0.5 warning level of a "lower is better" KPI
    assert peak["status"] == "warning" and (peak["min"], peak["max"]) == (0.5, 0.7)
    assert r["alarms_by_domain"] == [{"domain": "kiosk", "raised": 1}]
    assert [(a["scope_code"], a["critical"], a["warning"], a["alarms"]) for a in r["worst_areas"]] == [
        (CAU_GIAY, 1, 0, 0),
        (BA_DINH, 0, 1, 1),
    ]
    assert r["from"].startswith(midnight.astimezone(UTC).isoformat()[:16])
    bad = await client.get("/v1/reports/daily", params={"date": "2026-13-01"}, headers=auth(key))
    assert bad.status_code == 422


async def test_an_agency_page_names_it_and_takes_its_766_scorecard_from_the_dossier_service(
    kafka_settings, db_settings, topics_ready
):
    """The city asks the dossier service (over HTTP, with the caller's key) for the agency and its Decision 766
    scorecard of this month; a key without dossier:read gets the city's part and the reason."""
    import httpx

    from services.dossier.app import create_app as create_dossier_app
    from tests.dossier.test_api import settings as dossier_settings

    from .conftest import serve

    dossier = create_dossier_app(dossier_settings(kafka_settings, db_settings))
    agency = f"AG{uuid.uuid4().hex[:8]}"
    async with serve(dossier, free_port()) as dossier_base:
        pool = dossier.state.ctx.pool
        _, admin = await issue_test_key(pool, ["*"], kind="admin")
        _, reader = await issue_test_key(pool, ["city:read", "dossier:read"], kind="operator")
        _, city_only = await issue_test_key(pool, ["city:read"], kind="operator")
        async with httpx.AsyncClient(base_url=dossier_base) as dc:
            r = await dc.put(
                "/v1/agencies",
                headers=auth(admin),
                json={
                    "items": [
                        {
                            "code": agency,
                            "name": "UBND phường",
                            "level": "commune",
                            "admin_unit": BA_DINH_UNIT,
                        }
                    ]
                },
            )
            assert r.status_code == 200, r.text
        city = create_app(
            CitySettings(
                kafka=kafka_settings,
                database=db_settings,
                kpi_definitions_path=str(KPI_FILE),
                consumer_group=f"city-agency-{uuid.uuid4().hex[:8]}",
                dossier_url=dossier_base,
            )
        )
        async with running_app(city) as client:
            p = (await client.get(f"/v1/assets/agency/{agency}", headers=auth(reader))).json()
            assert (p["details"]["name"], p["details"]["district"], p["district"]) == (
                "UBND phường",
                BA_DINH,
                BA_DINH,
            )
            assert p["details"]["period"] == datetime.now(HANOI).strftime("%Y-%m")
            assert "index766" in p["details"] and p["details_error"] is None
            p = (await client.get(f"/v1/assets/agency/{agency}", headers=auth(city_only))).json()
            assert p["details"] is None and p["details_error"]["reason"] == "forbidden"
            p = (await client.get("/v1/assets/agency/AG-none", headers=auth(reader))).json()
            assert p["details_error"]["reason"] == "not_found"


async def test_a_signed_in_operator_sees_the_agency_page_through_dossier_stats_but_no_dossier(
    kafka_settings, db_settings, topics_ready
):
    """Every console role holds ``dossier:stats`` (aggregates without personal data) and not ``dossier:read``:
    with the session the city forwards, the dossier service answers the agency list and the 766 scorecard
    (the agency page has its details) and refuses the dossiers themselves (403 naming the scope)."""
    import httpx

    from services.city.roles import ROLE_SCOPES
    from services.dossier.app import create_app as create_dossier_app
    from shared.auth import SESSION_COOKIE
    from tests.dossier.test_api import settings as dossier_settings

    from .auth_helpers import make_operator
    from .conftest import serve

    assert all(
        "dossier:stats" in s and "dossier:read" not in s and "dossier:*" not in s
        for s in ROLE_SCOPES.values()
    )
    dossier = create_dossier_app(dossier_settings(kafka_settings, db_settings))
    agency = f"AG{uuid.uuid4().hex[:8]}"
    async with serve(dossier, free_port()) as dossier_base:
        pool = dossier.state.ctx.pool
        _, admin = await issue_test_key(pool, ["*"], kind="admin")
        async with httpx.AsyncClient(base_url=dossier_base) as dc:
            r = await dc.put(
                "/v1/agencies",
                headers=auth(admin),
                json={
                    "items": [
                        {"code": agency, "name": "UBND xã", "level": "commune", "admin_unit": BA_DINH_UNIT}
                    ]
                },
            )
            assert r.status_code == 200, r.text
        city = create_app(
            CitySettings(
                kafka=kafka_settings,
                database=db_settings,
                kpi_definitions_path=str(KPI_FILE),
                consumer_group=f"city-agency-session-{uuid.uuid4().hex[:8]}",
                dossier_url=dossier_base,
            )
        )
        async with running_app(city) as client:
            username, password = await make_operator(city.state.ctx.pool, "leader")
            r = await client.post("/v1/session", json={"username": username, "password": password})
            assert r.status_code == 200, r.text
            session = {SESSION_COOKIE: client.cookies[SESSION_COOKIE]}
            p = (await client.get(f"/v1/assets/agency/{agency}")).json()
            assert p["details_error"] is None, p["details_error"]
            assert (p["details"]["name"], p["district"]) == ("UBND xã", BA_DINH)
            assert p["details"]["period"] == datetime.now(HANOI).strftime("%Y-%m")
        async with httpx.AsyncClient(base_url=dossier_base, cookies=session) as dc:
            assert (await dc.get("/v1/agencies")).status_code == 200
            period = datetime.now(HANOI).strftime("%Y-%m")
            assert (await dc.get("/v1/index766", params={"period": period})).status_code == 200
            refused = await dc.get("/v1/dossiers")
            assert refused.status_code == 403
            assert "dossier:read" in refused.json()["error"]["message"]
            assert (await dc.get(f"/v1/dossiers/{agency}-000")).status_code == 403


async def test_a_signed_in_operator_sees_a_kiosk_page_with_its_status_from_the_kiosk_service(
    kafka_settings, db_settings, topics_ready
):
    """Console roles hold ``kiosk:read``: the kiosk page takes the kiosk's status (registry facts without the
    gateway, peripherals, sessions today, availability today and over 7 days) from the kiosk service with the
    operator's session; the registry itself (``kiosk:admin``) stays refused."""
    import httpx

    from services.kiosk.app import create_app as create_kiosk_app
    from services.kiosk.settings import KioskSettings
    from shared.auth import SESSION_COOKIE

    from .auth_helpers import make_operator
    from .conftest import serve

    kiosk_app = create_kiosk_app(KioskSettings(kafka=kafka_settings, database=db_settings))
    kiosk = f"KC-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    async with serve(kiosk_app, free_port()) as kiosk_base:
        _, admin = await issue_test_key(
            kiosk_app.state.ctx.pool, ["kiosk:admin", "kiosk:ingest"], kind="admin"
        )
        async with httpx.AsyncClient(base_url=kiosk_base, headers=auth(admin)) as kc:
            r = await kc.put(
                f"/v1/kiosks/{kiosk}",
                json={
                    "building": "Trung tâm Phục vụ hành chính công",
                    "address": "258 Võ Chí Công",
                    "district": TAY_HO,
                    "opening_hours": [{"days": [1, 2, 3, 4, 5, 6, 7], "open": "00:00", "close": "23:59"}],
                    "peripherals": ["touchscreen", "printer"],
                    "software_version": "3.2.1",
                    "gateway": f"gw-{kiosk}",
                    "in_service_since": (now - timedelta(days=3)).isoformat(),
                },
            )
            assert r.status_code == 200, r.text
            r = await kc.post(
                "/v1/heartbeats",
                json={"items": [{"kiosk_id": kiosk, "at": now.isoformat(), "app_version": "3.2.1"}]},
            )
            assert r.status_code == 200, r.text
            r = await kc.post(
                "/v1/peripherals",
                json={
                    "items": [
                        {
                            "kiosk_id": kiosk,
                            "peripheral": "printer",
                            "state": "online",
                            "paper": "out",
                            "at": now.isoformat(),
                        }
                    ]
                },
            )
            assert r.status_code == 200, r.text
        city = create_app(
            CitySettings(
                kafka=kafka_settings,
                database=db_settings,
                kpi_definitions_path=str(KPI_FILE),
                consumer_group=f"city-kiosk-session-{uuid.uuid4().hex[:8]}",
                kiosk_url=kiosk_base,
            )
        )
        async with running_app(city) as client:
            username, password = await make_operator(city.state.ctx.pool, "operator")
            r = await client.post("/v1/session", json={"username": username, "password": password})
            assert r.status_code == 200, r.text
            session = {SESSION_COOKIE: client.cookies[SESSION_COOKIE]}
            r = await client.get(f"/v1/assets/kiosk/{kiosk}")
            p = r.json()
            assert p["details_error"] is None, p["details_error"]
            d = p["details"]
            assert (d["building"], p["district"], d["online"]) == (
                "Trung tâm Phục vụ hành chính công",
                TAY_HO,
                True,
            )
            assert "gateway_principal" not in d and f"gw-{kiosk}" not in r.text
            printer = next(x for x in d["peripheral_states"] if x["peripheral"] == "printer")
            assert (printer["paper"], printer["usable"], printer["fault"]) == ("out", False, "paper_out")
            assert d["sessions_today"] == {"total": 0}
            assert d["availability_today"]["scheduled_seconds"] > 0
            assert d["availability_7d"] is not None
            assert {j["journey"] for j in d["availability_today"]["journeys"]} >= {
                "print_result",
                "lookup_procedure",
            }
        async with httpx.AsyncClient(base_url=kiosk_base, cookies=session) as kc:
            assert (await kc.get(f"/v1/kiosks/{kiosk}/status")).status_code == 200
            assert (await kc.get(f"/v1/kiosks/{kiosk}")).status_code == 403


async def test_console_accounts_saved_before_get_the_asset_pages_read_scopes(platform_pool):
    """Migration 005_asset_data_scopes: an account stored with a role's former scopes gets dossier:stats and
    kiosk:read (as roles.py now grants); keys of other kinds are left alone."""
    from pathlib import Path

    from services.city.roles import ROLE_SCOPES

    old, machine = f"op-old-{uuid.uuid4().hex[:8]}", f"gw-{uuid.uuid4().hex[:8]}"
    await platform_pool.execute(
        "INSERT INTO platform.principals(id, kind, display_name, scopes, attributes) VALUES "
        "($1, 'operator', 'old', ARRAY['city:read', 'traffic:read'], '{\"role\": \"leader\"}'), "
        "($2, 'gateway', 'gw', ARRAY['kiosk:ingest'], '{}')",
        old,
        machine,
    )
    sql = (Path(__file__).parents[2] / "services/city/migrations/005_asset_data_scopes.sql").read_text()
    await platform_pool.execute(sql)
    await platform_pool.execute(sql)  # once more changes nothing
    got = dict(
        await platform_pool.fetch(
            "SELECT id, scopes FROM platform.principals WHERE id = ANY($1)", [old, machine]
        )
    )
    assert sorted(got[old]) == ["city:read", "dossier:stats", "kiosk:read", "traffic:read"]
    assert got[machine] == ["kiosk:ingest"]
    assert all({"dossier:stats", "kiosk:read"} <= set(s) for s in ROLE_SCOPES.values())
