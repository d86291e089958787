"""The archive's tables without a broker: contract-derived columns, payloads outside the contract, schema
evolution across contract versions, compaction and retention."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from services.archive import schema as archive_schema
from services.archive.query import connect
from services.archive.settings import ArchiveSettings
from services.archive.store import ArchiveStore
from services.archive.worker import Archiver, retention_for, write_records
from shared.contracts.base import (
    EVENT_TYPES,
    TOPICS,
    EventModel,
    StrictInt,
    TopicSpec,
    event_type,
    register_topic,
)
from shared.contracts.cloudevents import encode
from tests.archive.helpers import READING, as_records, iso


def test_columns_are_typed_from_the_contract():
    s = archive_schema.topic_schema("ioc.meter.readings")
    assert s.field("interval_end").type == pa.timestamp("us", tz="UTC")
    assert s.field("value").type == pa.float64() and s.field("customers").type == pa.int64()
    assert s.field("flags").type == pa.list_(pa.string())
    assert s.field("ce_time").type == pa.timestamp("us", tz="UTC")
    hires = archive_schema.topic_schema("ioc.traffic.events").field("events").type
    assert hires.value_type.field("t").type == pa.timestamp("us", tz="UTC")
    measures = archive_schema.topic_schema("ioc.traffic.measures")
    assert measures.field("detector_volumes").type == pa.map_(pa.string(), pa.int64())
    assert archive_schema.topic_schema("ioc.dossier.lifecycle").field("due_date").type == pa.date32()


def test_a_payload_outside_the_contract_is_kept_whole_in_data_json(tmp_path):
    good = encode(READING, {**READING.examples[0]}, source="/t", time="2026-11-01T00:15:00Z")
    odd = encode(READING, {**READING.examples[0]}, source="/t", time="2026-11-01T00:15:00Z")
    odd.value = orjson.dumps({**READING.examples[0], "surprise": 1})  # a field the contract does not know
    naive = encode(READING, {**READING.examples[0], "interval_end": "2026-11-01T00:15:00"}, source="/t")
    store = ArchiveStore(str(tmp_path))
    records = as_records([good, odd, naive])
    records.append(
        ("ioc.meter.readings", 0, 99, b"k", b"not json", 1_700_000_000_000, [])
    )  # not a CloudEvent
    assert write_records(store, "t", "e1", records) == 4
    rows = (
        connect(store)
        .sql(
            "SELECT kafka_offset, meter_id, interval_end, data_json FROM meter_readings ORDER BY kafka_partition, kafka_offset"
        )
        .fetchall()
    )
    assert len(rows) == 4
    by_raw = {r[3] for r in rows if r[3] is not None}
    assert by_raw == {orjson.dumps({**READING.examples[0], "surprise": 1}).decode(), "not json"}
    # a date-time without an offset is read as UTC (docs/archive.md)
    assert datetime(2026, 11, 1, 0, 15, tzinfo=UTC) in {r[2] for r in rows}


@pytest.fixture
def evolving_topic():
    """A topic with a v1 contract; the test registers v2. Removed from the catalogue afterwards."""
    topic = register_topic(
        TopicSpec("ioc.test.archive_evolution", 1, "thing id", "test", "archive test topic")
    )

    @event_type("ioc.test.thing.recorded.v1", topic=topic, key="thing_id", description="v1")
    class ThingV1(EventModel):
        thing_id: str
        size: StrictInt

    archive_schema.topic_schema.cache_clear()
    archive_schema.payload_columns.cache_clear()
    yield topic, ThingV1
    for name in [n for n, et in EVENT_TYPES.items() if et.topic == topic.name]:
        del EVENT_TYPES[name]
    del TOPICS[topic.name]
    archive_schema.topic_schema.cache_clear()
    archive_schema.payload_columns.cache_clear()


def test_a_new_contract_version_extends_the_table_without_breaking_older_files(tmp_path, evolving_topic):
    topic, v1 = evolving_topic
    store = ArchiveStore(str(tmp_path))
    at = "2026-11-01T01:00:00Z"
    first = [
        encode(EVENT_TYPES["ioc.test.thing.recorded.v1"], {"thing_id": "a", "size": 1}, source="/t", time=at)
    ]
    offsets: dict = {}
    write_records(store, "t", "e1", as_records(first, offsets))

    @event_type("ioc.test.thing.recorded.v2", topic=topic, key="thing_id", description="v2")
    class ThingV2(EventModel):
        thing_id: str
        size: str  # another type for an existing field: a column of its own
        colour: str | None = None  # a new optional field: a new column

    archive_schema.topic_schema.cache_clear()
    archive_schema.payload_columns.cache_clear()
    v2 = EVENT_TYPES["ioc.test.thing.recorded.v2"]
    second = [encode(v2, {"thing_id": "b", "size": "L", "colour": "red"}, source="/t", time=at)]
    write_records(store, "t", "e1", as_records(second, offsets))
    names = archive_schema.topic_schema(topic.name).names
    assert "colour" in names and "size__v2" in names and "size" in names
    rows = (
        connect(store)
        .sql("SELECT thing_id, size, size__v2, colour FROM test_archive_evolution ORDER BY thing_id")
        .fetchall()
    )
    assert rows == [("a", 1, None, None), ("b", None, "L", "red")]
    # the old file is untouched: its column keeps its type
    old = next(p for p in store.data_files(topic.name) if "0000000001" in p)
    assert ds.dataset(old).schema.field("size").type == pa.int64()
    # compaction rewrites both into the current schema
    state = store.recover("t")
    store.compact("t", state, topic.name, date(2026, 11, 1), store.data_files(topic.name))
    (merged,) = store.data_files(topic.name)
    assert ds.dataset(merged).schema.names == names
    assert connect(store).sql("SELECT count(*) FROM test_archive_evolution").fetchall() == [(2,)]
    _ = v1


def test_compaction_merges_small_files_and_keeps_every_row_once(tmp_path):
    settings = ArchiveSettings(root=str(tmp_path), compact_min_files=4, topics=["ioc.meter.readings"])
    archiver = Archiver(settings)
    store = archiver.store
    offsets: dict = {}
    day = datetime(2026, 11, 20, tzinfo=UTC)
    for i in range(6):  # six commits of one date: six small files
        events = [
            encode(
                READING,
                {**READING.examples[0], "meter_id": f"M-{i}-{j}", "interval_end": iso(day)},
                source="/t",
                time=iso(day),
            )
            for j in range(100)
        ]
        write_records(store, settings.name, "e1", as_records(events, offsets))
    assert len(store.data_files("ioc.meter.readings")) == 6
    archiver.state = store.recover(settings.name)
    done = archiver.maintain(today=date(2026, 11, 20))
    assert done == {"files_merged": 6, "dates_expired": 0}
    assert len(store.data_files("ioc.meter.readings")) == 1
    counts = (
        connect(store)
        .sql("SELECT count(*), count(DISTINCT (kafka_partition, kafka_offset)) FROM meter_readings")
        .fetchall()
    )
    assert counts == [(600, 600)]
    assert store.recover(settings.name)["offsets"]["e1"]  # compaction left the offsets as they were


def test_retention_per_topic_expires_whole_dates(tmp_path):
    settings = ArchiveSettings(
        root=str(tmp_path), retention_days={"ioc.meter.readings": 30}, retention_days_default=365
    )
    assert retention_for(settings, "ioc.meter.readings") == 30
    assert retention_for(settings, "ioc.kiosk.heartbeats") == 365
    store = ArchiveStore(str(tmp_path))
    offsets: dict = {}
    for days_ago in (45, 31, 30, 1):
        t = datetime(2026, 12, 7, tzinfo=UTC) - timedelta(days=days_ago)
        ev = encode(READING, {**READING.examples[0], "interval_end": iso(t)}, source="/t", time=iso(t))
        write_records(store, "r", "e1", as_records([ev], offsets))
    archiver = Archiver(settings)
    archiver.state = store.recover(settings.name)
    assert archiver.maintain(today=date(2026, 12, 7))["dates_expired"] == 2
    # 30 days kept: 2026-11-07 (30 days ago) stays, 2026-11-06 and older go
    assert [d.isoformat() for d in store.dates("ioc.meter.readings")] == ["2026-11-07", "2026-12-06"]


def test_an_object_store_through_fsspec(tmp_path):
    """fsspec's in-memory filesystem stands in for S3/MinIO: no rename (copy and delete), no local paths;
    DuckDB reads it through the same fsspec filesystem."""
    import fsspec

    from services.archive.query import ExtractRequest, extract

    root = f"memory://archive-{tmp_path.name}/events"
    store = ArchiveStore(root)
    assert not store.local
    t = datetime(2026, 11, 3, 8, tzinfo=UTC)
    events = [
        encode(
            READING,
            {**READING.examples[0], "meter_id": f"M-{i}", "interval_end": iso(t)},
            source="/t",
            time=iso(t),
        )
        for i in range(50)
    ]
    assert write_records(store, "s3", "e1", as_records(events)) == 50
    assert connect(store).sql("SELECT count(*) FROM meter_readings").fetchall() == [(50,)]
    body, rows = extract(
        store,
        ExtractRequest("ioc.meter.readings", t - timedelta(hours=1), t + timedelta(hours=1), entity="M-7"),
        max_rows=100,
        max_days=1,
    )
    assert rows == 1 and b"M-7" in body
    assert store.recover("s3")["seq"] == 1
    fsspec.filesystem("memory").rm(f"/archive-{tmp_path.name}", recursive=True)
