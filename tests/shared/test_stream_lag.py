"""Consumer lag per partition: the worker's gauge carries the partition, and ``ioc lag`` reads it from the group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from ioc.lag import group_lag
from shared.contracts.cloudevents import encode
from shared.kafka import EventPublisher
from shared.kafka.producer import partition_for
from shared.stream.runtime import ProcessorRuntime
from tests.shared.stream_fixtures import AUDIT, ActionCounter, audit

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def test_lag_per_partition_from_the_group_counts_what_arrived_after_the_last_commit(
    kafka_settings, topics_ready
):
    tag = f"lag{uuid.uuid4().hex[:6]}"
    name = f"test-lag-{tag}"
    publisher = EventPublisher(kafka_settings, client_id="t")
    await publisher.start()
    try:
        await publisher.publish([encode(AUDIT, audit(tag, f"a{i}"), source="/ioc/test") for i in range(40)])
        rt = ProcessorRuntime(ActionCounter(name), kafka_settings, driver="aiokafka")
        async with rt.running():
            await rt.drain()
            samples = [
                s
                for metric in REGISTRY.collect()
                if metric.name == "ioc_consumer_lag_records"
                for s in metric.samples
                if s.labels.get("consumer") == name
            ]
            assert samples and all(s.labels["partition"].isdigit() for s in samples)
            owned = set(rt.core.partitions)
            assert {int(s.labels["partition"]) for s in samples} <= owned
        # the runtime committed everything on stop; 25 more events arrive while no worker runs
        later = [encode(AUDIT, audit(tag, f"b{i}"), source="/ioc/test") for i in range(25)]
        await publisher.publish(later)
    finally:
        await publisher.stop()
    rows = await group_lag(kafka_settings, name, [AUDIT.topic])
    partitions = len(rows)
    expected = Counter(partition_for(ev.key, partitions) for ev in later)
    assert {r.partition: r.lag for r in rows} == {p: expected.get(p, 0) for p in range(partitions)}
    assert all(r.committed is not None for r in rows)


def test_ioc_lag_prints_each_partition_of_a_processor(kafka_settings, topics_ready):
    r = subprocess.run(
        [sys.executable, "-m", "ioc", "lag", "--processor", "dossier-kpi", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "IOC_KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers},
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows and {row["processor"] for row in rows} == {"dossier-kpi"}
    assert sorted(row["partition"] for row in rows) == list(range(len(rows)))
    assert all(row["lag"] == row["end"] - (row["committed"] or 0) for row in rows)

    r = subprocess.run(
        [sys.executable, "-m", "ioc", "lag", "--processor", "no-such-processor"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "no-such-processor" in r.stderr
