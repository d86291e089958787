"""Kiosk domain objects → CloudEvents on the kiosk topics.

Event ids are derived from what the event is (kiosk + time, session id, registry version), so a retried
request publishes the same ids again and consumers deduplicate on CloudEvents ``source`` + ``id``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import EncodedEvent, encode
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
        kiosk_id=row["kiosk_id"], building=row["building"], address=row["address"], district=row["district"],
        commune=row["commune"], opening_hours=row["opening_hours"], peripherals=list(row["peripherals"]),
        software_version=row["software_version"], in_service_since=row["in_service_since"],
        active=row["active"], version=row["version"],
    )


def registration_events(rows: Iterable[Mapping], source: str) -> list[EncodedEvent]:
    return [encode(REGISTRATION, registration(r), source=source, id=f"reg:{r['kiosk_id']}:{r['version']}")
            for r in rows]


def heartbeat_events(heartbeats: Iterable[HeartbeatReceived], source: str) -> list[EncodedEvent]:
    """Each heartbeat, plus the latest one per kiosk on the compacted last-seen topic."""
    out: list[EncodedEvent] = []
    latest: dict[str, HeartbeatReceived] = {}
    for hb in heartbeats:
        at = hb.at.isoformat()
        out.append(encode(HEARTBEAT, hb, source=source, id=f"hb:{hb.kiosk_id}:{at}"))
        if hb.kiosk_id not in latest or hb.at > latest[hb.kiosk_id].at:
            latest[hb.kiosk_id] = hb
    for hb in latest.values():
        seen = KioskLastSeen(kiosk_id=hb.kiosk_id, at=hb.at, app_version=hb.app_version)
        out.append(encode(LAST_SEEN, seen, source=source, id=f"ls:{hb.kiosk_id}:{hb.at.isoformat()}"))
    return out


def peripheral_events(changes: Iterable[PeripheralStatusChanged], source: str) -> list[EncodedEvent]:
    return [encode(PERIPHERAL, c, source=source, id=f"pd:{c.kiosk_id}:{c.peripheral}:{c.at.isoformat()}")
            for c in changes]


def session_events(sessions: Iterable[SessionEnded], source: str) -> list[EncodedEvent]:
    return [encode(SESSION, s, source=source, id=f"ses:{s.kiosk_id}:{s.session_id}") for s in sessions]
