"""Traffic domain objects → CloudEvents for the publisher."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from shared.contracts.cloudevents import EncodedEvent, encode
from shared.contracts.traffic import HiResEventsLogged, IntersectionConfigured

from .domain import iso_ms

HIRES = HiResEventsLogged.__ioc_event_type__  # type: ignore[attr-defined]
CONFIGURED = IntersectionConfigured.__ioc_event_type__  # type: ignore[attr-defined]


def hires_chunks(
    source: str,
    intersection: dict[str, Any],
    events: Sequence[tuple[int, int, int]],
    chunk_size: int,
    *,
    backfill: bool = False,
    final: bool = False,
) -> list[EncodedEvent]:
    """Time-ordered ``(t_ms, code, param)`` events of one controller as chunk records (``backfill``: history;
    ``final``: the last chunk of the backfill is marked so that its measures are completed).

    The CloudEvents id is a digest of the chunk's content, so a chunk published twice (a retried request)
    is dropped by consumers that deduplicate on source + id.
    """
    out = []
    cid = intersection["controller_id"]
    for i in range(0, len(events), chunk_size):
        part = events[i : i + chunk_size]
        payload = {
            "controller_id": cid,
            "intersection_id": intersection["intersection_id"],
            "district": intersection["district"],
            "events": [{"t": iso_ms(t), "code": code, "param": param} for t, code, param in part],
        }
        last = i + chunk_size >= len(events)
        if backfill:
            payload["backfill"] = True
            payload["final"] = final and last
        digest = hashlib.blake2b(
            repr((cid, part, backfill, final and last)).encode(), digest_size=16
        ).hexdigest()
        out.append(encode(HIRES, payload, source=source, id=f"hires-{digest}", time=iso_ms(part[-1][0])))
    return out


def intersection_configured(source: str, row: dict[str, Any]) -> EncodedEvent:
    """The registry record of an intersection (full configuration, compacted by controller id)."""
    payload = IntersectionConfigured(
        intersection_id=row["intersection_id"],
        controller_id=row["controller_id"],
        name=row["name"],
        district=row["district"],
        lat=float(row["lat"]),
        lon=float(row["lon"]),
        phases=list(row["phases"]),
        detectors=row["detectors"],
        revision=row["revision"],
    )
    # The id names the revision: the outbox relay may publish a record twice, consumers drop the second.
    return encode(CONFIGURED, payload, source=source, id=f"cfg:{row['intersection_id']}:{row['revision']}")
