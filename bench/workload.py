"""Generated workloads, the same for every path of a run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import EncodedEvent, encode
from shared.contracts.platform import AuditRecorded

AUDIT = event_type_of(AuditRecorded)
ACTIONS = [f"action{i}" for i in range(16)]


def small_events(n: int, *, entities: int = 5000) -> list[EncodedEvent]:
    """~100-byte JSON events keyed by one of ``entities`` ids (the README's 'small JSON events')."""
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        encode(
            AUDIT,
            {
                "principal": f"e{i % entities}",
                "action": ACTIONS[i % len(ACTIONS)],
                "target": f"t{i % 97}",
                "at": (t0 + timedelta(milliseconds=i)).isoformat(),
                "service": "bench",
            },
            source="/ioc/bench",
            id=f"b{i}",
        )
        for i in range(n)
    ]
