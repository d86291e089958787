"""Meter ingest on Apache Kafka while brokers fail: RF 3, min.insync.replicas 2, acks=all, idempotence on.

- The leader of the readings partitions killed (kill -9) in the middle of a stream of requests: every request
  ends 200 (a gateway retries what got 503), nothing accepted is lost, the idempotent producer's own retries
  double nothing (a reading is on the topic twice only when its gateway re-posted it after a 503), and the
  producer is not stuck after the failover nor after the broker comes back.
- Two of three brokers down: every write answers 503 with Retry-After (never 2xx: min ISR 2 cannot be met),
  then, once they are back, the same service accepts again without a restart.

Reconciled against the ledger of tests/reliability (what got a 2xx).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from shared.contracts.meter import READINGS_TOPIC
from shared.testing import auth, read_topic, running_app
from tests.kafka.meter_support import (
    DISTRICTS,
    issue_keys,
    meter_app,
    reading_id,
    readings,
    register_fleet,
)
from tests.reliability.harness import Ledger, post_until_accepted, uid

pytestmark = pytest.mark.slow


async def ids_on_topic(kafka, ids: set[str], expect: int) -> Counter:
    events = await read_topic(
        kafka, READINGS_TOPIC.name, where=lambda e: e.id in ids, expect=expect, timeout=60
    )
    return Counter(e.id for e in events)


def busiest_leader(cluster, topic: str) -> int:
    md = cluster.admin().list_topics(topic, timeout=10)
    return Counter(p.leader for p in md.topics[topic].partitions.values()).most_common(1)[0][0]


async def test_partition_leader_killed_mid_stream_loses_and_doubles_nothing(
    kafka_cluster, all_brokers_up, db_settings
):
    kafka = kafka_cluster.kafka_settings(publish_timeout_s=8.0)
    app = meter_app(kafka, db_settings)
    ledger = Ledger()
    retried: set[str] = set()  # readings whose request got a 503 before its 2xx (the gateway re-posted them)
    async with running_app(app) as client:
        keys = await issue_keys(app)
        meters = await register_fleet(client, keys, DISTRICTS["failover"], 120)
        publisher = app.state.ctx.publisher
        posted: list[str] = []

        async def post_quarter(q: int) -> None:
            items = readings(meters, q)
            ids = [reading_id(i) for i in items]
            mine = Ledger()
            r = await post_until_accepted(
                client, "/v1/readings", {"items": items}, auth(keys["ingest"]), mine, ids, deadline_s=90
            )
            assert r.status_code == 200 and r.json()["accepted"] == len(items), r.text
            if mine.statuses.get(503):
                retried.update(ids)
            ledger.accepted.extend(mine.accepted)
            ledger.statuses.update(mine.statuses)
            posted.extend(ids)

        for q in range(1, 4):
            await post_quarter(q)
        assert publisher._producer._txn_manager.producer_id >= 0  # the idempotent path is the one running
        victim = busiest_leader(kafka_cluster, READINGS_TOPIC.name)

        streaming_started = asyncio.Event()

        async def stream() -> None:
            for q in range(4, 22):
                await post_quarter(q)
                streaming_started.set()

        # The kill comes once the stream's first request is through, with 17 still to go (a fixed sleep stopped
        # meaning "mid-stream" once ingest got faster: the whole stream fit in it)
        streaming = asyncio.create_task(stream())
        await streaming_started.wait()
        assert not streaming.done(), "the stream ended before the kill; the scenario did not happen"
        kafka_cluster.kill(victim)
        await streaming  # no stuck producer: every request finished with a 200
        assert busiest_leader(kafka_cluster, READINGS_TOPIC.name) != victim
        kafka_cluster.start_node(victim)
        kafka_cluster.wait_until_brokers(3)
        for q in range(22, 25):  # and after the broker is back (quarter 24 is the last one in the past)
            await post_quarter(q)

    accepted = ledger.accepted_set
    assert len(accepted) == 24 * len(meters) == len(set(posted))
    on_topic = await ids_on_topic(kafka, accepted, expect=len(accepted))
    assert set(on_topic) == accepted, f"lost: {len(accepted - set(on_topic))}"
    doubled = {i for i, n in on_topic.items() if n > 1}
    assert doubled <= retried, f"{len(doubled - retried)} readings doubled without a client retry"


async def test_two_of_three_brokers_down_every_write_is_503_and_ingest_recovers_without_restart(
    kafka_cluster, all_brokers_up, db_settings
):
    kafka = kafka_cluster.kafka_settings(publish_timeout_s=3.0)
    app = meter_app(kafka, db_settings)
    ledger = Ledger()
    async with running_app(app) as client:
        keys = await issue_keys(app)
        meters = await register_fleet(client, keys, DISTRICTS["outage"], 30)
        first = readings(meters, 1)
        r = await post_until_accepted(
            client,
            "/v1/readings",
            {"items": first},
            auth(keys["ingest"]),
            ledger,
            [reading_id(i) for i in first],
        )
        assert r.status_code == 200

        down = [n for n in kafka_cluster.running_nodes()][:2]
        for node in down:
            kafka_cluster.kill(node)
        outage = Ledger()
        for q in range(2, 5):
            items = readings(meters, q)
            r = await client.post(
                "/v1/readings",
                json={"items": items},
                headers={**auth(keys["ingest"]), "Idempotency-Key": uid()},
            )
            outage.record(r, [reading_id(i) for i in items])
        assert outage.statuses == {503: 3}, outage.statuses  # never a 2xx for what min ISR 2 cannot hold
        assert all(after and int(after) > 0 for _, after in outage.refusals)

        for node in down:
            kafka_cluster.start_node(node)
        # The same app, not restarted: a gateway retrying gets its readings accepted once the brokers are back.
        for q in range(2, 5):
            items = readings(meters, q)
            r = await post_until_accepted(
                client,
                "/v1/readings",
                {"items": items},
                auth(keys["ingest"]),
                ledger,
                [reading_id(i) for i in items],
                deadline_s=120,
            )
            assert r.status_code == 200 and r.json()["accepted"] == len(items), r.text

    accepted = ledger.accepted_set
    assert len(accepted) == 4 * len(meters)
    on_topic = await ids_on_topic(kafka, accepted, expect=len(accepted))
    assert set(on_topic) == accepted
