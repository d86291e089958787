"""Restart continuity: stopping and starting the center mid-day does not reset the day's KPIs.

The embedded broker keeps records in memory only. Here the center is the archiver and the meter KPI processor
on a broker of their own; it is stopped mid-day, the broker is started again EMPTY, the day is restored from the
archive before the processor starts (what ``ioc up`` does), and the day goes on. The oracle is a center that
never restarted: a third broker that gets the same events in one go. Its KPI windows must equal the restarted
center's, value for value; without the restore the restarted center's day holds only the later readings.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.archive.replay import restore
from services.archive.settings import ArchiveSettings
from services.archive.worker import Archiver, broker_epoch
from services.meter.processors import MeterKpiProcessor
from shared.config import KafkaSettings
from shared.contracts import EVENT_TYPES
from shared.contracts.cloudevents import encode_many
from shared.embedded import EmbeddedBroker
from shared.kafka.admin import ensure_topics
from shared.stream.runtime import ProcessorRuntime
from shared.testing import read_topic
from tests.archive.helpers import archive_counts, iso, publish, readings, topic_ends

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REGISTRY = EVENT_TYPES["ioc.meter.registry.changed.v1"]
SOURCES = list(MeterKpiProcessor.topics)


def registry_for(events) -> list:
    meters = sorted({e.key.decode() for e in events})
    payloads = [
        {**REGISTRY.examples[0], "meter_id": m, "district": "HN-BD", "commune": "HN-BD-01"} for m in meters
    ]
    return encode_many(REGISTRY, payloads, source="/test/archive")


def kpi_windows(events) -> dict:
    """The last observation of each KPI window per partition (what the console shows for it)."""
    last = {}
    for ev in events:
        d = ev.data
        last[(d["kpi"], d["scope_code"], d["window_start"], d["window_seconds"], d["partition"])] = (
            d["numerator"],
            d["denominator"],
            d["value"],
        )
    return last


async def run_processor(kafka: KafkaSettings) -> None:
    async with ProcessorRuntime(MeterKpiProcessor(), kafka, driver="aiokafka").running() as rt:
        await rt.drain(timeout=60)


async def archive_all(settings: ArchiveSettings, kafka: KafkaSettings) -> None:
    ends = await topic_ends(kafka, SOURCES)
    archiver = Archiver(settings, kafka)
    async with archiver.running():
        deadline = time.monotonic() + 30
        while not archiver.caught_up(ends):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)


async def test_a_restart_mid_day_continues_the_days_kpi_windows(tmp_path):
    now = datetime.now(UTC).replace(microsecond=0)
    morning = readings(1200, now - timedelta(hours=5), meters=40)  # 30 quarter-hours of 40 meters
    meters = registry_for(morning)
    afternoon = readings(400, now - timedelta(hours=5) + timedelta(minutes=15 * 30), meters=40)
    # the same meters go on reading in the afternoon
    afternoon = encode_many(
        EVENT_TYPES["ioc.meter.reading.recorded.v1"],
        [
            {**orjson.loads(e.value), "meter_id": m.key.decode()}
            for e, m in zip(afternoon, meters * 10, strict=False)
        ],
        source="/test/archive",
        time=iso(now - timedelta(minutes=30)),
    )
    settings = ArchiveSettings(
        root=str(tmp_path / "archive"), topics=SOURCES, flush_seconds=0.2, restore_hours=6.0
    )
    brokers = []

    def broker() -> KafkaSettings:
        b = EmbeddedBroker(log_file=tmp_path / f"broker-{len(brokers)}.log").start()
        brokers.append(b)
        return KafkaSettings(bootstrap_servers=b.bootstrap_servers)

    try:
        # Before the restart: the morning's readings, archived and computed.
        kafka = broker()
        await ensure_topics(kafka)
        await publish(kafka, meters + morning)
        await archive_all(settings, kafka)
        await run_processor(kafka)
        before = kpi_windows(await read_topic(kafka, "ioc.meter.kpis"))
        brokers[0].stop()

        # The restart: an empty broker; the day restored from the archive before the processor starts.
        kafka = broker()
        await ensure_topics(kafka)
        restored = await restore(settings, kafka, SOURCES, now)
        assert restored["ioc.meter.readings"] == len(morning)
        assert restored["ioc.meter.registry"] == len(meters)
        await run_processor(kafka)
        right_after = kpi_windows(await read_topic(kafka, "ioc.meter.kpis"))
        assert right_after == before, "the day's KPI windows changed across the restart"
        await publish(kafka, afternoon)
        await archive_all(settings, kafka)
        await run_processor(kafka)
        restarted = kpi_windows(await read_topic(kafka, "ioc.meter.kpis"))
        # the restored records are not archived twice; the afternoon's are archived in the new broker's epoch
        epoch = await broker_epoch(kafka)
        assert sum(archive_counts(settings.root, "ioc.meter.readings", epoch).values()) == len(afternoon)
        brokers[1].stop()

        # The oracle: a center that never restarted.
        kafka = broker()
        await ensure_topics(kafka)
        await publish(kafka, meters + morning)
        await publish(kafka, afternoon)
        await run_processor(kafka)
        never_restarted = kpi_windows(await read_topic(kafka, "ioc.meter.kpis"))
    finally:
        for b in brokers:
            b.stop()

    day = [k for k in never_restarted if k[3] == 86400]
    assert day, "no daily window computed"
    assert {k: restarted.get(k) for k in day} == {k: never_restarted[k] for k in day}
    # every window the uninterrupted center shows, the restarted one shows with the same value (it may have
    # published a few more windows than the oracle: those it emitted at the end of the morning)
    assert {k: restarted.get(k) for k in never_restarted} == never_restarted
    assert Counter(k[3] for k in restarted)[900] > 0
