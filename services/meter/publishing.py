"""Meter domain objects → CloudEvents (binary mode) for ``ctx.publisher``.

Event ids are deterministic (meter, OBIS/code, time): a record published twice (a retried request) has the
same CloudEvents ``source`` + ``id``, so consumers drop the second copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import CONTENT_TYPE, SPEC_VERSION, EncodedEvent, encode
from shared.contracts.meter import (
    FeederSupplyChanged,
    InterruptionRecorded,
    MeterEventRecorded,
    MeterReadingRecorded,
    MeterRegistered,
)

READING = event_type_of(MeterReadingRecorded)
EVENT = event_type_of(MeterEventRecorded)
INTERRUPTION = event_type_of(InterruptionRecorded)
SUPPLY = event_type_of(FeederSupplyChanged)
REGISTRY = event_type_of(MeterRegistered)


def reading_events(payloads: Iterable[dict[str, Any]], source: str) -> list[EncodedEvent]:
    """One record per validated reading, keyed by meter id, ``ce_time`` = interval end, ``ce_subject`` = OBIS.

    The ingest hot path: the same CloudEvents as :func:`shared.contracts.cloudevents.encode` gives, with the
    headers every reading shares built once per batch and the per-reading ones (id, time, subject) cached by
    value (a batch has few distinct interval ends and OBIS codes).
    """
    common = [
        ("ce_specversion", SPEC_VERSION),
        ("ce_source", source.encode()),
        ("ce_type", READING.type.encode()),
        ("ce_dataschema", READING.schema_id.encode()),
        ("content-type", CONTENT_TYPE),
    ]
    topic, tname, dumps = READING.topic, READING.type, orjson.dumps
    # (OBIS, interval end) → (event id suffix, ce_time header, ce_subject header)
    shared: dict[tuple[str, str], tuple[str, tuple[str, bytes], tuple[str, bytes]]] = {}
    out: list[EncodedEvent] = []
    append = out.append
    for p in payloads:
        mid = p["meter_id"]
        s = shared.get((p["obis"], p["interval_end"]))
        if s is None:
            obis, end = p["obis"], p["interval_end"]
            s = shared[(obis, end)] = (
                f":{obis}:{end}",
                ("ce_time", end.encode()),
                ("ce_subject", obis.encode()),
            )
        event_id = "r:" + mid + s[0]
        append(
            EncodedEvent(
                topic,
                mid.encode(),
                dumps(p),
                [("ce_id", event_id.encode()), s[1], s[2], *common],
                event_id,
                tname,
            )
        )
    return out


def estimate_events(payloads: Iterable[dict[str, Any]], source: str) -> list[EncodedEvent]:
    """Estimated readings of a gap's intervals (VEE): their own ids, so a real reading of the same interval
    arriving later is not taken for a copy of the estimate."""
    return [
        encode(
            READING,
            p,
            source=source,
            id=f"r:{p['meter_id']}:{p['obis']}:{p['interval_end']}:estimated",
            time=p["interval_end"],
            subject=p["obis"],
        )
        for p in payloads
    ]


def meter_events(payloads: Iterable[dict[str, Any]], source: str) -> list[EncodedEvent]:
    return [
        encode(EVENT, p, source=source, id=f"e:{p['meter_id']}:{p['at']}:{p['raw_code']}", time=p["at"])
        for p in payloads
    ]


def interruption_events(payloads: Iterable[dict[str, Any]], source: str) -> list[EncodedEvent]:
    return [
        encode(INTERRUPTION, p, source=source, id=f"i:{p['meter_id']}:{p['started_at']}", time=p["ended_at"])
        for p in payloads
    ]


def supply_events(payloads: Iterable[dict[str, Any]], source: str) -> list[EncodedEvent]:
    return [
        encode(SUPPLY, p, source=source, id=f"s:{p['meter_id']}:{p['supply']}:{p['at']}", time=p["at"])
        for p in payloads
    ]


def registry_events(payloads: Iterable[dict[str, Any]], source: str) -> list[EncodedEvent]:
    return [encode(REGISTRY, p, source=source) for p in payloads]
