"""Major Event Days by IEEE 1366-2012's 2.5β method (clause 4.5, Annex B) and the indices with and without
them: golden values worked out by hand here from the standard's text, then the same figures through the city
API from daily rows in ``kpi_day`` (real PostgreSQL).

The standard (4.5 / Annex B): collect the daily SAIDI of the five years before the reporting period; leave
out days with SAIDI 0 (ln 0 is undefined); α = mean of ln(SAIDI), β = standard deviation of ln(SAIDI) (the
sample deviation, n − 1, as the Annex's spreadsheet STDEV); T_MED = e^(α + 2.5 β); a day whose SAIDI exceeds
T_MED is a major event day. Period SAIFI/SAIDI/MAIFI are sums of the daily indices, CAIDI = SAIDI / SAIFI
(clause 3.1-3.3).
"""

from __future__ import annotations

import math
import random
import statistics
import uuid
from datetime import UTC, date, datetime

import pytest

from services.city import repository as repo
from services.city.app import create_app
from services.city.settings import CitySettings
from shared.areas import HANOI_TZ
from shared.reliability import (
    DayIndices,
    history_start,
    indices_with_and_without_meds,
    major_event_threshold,
)
from shared.testing import auth, issue_test_key, running_app

from .conftest import KPI_FILE

E = math.e
# History, the five years before a period starting 2036-01-01 (2031-01-01 .. 2035-12-31):
HISTORY = {
    date(2030, 12, 31): 1000.0,  # the sixth year back: outside the five years, must not count
    date(2031, 1, 1): 0.0,  # SAIDI 0: left out (ln 0 undefined)
    date(2032, 6, 15): E**1,  # ln = 1
    date(2033, 3, 10): E**2,  # ln = 2
    date(2035, 12, 31): E**3,  # ln = 3 (the last day before the period: inside)
}
# α = (1 + 2 + 3) / 3 = 2; β = sqrt(((1-2)² + (2-2)² + (3-2)²) / (3 - 1)) = sqrt(2/2) = 1
# T_MED = e^(α + 2.5 β) = e^(2 + 2.5) = e^4.5 ≈ 90.0171 minutes
T_MED = E**4.5
# The period 2036-01-01 .. 2036-01-04: (day, SAIFI, SAIDI minutes, MAIFI); 2036-01-04 has no stored values.
PERIOD = [
    (date(2036, 1, 1), 0.50, 90.0, 0.25),  # 90 < 90.0171: not a MED (just under)
    (date(2036, 1, 2), 0.75, 120.0, 0.50),  # 120 > T_MED: the major event day
    (date(2036, 1, 3), 0.50, 30.0, 0.00),
]
# All days: SAIFI 0.50 + 0.75 + 0.50 = 1.75; SAIDI 90 + 120 + 30 = 240; CAIDI 240 / 1.75 = 137.142857…;
# MAIFI 0.25 + 0.50 + 0 = 0.75.
ALL_DAYS = {"saifi": 1.75, "saidi_minutes": 240.0, "caidi_minutes": 240.0 / 1.75, "maifi": 0.75}
# Without the MED (2036-01-02): SAIFI 1.00; SAIDI 120; CAIDI 120 / 1 = 120; MAIFI 0.25.
WITHOUT_MEDS = {"saifi": 1.0, "saidi_minutes": 120.0, "caidi_minutes": 120.0, "maifi": 0.25}


def approx(d: dict) -> dict:
    return {k: pytest.approx(v) for k, v in d.items()}


def test_t_med_and_major_event_days_worked_by_hand():
    five_years = [v for d, v in HISTORY.items() if d >= date(2031, 1, 1)]
    assert major_event_threshold(five_years) == pytest.approx(T_MED)
    assert history_start(date(2036, 1, 1)) == date(2031, 1, 1)
    assert history_start(date(2028, 2, 29)) == date(2023, 2, 28)  # no 29 February in 2023
    got = indices_with_and_without_meds([DayIndices(*p) for p in PERIOD], five_years)
    assert got["t_med_minutes"] == pytest.approx(T_MED)
    assert got["major_event_days"] == ["2036-01-02"]
    assert got["all_days"] == approx(ALL_DAYS)
    assert got["without_major_event_days"] == approx(WITHOUT_MEDS)
    # A day exactly at T_MED is not a MED ("exceeds"); fewer than two non-zero days: no threshold.
    at = indices_with_and_without_meds([DayIndices(date(2036, 1, 1), 1.0, T_MED)], five_years)
    assert at["major_event_days"] == []
    assert major_event_threshold([0.0, 0.0, 5.0]) is None


def test_t_med_agrees_with_the_standard_library_statistics_on_messy_data():
    # Independent mean / sample standard deviation (Python's statistics module) on log-normal days with
    # zeros and a few extreme days mixed in.
    rng = random.Random(1366)
    days = [0.0 if rng.random() < 0.3 else rng.lognormvariate(0.5, 1.7) for _ in range(5 * 365)]
    days += [rng.uniform(500, 5000) for _ in range(4)]
    logs = [math.log(v) for v in days if v > 0]
    expected = math.exp(statistics.fmean(logs) + 2.5 * statistics.stdev(logs))
    assert major_event_threshold(days) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------------------- city API
@pytest.fixture(scope="module")
async def city(test_domain, kafka_settings, db_settings, topics_ready, platform_pool):
    settings = CitySettings(
        kafka=kafka_settings,
        database=db_settings,
        kpi_definitions_path=str(KPI_FILE),
        consumer_group=f"city-rel-{uuid.uuid4().hex[:8]}",
    )
    app = create_app(settings)
    async with running_app(app) as client:
        yield client, app


def hanoi_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=HANOI_TZ).astimezone(UTC)


@pytest.mark.integration
async def test_city_reports_indices_with_and_without_major_event_days_from_its_day_history(city):
    client, app = city
    pool = app.state.ctx.pool
    code = f"T{uuid.uuid4().hex[:7]}"  # a district of its own: other tests' rows cannot mix in
    rows = [("meter.saidi_minutes", d, v) for d, v in HISTORY.items()]
    for d, f, dur, m in PERIOD[:2]:
        rows += [("meter.saifi", d, f), ("meter.saidi_minutes", d, dur), ("meter.maifi", d, m)]
    rows.append(("meter.saidi_minutes", PERIOD[2][0], PERIOD[2][2]))
    rows.append(("meter.saidi_minutes", date(2036, 1, 5), 9999.0))  # after the period: not in it
    rows.append(("meter.saidi_minutes", date(2033, 3, 11), 500.0))  # another scope's history (below)
    await pool.executemany(
        "INSERT INTO kpi_day (kpi, scope_level, scope_code, window_seconds, bucket, sum, count, min, max, last) "
        "VALUES ($1, 'district', $2, 86400, $3, $4, 1, $4, $4, $4)",
        [(k, code if d != date(2033, 3, 11) else code + "X", hanoi_midnight(d), v) for k, d, v in rows],
    )
    await pool.execute(  # a 15-minute window of the same KPI is not a day value
        "INSERT INTO kpi_day (kpi, scope_level, scope_code, window_seconds, bucket, sum, count, min, max, last) "
        "VALUES ('meter.saidi_minutes', 'district', $1, 900, $2, 5000, 96, 0, 5000, 5000)",
        code,
        hanoi_midnight(date(2034, 1, 1)),
    )
    # The third day's SAIFI and MAIFI through the store's real write path (day window from 17:00 UTC).
    d3, f3, _, m3 = PERIOD[2]
    now = datetime.now(UTC).isoformat()
    await repo.store_kpi_updates(
        pool,
        [
            {
                "kpi": kpi,
                "domain": "meter",
                "scope_level": "district",
                "scope_code": code,
                "window_start": hanoi_midnight(d3).isoformat(),
                "window_seconds": 86400,
                "value": v,
                "numerator": v,
                "denominator": 1.0,
                "unit": "ratio",
                "status": "ok",
                "target": None,
                "updated_at": now,
            }
            for kpi, v in (("meter.saifi", f3), ("meter.maifi", m3))
        ],
    )
    _, key = await issue_test_key(pool, ["city:read"])
    params = {"scope_level": "district", "scope_code": code, "from": "2036-01-01", "to": "2036-01-04"}
    r = await client.get("/v1/reliability", params=params, headers=auth(key))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["t_med_minutes"] == pytest.approx(T_MED)  # e^4.5, worked out above
    assert got["major_event_days"] == ["2036-01-02"]
    assert got["all_days"] == approx(ALL_DAYS)
    assert got["without_major_event_days"] == approx(WITHOUT_MEDS)
    assert got["history_from"] == "2031-01-01" and got["history_to"] == "2035-12-31"
    assert got["history_days"] == 3  # e, e², e³ (the 0 day and the sixth year left out)
    assert got["days_without_saidi"] == ["2036-01-04"]

    # Bad input: dates outside 2000-2099, `to` before `from`, a period longer than a reporting year, scope.
    for bad in (
        {"from": "1999-12-31"},
        {"to": "2100-01-01"},
        {"from": "2036-01-05"},
        {"from": "2034-01-01"},
        {"from": "not-a-date"},
    ):
        r = await client.get("/v1/reliability", params={**params, **bad}, headers=auth(key))
        assert r.status_code == 422, (bad, r.text)
    no_from = {k: v for k, v in params.items() if k != "from"}
    r = await client.get("/v1/reliability", params=no_from, headers=auth(key))
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "from"
    # Without `to`, the period is the single day `from` (same history, same T_MED; 90 < e^4.5: no MED).
    one = {k: v for k, v in params.items() if k != "to"}
    got = (await client.get("/v1/reliability", params=one, headers=auth(key))).json()
    assert got["to"] == "2036-01-01" and got["t_med_minutes"] == pytest.approx(T_MED)
    assert got["major_event_days"] == [] and got["all_days"]["saidi_minutes"] == pytest.approx(90.0)
    _, wrong = await issue_test_key(pool, ["meter:read"])
    assert (await client.get("/v1/reliability", params=params, headers=auth(wrong))).status_code == 403
