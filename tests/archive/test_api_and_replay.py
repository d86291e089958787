"""The extracts API (authenticated, bounded, audited) and replay from the archive into a topic."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from services.archive.app import create_app
from services.archive.replay import replay
from services.archive.settings import ArchiveSettings
from services.archive.store import ArchiveStore
from services.archive.worker import write_records
from shared.contracts.cloudevents import encode
from shared.testing import auth, read_topic, running_app
from tests.archive.helpers import READING, as_records, iso

pytestmark = pytest.mark.integration
DAY = datetime(2026, 10, 5, tzinfo=UTC)


def a_day_of_two_districts(run: str) -> list:
    events = []
    for step in range(96):
        end = DAY + timedelta(minutes=15 * (step + 1))
        for district in ("HN-BD", "HN-HK"):
            for m in range(3):
                payload = {
                    **READING.examples[0],
                    "meter_id": f"MTR-{run}-{district}-{m}",
                    "district": district,
                    "commune": f"{district}-01",
                    "interval_end": iso(end),
                    "delta": 0.5,
                }
                events.append(
                    encode(READING, payload, source="/hes", id=f"{run}-{district}-{m}-{step}", time=iso(end))
                )
    return events


@pytest.fixture
def archive(tmp_path):
    run = tmp_path.name[-6:]
    write_records(ArchiveStore(str(tmp_path)), "t", "e1", as_records(a_day_of_two_districts(run)))
    return tmp_path, run


async def test_extracts_are_authenticated_bounded_and_filtered(archive, db_settings, make_key):
    root, run = archive
    settings = ArchiveSettings(
        root=str(root), extract_max_rows=500, extract_max_days=31, database=db_settings
    )
    _, reader = await make_key(["archive:read"], kind="operator")
    _, other = await make_key(["meter:read"], kind="operator")
    q = {"topic": "ioc.meter.readings", "from": "2026-10-05T00:00:00Z", "to": "2026-10-06T00:00:00Z"}
    async with running_app(create_app(settings)) as client:
        assert (await client.get("/v1/archive/extract", params=q)).status_code == 401
        assert (await client.get("/v1/archive/extract", params=q, headers=auth(other))).status_code == 403
        # one district, CSV: 3 meters x 95 readings whose event time (the interval's end, 00:15 .. 23:45) is in
        # [00:00, 24:00): the one ending at 24:00 belongs to the next day = 285 rows
        r = await client.get("/v1/archive/extract", params={**q, "area": "HN-BD"}, headers=auth(reader))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv") and r.headers["x-row-count"] == "285"
        table = pacsv.read_csv(io.BytesIO(r.content))
        assert table.num_rows == 285 and set(table["district"].to_pylist()) == {"HN-BD"}
        # one meter, Parquet, six hours: 24 quarter-hours whose events fall in [00:00, 06:00)
        meter = f"MTR-{run}-HN-HK-1"
        r = await client.get(
            "/v1/archive/extract",
            params={**q, "to": "2026-10-05T06:00:00Z", "entity": meter, "format": "parquet"},
            headers=auth(reader),
        )
        assert r.status_code == 200
        table = pq.read_table(io.BytesIO(r.content))
        assert table.num_rows == 23  # ends 00:15 .. 05:45 (06:00 is outside the half-open range)
        assert set(table["meter_id"].to_pylist()) == {meter}
        # both districts over the day: 570 rows, above the limit of 500
        r = await client.get("/v1/archive/extract", params=q, headers=auth(reader))
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "to"
        r = await client.get(
            "/v1/archive/extract", params={**q, "to": "2026-12-01T00:00:00Z"}, headers=auth(reader)
        )
        assert r.status_code == 400 and "31 days" in r.json()["error"]["message"]
        r = await client.get(
            "/v1/archive/extract", params={**q, "topic": "ioc.nothing"}, headers=auth(reader)
        )
        assert r.status_code == 404
        r = await client.get("/v1/archive/extract", params={**q, "area": "x y"}, headers=auth(reader))
        assert r.status_code == 422  # not an area code
        r = await client.get("/v1/archive/topics", headers=auth(reader))
        assert {
            "topic": "ioc.meter.readings",
            "first_date": "2026-10-05",
            "last_date": "2026-10-06",
            "dates": 2,
        } in (r.json()["topics"])


async def test_replay_publishes_the_archived_events_again_marked_as_replayed(
    archive, kafka_settings, topics_ready
):
    root, run = archive
    store = ArchiveStore(str(root))
    start, end = DAY + timedelta(hours=6), DAY + timedelta(hours=7)
    sent = await replay(store, kafka_settings, "ioc.meter.readings", start, end)
    assert sent == 4 * 6  # readings ending 06:00, 06:15, 06:30, 06:45 of six meters
    found = await read_topic(kafka_settings, "ioc.meter.readings", raw=True, where=None)
    mine = [r for r in found if r.key and r.key.decode().startswith(f"MTR-{run}-")]
    assert len(mine) == sent
    originals = {e.id: e for e in a_day_of_two_districts(run)}
    for r in mine:
        h = dict(r.headers)
        assert h["ioc_archive_replay"] == b"1"
        original = originals[h["ce_id"].decode()]
        assert r.key == original.key
        assert orjson.loads(r.value) == {
            **orjson.loads(original.value),
            "transformer": orjson.loads(original.value).get("transformer"),
        } or orjson.loads(r.value) == orjson.loads(original.value)
        assert h["ce_type"] == b"ioc.meter.reading.recorded.v1" and h["ce_source"] == b"/hes"
