"""The feeder-outage processor's fault scenarios of docs/guarantees.md on Apache Kafka (RF 3, min ISR 2,
idempotent producers, transactions): kill -9 mid-batch twice, a slow consumer, duplicate deliveries across a
restart (poison: ``test_other_processors_poison.py``).

The ledger: feeders of 4 meters each (ids of this run only), every one going through the same acknowledged
supply events: meters 0, 1, 2, 3 lose supply, then 0, 1, 2, 3 regain it. The processor's rule (a feeder is out
while at least 3 meters and at least half of its meters are without supply, ``FeederOutageProcessor`` defaults)
then raises each feeder's outage exactly once, at the third loss (3 of 4 down), and clears it exactly once, at
the second restoration (2 of 4 down). Reconciled: the alarm records on ``ioc.meter.alarms`` (read_committed) of
these feeders, counted by (feeder, state): each exactly 1, none missing, none twice.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import encode
from shared.contracts.meter import ALARM_EVENT, FeederSupplyChanged
from tests.areas import area
from tests.kafka import processor_scenarios as scenarios
from tests.kafka.processor_scenarios import Workload, kafka_workers, read_committed
from tests.reliability.harness import uid

pytestmark = pytest.mark.slow

__all__ = ["kafka_workers"]

METERS = 4


def workload(feeders: int) -> Workload:
    run = uid()
    names = [f"F-{run}-{i}" for i in range(feeders)]
    start = datetime.now(UTC) - timedelta(hours=1)
    etype = event_type_of(FeederSupplyChanged)
    events = []
    for n, feeder in enumerate(names):  # feeder after feeder: the alarms grow as the stream is folded
        steps = [(m, "lost") for m in range(METERS)] + [(m, "restored") for m in range(METERS)]
        for i, (m, supply) in enumerate(steps):
            at = start + timedelta(seconds=n * 10 + i)
            payload = {
                "feeder": feeder,
                "meter_id": f"{feeder}-m{m}",
                "supply": supply,
                "at": at.isoformat().replace("+00:00", "Z"),
                "district": area("SS"),
                "feeder_meters": METERS,
            }
            events.append(encode(etype, payload, source="/ioc/meter", id=f"{feeder}:m{m}:{supply}"))
    mine = set(names)

    async def observe(kafka) -> dict:
        alarms = await read_committed(kafka, ALARM_EVENT.topic, lambda e: e.data.get("source_id") in mine)
        return dict(Counter((a.data["source_id"], a.data["state"]) for a in alarms))

    return Workload(
        kind="feeder-outage",
        source="/ioc/meter",
        events=events,
        expected={(f, state): 1 for f in names for state in ("raised", "cleared")},
        observe=observe,
        progress=lambda seen: sum(seen.values()),
    )


async def test_feeder_outage_worker_killed_mid_batch_twice_alarms_exactly_once(
    kafka_cluster, kafka_workers, tmp_path
):
    await scenarios.killed_mid_batch_twice(kafka_cluster.kafka_settings(), workload(200), tmp_path)


async def test_feeder_outage_slow_consumer_catches_up_exactly(kafka_cluster):
    await scenarios.slow_consumer(kafka_cluster.kafka_settings(), workload(100))


async def test_feeder_outage_duplicates_alarm_once_across_a_restart(kafka_cluster):
    await scenarios.duplicate_deliveries(kafka_cluster.kafka_settings(), workload(60))
