"""Stream processing under faults: kill -9 mid-batch, a rebalance mid-stream, a slow consumer, duplicate
deliveries and poison messages. Each test ingests kiosk sessions through the real HTTP service (the ledger holds
what got a 2xx), runs the real kiosk KPI processor, and reconciles the ``kiosk.sessions`` KPI total read from the
KPI topic (latest observation per partition and window, summed) with the ledger: exact, never more, never less.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from services.kiosk.app import create_app
from shared.contracts.common import DEAD_LETTER_TOPIC
from shared.contracts.kiosk import SESSIONS_TOPIC
from shared.kafka.producer import EventPublisher
from shared.stream.runtime import ProcessorRuntime
from shared.testing import auth, read_topic, running_app
from tests.areas import area
from tests.reliability.harness import (
    KPI_TOPIC,
    Ledger,
    Worker,
    post_until_accepted,
    register_kiosks,
    session_ids_on_topic,
    session_items,
    sessions_total,
    uid,
    wait_for_sessions_total,
)
from tests.reliability.worker import PacedKioskProcessor

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: the stream runtime's consumer drivers these scenarios run under (``shared.stream.runtime``)
DRIVERS = pytest.mark.parametrize("driver", ["faust", "librdkafka"])

#: The area (2019 name; ``area()`` maps it) each scenario counts, per driver. Here every test has a fresh broker,
#: but tests/kafka runs these scenarios on one cluster for the whole session, whose topics keep every earlier
#: test's sessions: a new processor folds them from the start, so two runs counting the same area add up (each
#: driver's second run read exactly twice the ledger's total).
AREAS = {
    "kill9": {"faust": "HK", "librdkafka": "MD"},
    "join": {"faust": "DD", "librdkafka": "ML"},
    "slow": {"faust": "BD", "librdkafka": "TTr"},
    "duplicates": {"faust": "TH", "librdkafka": "PX"},
    "poison": {"faust": "CG", "librdkafka": "ST"},
}


def scenario_area(scenario: str, driver: str) -> str:
    """The area ``scenario`` counts under ``driver`` (:data:`AREAS`)."""
    return area(AREAS[scenario][driver])


async def ingest_sessions(
    client, key: str, kiosks: list[str], n: int, ledger: Ledger, *, batch: int = 5000, idempotent: bool = True
) -> list[dict]:
    """Post ``n`` fresh sessions in batches as a gateway would; every 2xx lands in ``ledger``."""
    items = session_items(kiosks, n)
    for i in range(0, n, batch):
        chunk = items[i : i + batch]
        r = await post_until_accepted(
            client,
            "/v1/sessions",
            {"items": chunk},
            auth(key),
            ledger,
            [s["session_id"] for s in chunk],
            idempotency_key=uid() if idempotent else None,
        )
        assert r.status_code == 200 and r.json()["accepted"] == len(chunk), r.text
    return items


def names() -> tuple[str, str]:
    """A consumer group / changelog name and a CloudEvents source unique to one test."""
    name = f"rel-kpi-{uid()}"
    return name, f"/ioc/kiosk/kpi/{name}"


@DRIVERS
async def test_worker_killed_mid_batch_twice_recovers_without_double_counting(
    kafka, kiosk_settings, admin_key, tmp_path, driver
):
    district, total = scenario_area("kill9", driver), 12000
    ledger = Ledger()
    name, source = names()
    log = tmp_path / "worker.log"

    def worker() -> Worker:
        # Small paced batches: a stream of ~60 batches of at least 0.5 s each (30 s or more), so each kill lands
        # in the middle of it even on a fast machine (progress is observed on the KPI topic, which takes a moment
        # to read, and a restarted worker takes the stream over within a few seconds).
        return Worker(
            kafka.bootstrap_servers, name, source, pause_s=0.5, max_records=200, log_path=log, driver=driver
        ).start()

    w, seen_at_kill = None, []
    try:
        async with running_app(create_app(kiosk_settings)) as client:
            kiosks = await register_kiosks(client, admin_key, district, 6)
            w = worker()
            primed = await prime(client, admin_key, kiosks, ledger, kafka, source, district)
            await ingest_sessions(client, admin_key, kiosks, total - primed, ledger)
        assert len(ledger.accepted_set) == total
        for _ in range(2):
            # Wait until this worker made progress of its own into the stream, then kill it with no warning.
            progress = await _wait_progress(
                kafka, source, district, above=max([primed, *seen_at_kill]), timeout=40
            )
            w.kill9()
            seen_at_kill.append(progress)
            assert progress < total, "the stream finished before the kill; the scenario did not happen"
            w = worker()
        final = await wait_for_sessions_total(kafka, source, district, total, timeout=90)
    finally:
        if w is not None:
            w.stop()
    assert final == total, f"KPI total {final} != {total} accepted (totals seen at the kills: {seen_at_kill})"


async def prime(
    client, key: str, kiosks: list[str], ledger: Ledger, kafka, source: str, district: str
) -> int:
    """Post one session per kiosk and wait until the (started) worker counted them all; returns how many.

    A session counts once its kiosk's registry entry is in the worker's state. aiokafka hands out a fetched
    partition's records before the next partition's, so with the tiny paced batches of these scenarios a
    backlog of sessions would hold the registry records back for dozens of batches (the KPI total then stays
    at 0 for 30 s and jumps to nearly all of it at once); after priming, the total grows batch by batch."""
    await ingest_sessions(client, key, kiosks, len(kiosks), ledger)
    await _wait_progress(kafka, source, district, above=len(kiosks) - 1, timeout=60)
    return len(kiosks)


async def _wait_progress(kafka, source: str, district: str, *, above: float, timeout: float) -> float:
    """The first ``kiosk.sessions`` total of ``district`` on the KPI topic above ``above``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obs = await read_topic(kafka, KPI_TOPIC, where=lambda e: e.source == source, timeout=10)
        t = sessions_total(obs, source, district)
        if t > above:
            return t
    raise AssertionError(f"no progress above {above} within {timeout}s")


@DRIVERS
async def test_second_worker_joining_mid_stream_keeps_totals_exact(
    kafka, kiosk_settings, admin_key, tmp_path, driver
):
    district, half = scenario_area("join", driver), 6000
    ledger = Ledger()
    name, source = names()
    first = Worker(
        kafka.bootstrap_servers,
        name,
        source,
        pause_s=0.1,
        max_records=300,
        log_path=tmp_path / "first.log",
        driver=driver,
    )
    second = Worker(
        kafka.bootstrap_servers,
        name,
        source,
        pause_s=0.1,
        max_records=300,
        log_path=tmp_path / "second.log",
        driver=driver,
    )
    try:
        async with running_app(create_app(kiosk_settings)) as client:
            kiosks = await register_kiosks(client, admin_key, district, 9)
            first.start()
            await prime(client, admin_key, kiosks, ledger, kafka, source, district)
            await ingest_sessions(client, admin_key, kiosks, half, ledger)
            second.start()  # joins the group while the first is mid-stream: partitions move between them
            # Keep the stream flowing through the join and the rebalance (about 5 s idle, far longer on a loaded
            # CI machine) until the newcomer has taken partitions over, then a little longer so it works on them.
            deadline = asyncio.get_running_loop().time() + 120
            after_takeover = 10
            while after_takeover > 0:
                await ingest_sessions(client, admin_key, kiosks, 200, ledger)
                await asyncio.sleep(0.4)
                if b"state recovered" in (tmp_path / "second.log").read_bytes():
                    after_takeover -= 1
                assert asyncio.get_running_loop().time() < deadline, (
                    "the second worker never took partitions over; its log ends:\n"
                    + (tmp_path / "second.log").read_bytes()[-3000:].decode(errors="replace")
                )
        total = len(ledger.accepted_set)
        final = await wait_for_sessions_total(kafka, source, district, total, timeout=90)
        assert first.alive and second.alive
    finally:
        first.stop()
        second.stop()
    assert final == total > half


@DRIVERS
async def test_slow_consumer_lags_then_catches_up_exactly(kafka, kiosk_settings, admin_key, driver):
    district, total = scenario_area("slow", driver), 4000
    ledger = Ledger()
    name, source = names()
    slow = PacedKioskProcessor(
        0.2, heartbeat_timeout_s=3600, kpi_interval_s=0.3, tick_seconds=0.2, name=name, source=source
    )
    async with running_app(create_app(kiosk_settings)) as client:
        kiosks = await register_kiosks(client, admin_key, district, 3)
        async with ProcessorRuntime(slow, kafka, max_records=250, driver=driver).running() as rt:
            # Ingest is not slowed down by the consumer: every batch is acknowledged while it lags.
            await ingest_sessions(client, admin_key, kiosks, total, ledger, batch=1000)
            await rt.drain(timeout=60)
            assert rt.core.processed >= total
    final = await wait_for_sessions_total(kafka, source, district, total, timeout=30)
    assert final == len(ledger.accepted_set) == total


@DRIVERS
async def test_duplicate_deliveries_count_once_even_across_a_worker_restart(
    kafka, kiosk_settings, admin_key, driver
):
    district, n = scenario_area("duplicates", driver), 500
    ledger = Ledger()
    name, source = names()

    def processor():
        return PacedKioskProcessor(
            0, heartbeat_timeout_s=3600, kpi_interval_s=0.3, tick_seconds=0.2, name=name, source=source
        )

    async with running_app(create_app(kiosk_settings)) as client:
        kiosks = await register_kiosks(client, admin_key, district, 3)
        items = session_items(kiosks, n)
        body = {"items": items}
        ids = [s["session_id"] for s in items]
        # A gateway retry with the same Idempotency-Key is answered from the store: nothing published twice.
        key = uid()
        r1 = await post_until_accepted(
            client, "/v1/sessions", body, auth(admin_key), ledger, ids, idempotency_key=key
        )
        r2 = await post_until_accepted(
            client, "/v1/sessions", body, auth(admin_key), ledger, ids, idempotency_key=key
        )
        assert r1.status_code == r2.status_code == 200 and r2.headers.get("idempotent-replayed") == "true"
        assert set((await session_ids_on_topic(kafka, set(ids), expect=n)).values()) == {1}
        # A retry without the key publishes the same events (same CloudEvents ids) at new offsets.
        r3 = await post_until_accepted(client, "/v1/sessions", body, auth(admin_key), ledger, ids)
        assert r3.status_code == 200
        assert set((await session_ids_on_topic(kafka, set(ids), expect=2 * n)).values()) == {2}

        async with ProcessorRuntime(processor(), kafka, driver=driver).running() as rt:
            await rt.drain(timeout=40)
        assert await wait_for_sessions_total(kafka, source, district, n, timeout=20) == n

        # The same events delivered yet again, now to a restarted worker that recovers from its changelog.
        r4 = await post_until_accepted(client, "/v1/sessions", body, auth(admin_key), ledger, ids)
        assert r4.status_code == 200
        # ... and once more by another producer entirely (a replay tool, a mirrored cluster).
        raw = await read_topic(kafka, SESSIONS_TOPIC.name, raw=True)
        mine = [
            r
            for r in raw
            if any(h == ("ce_id", f"ses:{items[0]['kiosk_id']}:{ids[0]}".encode()) for h in r.headers)
        ]
        assert mine
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                SESSIONS_TOPIC.name,
                mine[0].value,
                key=mine[0].key,
                headers=list(mine[0].headers),
                partition=mine[0].partition,
            )
        finally:
            await producer.stop()
        async with ProcessorRuntime(processor(), kafka, driver=driver).running() as rt:
            await rt.drain(timeout=40)
    final = await wait_for_sessions_total(kafka, source, district, n, timeout=20)
    assert final == n == len(ledger.accepted_set)


@DRIVERS
async def test_poison_messages_are_dead_lettered_and_do_not_stall_the_partition(
    kafka, kiosk_settings, admin_key, driver
):
    district, n = scenario_area("poison", driver), 300
    ledger = Ledger()
    name, source = names()
    processor = PacedKioskProcessor(
        0, heartbeat_timeout_s=3600, kpi_interval_s=0.3, tick_seconds=0.2, name=name, source=source
    )
    marker = uuid.uuid4().hex
    async with running_app(create_app(kiosk_settings)) as client:
        kiosks = await register_kiosks(client, admin_key, district, 1)  # one kiosk: one partition, in order
        await ingest_sessions(client, admin_key, kiosks, n, ledger)
        # Poison on the same partition, between valid events: not JSON; valid JSON breaking the contract;
        # a CloudEvent of an unknown type; one breaking the contract whose ce_time header has a null value
        # (decoding it used to raise instead of dead-lettering it: the processor retried its batch forever).
        good = session_items(kiosks, 1)[0]
        publisher = EventPublisher(kafka, client_id="poisoner")
        from shared.contracts.base import event_type_of
        from shared.contracts.cloudevents import EncodedEvent, encode
        from shared.contracts.kiosk import SessionEnded

        valid = encode(event_type_of(SessionEnded), good, source="/ioc/kiosk")
        headers = [(k, v if k != "ce_id" else f"poison-{marker}".encode()) for k, v in valid.headers]
        bad_json = EncodedEvent(valid.topic, valid.key, b"{not json", headers, "x")
        broken = EncodedEvent(
            valid.topic,
            valid.key,
            b'{"session_id": "x", "outcome": "exploded"}',
            [(k, v if k != "ce_id" else f"poison2-{marker}".encode()) for k, v in valid.headers],
            "y",
        )
        unknown = EncodedEvent(
            valid.topic,
            valid.key,
            valid.value,
            [
                (
                    k,
                    (
                        b"ioc.kiosk.nonsense.v9"
                        if k == "ce_type"
                        else f"poison3-{marker}".encode()
                        if k == "ce_id"
                        else v
                    ),
                )
                for k, v in valid.headers
            ],
            "z",
        )
        null_time = EncodedEvent(
            valid.topic,
            valid.key,
            b'{"session_id": "x"}',
            [
                (k, (None if k == "ce_time" else f"poison4-{marker}".encode() if k == "ce_id" else v))
                for k, v in valid.headers
            ],
            "n",
        )
        await publisher.publish([bad_json, broken, unknown, null_time])
        await publisher.stop()
        await ingest_sessions(client, admin_key, kiosks, n, ledger)  # valid events after the poison

        async with ProcessorRuntime(processor, kafka, driver=driver).running() as rt:
            await rt.drain(timeout=40)
            dead_lettered = rt.core.dead_lettered
    final = await wait_for_sessions_total(kafka, source, district, 2 * n, timeout=20)
    assert final == 2 * n == len(ledger.accepted_set)
    dead = await read_topic(kafka, DEAD_LETTER_TOPIC.name, raw=True, timeout=10)
    mine = [dict(r.headers) for r in dead if dict(r.headers).get("dlq_consumer") == name.encode()]
    # Every record this processor dead-lettered is on the topic once, and it dead-lettered only poison: this
    # test's four, and on a shared cluster (tests/kafka) the poison an earlier run left on the topic.
    assert len(mine) == dead_lettered
    assert all(h["ce_id"].startswith(b"poison") for h in mine)
    ours = sorted(h["ce_id"].decode() for h in mine if h["ce_id"].endswith(marker.encode()))
    assert ours == [f"{kind}-{marker}" for kind in ("poison", "poison2", "poison3", "poison4")]
    assert {h["dlq_topic"] for h in mine} == {SESSIONS_TOPIC.name.encode()}
    assert all(h["dlq_error"] for h in mine)
