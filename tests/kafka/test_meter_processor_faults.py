"""The meter KPI processor's fault scenarios of docs/guarantees.md on Apache Kafka (RF 3, min ISR 2, idempotent
producers): kill -9 mid-batch (twice), duplicate deliveries, poison records. Readings go in through the real
meter service (the ledger of tests/reliability holds what got a 2xx); the processor is the real one
(tests/reliability/worker.py, ``--processor meter``). Each scenario reconciles the day's
``meter.interval_completeness`` numerator of its own district (valid readings counted; latest observation per
partition, summed, as the city layer combines them) with the ledger: exact, never more, never less.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from shared.contracts.common import DEAD_LETTER_TOPIC
from shared.contracts.meter import KPI_EVENT, READINGS_TOPIC
from shared.stream.runtime import ProcessorRuntime
from shared.testing import auth, read_topic, running_app
from tests.kafka.meter_support import DISTRICTS, issue_keys, meter_app, reading_id, readings, register_fleet
from tests.reliability.harness import Ledger, Worker, post_until_accepted, uid
from tests.reliability.worker import PacedMeterProcessor

pytestmark = pytest.mark.slow

KPI = "meter.interval_completeness"


def completeness_total(observations, district: str) -> float:
    latest: dict[tuple[int, str], float] = {}
    for e in observations:
        d = e.data
        if d["kpi"] == KPI and d["scope_level"] == "district" and d["scope_code"] == district:
            if d["window_seconds"] == 86400:
                latest[(d["partition"], d["window_start"])] = d["numerator"]
    return sum(latest.values())


async def kpi_total(kafka, district: str) -> float:
    obs = await read_topic(
        kafka, KPI_EVENT.topic, where=lambda e: e.data.get("scope_code") == district, timeout=20
    )
    return completeness_total(obs, district)


async def wait_for_total(
    kafka, district: str, expected: float, timeout: float = 90, settle_s: float = 1.5
) -> float:
    """Until the total equals ``expected`` and stays there ``settle_s`` (an overshoot returns at once)."""
    deadline = time.monotonic() + timeout
    total = -1.0
    while time.monotonic() < deadline:
        total = await kpi_total(kafka, district)
        if total > expected:
            return total
        if total == expected:
            await asyncio.sleep(settle_s)
            return await kpi_total(kafka, district)
    return total


async def ingest(client, keys, meters, quarters, ledger: Ledger, *, idempotency: bool = True) -> list[dict]:
    posted = []
    for q in quarters:
        items = readings(meters, q)
        r = await post_until_accepted(
            client,
            "/v1/readings",
            {"items": items},
            auth(keys["ingest"]),
            ledger,
            [reading_id(i) for i in items],
            idempotency_key=uid() if idempotency else None,
        )
        assert r.status_code == 200 and r.json()["accepted"] == len(items), r.text
        posted += items
    return posted


@pytest.fixture
def worker_env(monkeypatch, kafka_cluster):
    """Workers (child processes) read their other Kafka settings from the environment: production's."""
    monkeypatch.setenv("IOC_KAFKA_IDEMPOTENCE", "true")
    monkeypatch.setenv("IOC_KAFKA_REPLICATION_FACTOR", "3")


async def test_meter_worker_killed_mid_batch_twice_counts_every_reading_once(
    kafka_cluster, db_settings, worker_env, tmp_path
):
    kafka = kafka_cluster.kafka_settings()
    district = DISTRICTS["kill9"]
    name = f"kaf-meter-kpi-{uid()}"
    ledger = Ledger()
    log = tmp_path / "worker.log"

    def worker() -> Worker:
        # Paced small batches: ~30 batches of at least 0.3 s, so each kill lands mid-stream.
        return Worker(
            kafka.bootstrap_servers,
            name,
            "/ioc/meter/processor",
            pause_s=0.3,
            max_records=100,
            log_path=log,
            processor="meter",
        ).start()

    app = meter_app(kafka, db_settings)
    w = None
    seen_at_kill: list[float] = []
    try:
        async with running_app(app) as client:
            keys = await issue_keys(app)
            meters = await register_fleet(client, keys, district, 150)
            await ingest(client, keys, meters, range(1, 21), ledger)
        total = len(ledger.accepted_set)
        assert total == 150 * 20
        w = worker()
        for _ in range(2):
            progress = await wait_progress(kafka, district, above=max([0.0, *seen_at_kill]), timeout=90)
            w.kill9()
            seen_at_kill.append(progress)
            assert progress < total, "the stream finished before the kill; the scenario did not happen"
            w = worker()
        final = await wait_for_total(kafka, district, total, timeout=120)
    finally:
        if w is not None:
            w.stop()
    assert final == total, (
        f"KPI total {final} != {total} accepted (totals at the kills: {seen_at_kill})\n"
        + (log.read_bytes()[-3000:].decode(errors="replace") if log.exists() else "")
    )


async def wait_progress(kafka, district: str, *, above: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = await kpi_total(kafka, district)
        if t > above:
            return t
    raise AssertionError(f"no progress above {above} within {timeout}s")


async def resend(kafka, records) -> None:
    """Produce ``records`` again, byte for byte, from another producer (a replay tool, a mirrored cluster)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for r in records:
            await producer.send(
                READINGS_TOPIC.name, r.value, key=r.key, headers=list(r.headers), partition=r.partition
            )
        await producer.flush()
    finally:
        await producer.stop()


async def test_meter_duplicate_deliveries_count_once_across_a_restart(kafka_cluster, db_settings):
    kafka = kafka_cluster.kafka_settings()
    district = DISTRICTS["duplicates"]
    name = f"kaf-meter-dup-{uid()}"
    ledger = Ledger()
    app = meter_app(kafka, db_settings)
    async with running_app(app) as client:
        keys = await issue_keys(app)
        meters = await register_fleet(client, keys, district, 40)
        posted = await ingest(client, keys, meters, range(1, 6), ledger)
        # A gateway re-posting without an Idempotency-Key: the service knows the readings, publishes nothing new.
        again = readings(meters, 1)
        r = await client.post("/v1/readings", json={"items": again}, headers=auth(keys["ingest"]))
        assert r.status_code == 200 and r.json()["duplicates"] == len(again), r.text
    n = len(ledger.accepted_set)
    assert n == len(posted) == 200
    ids = {reading_id(i).encode() for i in posted}
    raw = await read_topic(kafka, READINGS_TOPIC.name, raw=True, timeout=20)
    mine = [r for r in raw if dict(r.headers).get("ce_id") in ids]
    assert len(mine) == n
    await resend(kafka, mine)  # every reading on the topic twice, before the first worker runs
    async with ProcessorRuntime(PacedMeterProcessor(0, name), kafka).running() as rt:
        await rt.drain(timeout=60)
    assert await wait_for_total(kafka, district, n, timeout=30) == n

    # And once more, to a restarted worker that recovers its state (and dedup memory) from its changelog.
    await resend(kafka, mine[:50])
    async with ProcessorRuntime(PacedMeterProcessor(0, name), kafka).running() as rt:
        await rt.drain(timeout=60)
    assert await wait_for_total(kafka, district, n, timeout=30) == n


async def test_meter_poison_records_are_dead_lettered_and_the_partition_moves_on(kafka_cluster, db_settings):
    kafka = kafka_cluster.kafka_settings()
    district = DISTRICTS["poison"]
    name = f"kaf-meter-poison-{uid()}"
    ledger = Ledger()
    marker = uuid.uuid4().hex
    app = meter_app(kafka, db_settings)
    async with running_app(app) as client:
        keys = await issue_keys(app)
        meters = await register_fleet(client, keys, district, 1)  # one meter: one partition, in order
        posted = await ingest(client, keys, meters, range(1, 4), ledger)
        raw = await read_topic(kafka, READINGS_TOPIC.name, raw=True, timeout=20)
        valid = next(r for r in raw if ("ce_id", reading_id(posted[0]).encode()) in list(r.headers))

        def headers(**changes) -> list:
            return [(k, changes.get(k, v)) for k, v in valid.headers]

        poison = [
            (b"{not json", headers(ce_id=f"p1-{marker}".encode())),
            (b'{"meter_id": "x", "value": "lots"}', headers(ce_id=f"p2-{marker}".encode())),
            (valid.value, headers(ce_id=f"p3-{marker}".encode(), ce_type=b"ioc.meter.nonsense.v9")),
        ]
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka.bootstrap_servers, acks="all", enable_idempotence=True
        )
        await producer.start()
        try:
            for value, hdrs in poison:
                await producer.send_and_wait(READINGS_TOPIC.name, value, key=valid.key, headers=hdrs)
        finally:
            await producer.stop()
        posted += await ingest(client, keys, meters, range(4, 7), ledger)  # valid readings after the poison
        async with ProcessorRuntime(PacedMeterProcessor(0, name), kafka).running() as rt:
            await rt.drain(timeout=60)
            assert rt.core.dead_lettered == 3
    n = len(ledger.accepted_set)
    assert n == 6 and await wait_for_total(kafka, district, n, timeout=30) == n
    dead = await read_topic(kafka, DEAD_LETTER_TOPIC.name, raw=True, timeout=10)
    mine = [dict(r.headers) for r in dead if dict(r.headers).get("dlq_consumer") == name.encode()]
    assert len(mine) == 3 and {h["dlq_topic"] for h in mine} == {READINGS_TOPIC.name.encode()}
