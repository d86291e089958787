"""Authenticated event sources (finding 1 of issue #40): a forged event on every consumed topic is refused.

An anonymous Kafka client used to produce well-formed CloudEvents that every consumer applied: kiosk sessions
on the console went from 5 to 55 and a forged "cleared" closed a real dossier alarm. Now each consumer checks
that a record was signed by its topic's owner (``shared/contracts/provenance.py``); the others go to the
dead-letter topic with the reason and are counted in ``ioc_events_unauthenticated_total``.

Every consumed topic is covered: the sources of every stream processor of the registry (through
``ProcessorCore``, the step all drivers share) and the topics of the services' ``EventConsumer``s (the city
store's KPI and alarm topics, the traffic measures store). Three forgeries per topic: unsigned (the anonymous
client of the finding), signed with another producer's key, and the owner's signature over altered content.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import REGISTRY

from ioc.registry import SERVICES, available, load
from shared.contracts import EVENT_TYPES, TOPICS
from shared.contracts.cloudevents import EncodedEvent, decode_batch, encode
from shared.contracts.common import DEAD_LETTER_TOPIC, AlarmChanged, KpiObserved
from shared.contracts.provenance import (
    MAC_HEADER,
    SIGNER_HEADER,
    EventSigner,
    EventVerifier,
    _mac,
    generate_keys,
    parse_keys,
    producing_principals,
)
from shared.kafka import EventConsumer, EventPublisher, ensure_topics
from shared.stream.core import ProcessorCore, changelog_topic
from shared.testing import read_topic

pytestmark = pytest.mark.integration
NOW = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
KEYS_TEXT = ",".join(f"{k}={v}" for k, v in generate_keys(producing_principals()).items())
KEYS = parse_keys(KEYS_TEXT)
# A key the broker-reaching attacker holds: a real principal's, but not the owner of what it forges.
THIEF = base64.b64encode(b"t" * 32).decode()


def valid_payload(topic: str) -> tuple[str, dict] | None:
    """An event type of ``topic`` and a payload its consumers accept, when one is known."""
    owner = TOPICS[topic].owner
    for et in EVENT_TYPES.values():
        if et.topic != topic:
            continue
        if et.model is KpiObserved:
            return et.type, {
                "kpi": f"{owner}.sessions",
                "scope_level": "city",
                "scope_code": "HN",
                "window_start": NOW,
                "window_seconds": 3600,
                "value": 55.0,
                "numerator": 55.0,
                "denominator": None,
                "unit": "count",
                "partition": 0,
                "observed_at": NOW,
                "key": f"{owner}.sessions|city|HN",
            }
        if et.model is AlarmChanged:
            return et.type, {
                "alarm_id": f"{owner}:overdue:X1",
                "domain": owner,
                "alarm_type": "overdue",
                "state": "cleared",
                "severity": "major",
                "source_id": "X1",
                "at": NOW,
                "message": "forged",
            }
        if et.examples:
            return et.type, dict(et.examples[0])
    return None


def event_for(topic: str, n: int) -> EncodedEvent:
    found = valid_payload(topic)
    if found is not None:
        etype, payload = found
        return encode(EVENT_TYPES[etype], payload, source="/ioc/forger", id=f"forged-{topic}-{n}")
    # No valid payload known for this type: the forgery is caught before the payload is even read.
    etype = next(et for et in EVENT_TYPES.values() if et.topic == topic)
    ev = encode(etype, {etype.key_field: "X1"}, source="/ioc/forger", id=f"forged-{topic}-{n}")
    return ev


def as_record(topic: str, offset: int, ev: EncodedEvent) -> ConsumerRecord:
    return ConsumerRecord(
        topic, 0, offset, 0, 0, ev.key, ev.value, None, len(ev.key), len(ev.value), list(ev.headers)
    )


def forgeries(topic: str) -> tuple[list[tuple[str, EncodedEvent]], EncodedEvent | None]:
    """``([(reason, forged event), ...], genuine event or None)`` for ``topic``."""
    owner = TOPICS[topic].owner
    unsigned = event_for(topic, 1)
    thief = "kiosk" if owner != "kiosk" else "meter"
    wrong = event_for(topic, 2)
    wrong.headers.append((SIGNER_HEADER, thief.encode()))
    wrong.headers.append(
        (MAC_HEADER, _mac(KEYS[thief], topic.encode(), wrong.key, wrong.value, wrong.headers))
    )
    altered = event_for(topic, 3)
    EventSigner(KEYS).sign([altered])
    altered.value += b" "  # the same JSON to a parser, not the bytes the owner signed
    genuine = None
    if valid_payload(topic) is not None:
        genuine = event_for(topic, 4)
        EventSigner(KEYS).sign([genuine])
    return [("unsigned", unsigned), ("wrong_producer", wrong), ("bad_mac", altered)], genuine


def refused(consumer: str, topic: str, reason: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "ioc_events_unauthenticated_total", {"consumer": consumer, "topic": topic, "reason": reason}
        )
        or 0.0
    )


def processors():
    found = []
    for entry in SERVICES:
        if available(entry.processors):
            settings = load(entry.settings)()
            found += [f(settings) for f in load(entry.processors)]
    return found


# Units --------------------------------------------------------------------------------------------------------
def test_signed_events_verify_and_every_forgery_has_its_reason():
    topic = "ioc.meter.readings"
    forged, genuine = forgeries(topic)
    assert genuine is not None
    verifier = EventVerifier(KEYS)
    assert verifier.reason(as_record(topic, 0, genuine), topic) is None
    for reason, ev in forged:
        assert verifier.reason(as_record(topic, 0, ev), topic) == reason
    # Moving a genuine record to another topic of the same owner breaks its MAC (the topic is signed).
    assert verifier.reason(as_record("ioc.meter.events", 0, genuine), "ioc.meter.events") == "bad_mac"
    # A key id nobody configured, and a header without a value, are refused, not a crash.
    stranger = event_for(topic, 5)
    stranger.headers += [(SIGNER_HEADER, b"nobody"), (MAC_HEADER, b"0" * 16)]
    assert verifier.reason(as_record(topic, 0, stranger), topic) == "unknown_key"
    nulled = event_for(topic, 6)
    EventSigner(KEYS).sign([nulled])
    nulled.headers.insert(0, ("x", None))  # type: ignore[arg-type]
    good, bad = verifier.verify([as_record(topic, 0, nulled)], topic, "unit")
    assert good == [] and "bad_mac" in bad[0][1]


def test_signed_records_still_decode_on_the_positional_fast_path():
    topic = "ioc.meter.readings"
    _, genuine = forgeries(topic)
    events, failed = decode_batch([as_record(topic, 0, genuine)], TopicPartition(topic, 0))
    assert failed == [] and events[0].data["meter_id"] == "MTR-000001"


def test_keys_parse_from_text_and_file_and_refuse_weak_ones(tmp_path):
    f = tmp_path / "keys.json"
    f.write_text(orjson.dumps({"meter": base64.b64encode(b"m" * 32).decode()}).decode())
    keys = parse_keys("traffic#2=" + base64.b64encode(b"t" * 32).decode(), f)
    assert keys == {"meter": b"m" * 32, "traffic#2": b"t" * 32}
    with pytest.raises(ValueError, match="shorter"):
        parse_keys("meter=" + base64.b64encode(b"short").decode())


# Every consumed topic ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("processor", processors(), ids=lambda p: p.name)
async def test_forged_events_on_every_source_of_every_processor_are_dead_lettered(
    processor, kafka_settings, topics_ready
):
    kafka = kafka_settings.model_copy(update={"event_keys": KEYS_TEXT})
    processor.name = f"sec-{processor.name}-{uuid.uuid4().hex[:6]}"  # its own changelog and metric labels
    processor.emit_interval_seconds = float("inf")  # publish no KPI from these records
    changelog = changelog_topic(processor, 1)
    await ensure_topics(kafka, [changelog])
    core = ProcessorCore(processor, kafka, EventPublisher(kafka, client_id="sec-provenance"), changelog)
    await core.start()
    try:
        records: dict[TopicPartition, list[ConsumerRecord]] = {}
        genuine_count = 0
        for topic in processor.topics:
            forged, genuine = forgeries(topic)
            events = [ev for _, ev in forged] + ([genuine] if genuine is not None else [])
            genuine_count += genuine is not None
            records[TopicPartition(topic, 0)] = [as_record(topic, i, ev) for i, ev in enumerate(events)]
        await core.process(records)
        await core.flush()
        for topic in processor.topics:
            for reason in ("unsigned", "wrong_producer", "bad_mac"):
                assert refused(processor.name, topic, reason) == 1, (topic, reason)
        assert core.dead_lettered == 3 * len(processor.topics)
        assert core.processed == genuine_count  # only the owner's genuine events were applied
    finally:
        await core.stop()
        await core.publisher.stop()


async def test_forged_alarms_and_kpis_never_reach_the_city_store_and_are_dead_lettered_with_the_reason(
    kafka_settings, topics_ready
):
    from services.city.app import store_topics

    topics = set(store_topics())  # (other test modules may have registered domains of their own)
    if any(s.name == "traffic" for s in SERVICES):
        topics.add("ioc.traffic.measures")
    topics = sorted(topics)
    kafka = kafka_settings.model_copy(update={"event_keys": KEYS_TEXT})
    name = f"sec-store-{uuid.uuid4().hex[:6]}"
    delivered = []

    async def handler(events):
        delivered.extend(events)

    publisher = EventPublisher(kafka, client_id="sec-provenance")
    consumer = EventConsumer(kafka, group_id=name, topics=topics, handler=handler, publisher=publisher)
    records, genuine_ids = [], set()
    for topic in topics:
        forged, genuine = forgeries(topic)
        records += [as_record(topic, i, ev) for i, (_, ev) in enumerate(forged)]
        if genuine is not None:
            records.append(as_record(topic, 3, genuine))
            genuine_ids.add((topic, genuine.id))
    try:
        await consumer.process_records(records)
    finally:
        await publisher.stop()
    assert {(e.topic, e.id) for e in delivered} == genuine_ids
    for topic in topics:
        for reason in ("unsigned", "wrong_producer", "bad_mac"):
            assert refused(name, topic, reason) == 1, (topic, reason)
    dead = [
        r
        for r in await read_topic(kafka, DEAD_LETTER_TOPIC.name, raw=True)
        if dict(r.headers).get("dlq_consumer") == name.encode()
    ]
    assert len(dead) == 3 * len(topics)
    assert all(dict(r.headers)["dlq_error"].startswith(b"unauthenticated producer") for r in dead)


async def test_the_publisher_signs_what_it_publishes_for_its_owner(kafka_settings, topics_ready):
    kafka = kafka_settings.model_copy(update={"event_keys": KEYS_TEXT})
    topic = "ioc.meter.readings"
    marker = uuid.uuid4().hex
    ev = event_for(topic, 7)
    ev.headers[0] = ("ce_id", marker.encode())
    publisher = EventPublisher(kafka, client_id="sec-provenance")
    try:
        await publisher.publish([ev])
    finally:
        await publisher.stop()
    found = [
        r for r in await read_topic(kafka, topic, raw=True) if dict(r.headers).get("ce_id") == marker.encode()
    ]
    assert len(found) == 1
    assert EventVerifier(KEYS).reason(found[0], topic) is None
