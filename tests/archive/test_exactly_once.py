"""Exactly-once archive: every record of a topic once in the Parquet files, whatever moment the archiver dies.

Counted per topic and partition against the topic itself (its high watermarks), with pyarrow's dataset API
reading the files, i.e. without IOC's code.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.archive.settings import ArchiveSettings
from services.archive.worker import Archiver, broker_epoch
from tests.archive.helpers import archive_counts, publish, readings, replay_marked_offsets, topic_ends

pytestmark = pytest.mark.integration
TOPIC = "ioc.meter.readings"
ROOT = Path(__file__).resolve().parents[2]


class Killed(BaseException):
    """The process dies here (not an Exception: nothing in the archiver catches it)."""


def settings_for(root: Path, kafka, **kw) -> ArchiveSettings:
    return ArchiveSettings(
        root=str(root),
        topics=[TOPIC],
        flush_records=kw.pop("flush_records", 400),
        flush_seconds=kw.pop("flush_seconds", 0.2),
        maintenance_seconds=kw.pop("maintenance_seconds", 3600),
        kafka=kafka,
        **kw,
    )


async def archive_until_caught_up(settings: ArchiveSettings, kafka, timeout: float = 30) -> Archiver:
    ends = await topic_ends(kafka, [TOPIC])
    archiver = Archiver(settings, kafka)
    async with archiver.running():
        deadline = time.monotonic() + timeout
        while not archiver.caught_up(ends):
            assert time.monotonic() < deadline, "the archiver did not catch up"
            await asyncio.sleep(0.1)
    return archiver


async def assert_exactly_once(root: Path, kafka) -> int:
    epoch = await broker_epoch(kafka)
    ends = await topic_ends(kafka, [TOPIC])
    replayed = await replay_marked_offsets(kafka, TOPIC)
    counts = archive_counts(root, TOPIC, epoch)
    expected = {(tp.partition, o) for tp, end in ends.items() for o in range(end)} - replayed
    duplicated = {k: n for k, n in counts.items() if n != 1}
    assert not duplicated, f"records archived more than once: {list(duplicated.items())[:5]}"
    missing = expected - set(counts)
    assert not missing, f"{len(missing)} records never archived, e.g. {sorted(missing)[:5]}"
    assert set(counts) - expected == set()  # nothing from beyond the topic, nothing a replay wrote
    for tp, end in ends.items():  # per partition, against the topic
        in_archive = sum(1 for (p, _) in counts if p == tp.partition)
        assert in_archive == end - sum(1 for (p, _) in replayed if p == tp.partition)
    return sum(counts.values())


async def test_a_crash_between_staged_files_and_the_state_loses_and_duplicates_nothing(
    kafka_settings, topics_ready, tmp_path
):
    await publish(kafka_settings, readings(3000, datetime(2026, 11, 3, tzinfo=UTC)))
    settings = settings_for(tmp_path, kafka_settings, flush_records=1000)
    archiver = Archiver(settings, kafka_settings)
    await archiver.start()
    calls = {"n": 0}
    real = archiver.store._write_atomically

    def dies_on_second_commit(path, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed  # files of this commit are staged, its state never written
        real(path, data)

    archiver.store._write_atomically = dies_on_second_commit
    while calls["n"] < 1:
        await asyncio.sleep(0.05)
    await publish(kafka_settings, readings(2000, datetime(2026, 11, 3, 12, tzinfo=UTC)))
    while not archiver._tasks[0].done():  # the second commit dies
        await asyncio.sleep(0.05)
    archiver._stopping = True
    archiver._tasks[0].cancel()
    await asyncio.gather(*archiver._tasks, return_exceptions=True)
    await archiver.consumer.stop()
    assert calls["n"] >= 2
    # a new process on the same archive: recovery drops the staged files, the records are read again
    commits_before = REGISTRY.get_sample_value("ioc_archive_commits_total") or 0
    await archive_until_caught_up(settings, kafka_settings)
    assert REGISTRY.get_sample_value("ioc_archive_commits_total") > commits_before
    assert REGISTRY.get_sample_value("ioc_archive_events_total", {"topic": TOPIC}) > 0
    assert not list(tmp_path.rglob("*.tmp"))
    await assert_exactly_once(tmp_path, kafka_settings)


async def test_a_crash_in_the_middle_of_the_renames_loses_and_duplicates_nothing(
    kafka_settings, topics_ready, tmp_path
):
    # readings of several dates: one commit renames several files, and the crash comes after the first
    events = readings(1500, datetime(2026, 11, 4, 23, tzinfo=UTC), meters=10)
    await publish(kafka_settings, events)
    settings = settings_for(tmp_path, kafka_settings, flush_records=100_000, flush_seconds=3600)
    archiver = Archiver(settings, kafka_settings)
    await archiver.start()
    ends = await topic_ends(kafka_settings, [TOPIC])
    while sum(r[1] - r[0] for b in archiver.buffers.values() for r in b.ranges.values()) < sum(ends.values()):
        await asyncio.sleep(0.05)
    archiver._stopping = True
    archiver._tasks[0].cancel()
    await asyncio.gather(*archiver._tasks, return_exceptions=True)
    real_mv, moved = archiver.store.fs.mv, []

    def dies_after_one_rename(src, dst, **kw):
        if moved and not src.endswith(".json.tmp") and ".tmp" in src:
            raise Killed
        if ".parquet.tmp" in src:
            moved.append(dst)
        real_mv(src, dst, **kw)

    archiver.store.fs.mv = dies_after_one_rename
    with pytest.raises(Killed):
        await archiver.flush()
    await archiver.consumer.stop()
    archiver.store.fs.mv = real_mv
    assert len(moved) == 1 and list(tmp_path.rglob(".*.parquet.tmp"))  # half-published
    # recovery finishes the renames: the records of that commit are not read again
    await archive_until_caught_up(settings, kafka_settings)
    assert not list(tmp_path.rglob("*.tmp"))
    await assert_exactly_once(tmp_path, kafka_settings)


@pytest.mark.slow
async def test_kill_9_of_the_archiver_process_mid_write_and_restart(kafka_settings, topics_ready, tmp_path):
    await publish(kafka_settings, readings(20_000, datetime(2026, 11, 5, tzinfo=UTC), meters=200))
    env = {
        **os.environ,
        "IOC_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "IOC_ARCHIVE_ROOT": str(tmp_path),
        "IOC_ARCHIVE_TOPICS": f'["{TOPIC}"]',
        "IOC_ARCHIVE_FLUSH_RECORDS": "700",  # a commit every few ms: kills land inside commits
        "IOC_ARCHIVE_FLUSH_SECONDS": "0.05",
        "IOC_LOG_LEVEL": "WARNING",
    }
    state = tmp_path / "_state" / "archiver.json"
    rng = random.Random(39)
    for round_ in range(3):
        proc = subprocess.Popen(  # noqa: ASYNC220 (the test owns it)
            [sys.executable, "-m", "ioc", "archive", "run"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            before = state.stat().st_mtime_ns if state.exists() else 0
            deadline = time.monotonic() + 30
            while not (state.exists() and state.stat().st_mtime_ns != before):  # committing now
                assert proc.poll() is None and time.monotonic() < deadline, "the archiver did not commit"
                await asyncio.sleep(0.02)
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            if round_ == 1:  # more records arrive between the kills
                await publish(kafka_settings, readings(3000, datetime(2026, 11, 6, tzinfo=UTC)))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    await archive_until_caught_up(settings_for(tmp_path, kafka_settings), kafka_settings)
    assert await assert_exactly_once(tmp_path, kafka_settings) >= 23_000
