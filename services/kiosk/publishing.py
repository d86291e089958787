"""Kiosk domain objects → CloudEvents on the kiosk topics.

Event ids are derived from what the event is (kiosk + time, session id, registry version), so a retried
request publishes the same ids again and consumers deduplicate on CloudEvents ``source`` + ``id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import TypeAdapter

from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import EncodedEvent, encode, encode_many
from shared.contracts.kiosk import (
    HeartbeatReceived,
    KioskLastSeen,
    KioskRegistered,
    PeripheralStatusChanged,
    SessionEnded,
)

HEARTBEAT = event_type_of(HeartbeatReceived)
LAST_SEEN = event_type_of(KioskLastSeen)
PERIPHERAL = event_type_of(PeripheralStatusChanged)
SESSION = event_type_of(SessionEnded)
REGISTRATION = event_type_of(KioskRegistered)


def registration(row: Mapping) -> KioskRegistered:
    """The registry event of a stored kiosk row."""
    return KioskRegistered(
        kiosk_id=row["kiosk_id"],
        building=row["building"],
        address=row["address"],
        district=row["district"],
        commune=row["commune"],
        opening_hours=row["opening_hours"],
        peripherals=list(row["peripherals"]),
        software_version=row["software_version"],
        in_service_since=row["in_service_since"],
        active=row["active"],
        version=row["version"],
    )


def registration_events(rows: Iterable[Mapping], source: str) -> list[EncodedEvent]:
    return [
        encode(REGISTRATION, registration(r), source=source, id=f"reg:{r['kiosk_id']}:{r['version']}")
        for r in rows
    ]


def _dump(model: type, items: list) -> list[dict]:
    """``model_dump(mode="json")`` of many validated models in one pydantic-core call (the ingest hot path)."""
    adapter = _ADAPTERS.get(model)
    if adapter is None:
        adapter = _ADAPTERS[model] = TypeAdapter(list[model])  # type: ignore[valid-type]  # the model is data
    return adapter.dump_python(items, mode="json")


_ADAPTERS: dict[type, TypeAdapter] = {}


def heartbeat_events(heartbeats: Iterable[HeartbeatReceived], source: str) -> list[EncodedEvent]:
    """Each heartbeat, plus the latest one per kiosk on the compacted last-seen topic."""
    heartbeats = list(heartbeats)
    latest: dict[str, HeartbeatReceived] = {}
    for hb in heartbeats:
        if hb.kiosk_id not in latest or hb.at > latest[hb.kiosk_id].at:
            latest[hb.kiosk_id] = hb
    out = encode_many(
        HEARTBEAT,
        _dump(HeartbeatReceived, heartbeats),
        source=source,
        ids=[f"hb:{hb.kiosk_id}:{hb.at.isoformat()}" for hb in heartbeats],
    )
    seen = [
        {"kiosk_id": d["kiosk_id"], "at": d["at"], "app_version": d["app_version"]}  # KioskLastSeen's fields
        for d in _dump(HeartbeatReceived, list(latest.values()))
    ]
    out += encode_many(
        LAST_SEEN,
        seen,
        source=source,
        ids=[f"ls:{hb.kiosk_id}:{hb.at.isoformat()}" for hb in latest.values()],
    )
    return out


def peripheral_events(changes: Iterable[PeripheralStatusChanged], source: str) -> list[EncodedEvent]:
    changes = list(changes)
    return encode_many(
        PERIPHERAL,
        _dump(PeripheralStatusChanged, changes),
        source=source,
        ids=[f"pd:{c.kiosk_id}:{c.peripheral}:{c.at.isoformat()}" for c in changes],
    )


def session_events(sessions: Iterable[SessionEnded], source: str) -> list[EncodedEvent]:
    sessions = list(sessions)
    return encode_many(
        SESSION,
        _dump(SessionEnded, sessions),
        source=source,
        ids=[f"ses:{s.kiosk_id}:{s.session_id}" for s in sessions],
    )
