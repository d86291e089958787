"""A tiny processor used to test the runtime: counts audit events per action, emits a KPI per action."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import encode
from shared.contracts.common import domain_topics
from shared.contracts.platform import AUDIT_TOPIC, AuditRecorded
from shared.stream import State, StreamProcessor

KPI_TYPE, _ = domain_topics("streamtest", owner="tests")


class ActionCounter(StreamProcessor):
    name = "test-action-counter"
    topics = (AUDIT_TOPIC.name,)
    tick_seconds = 0.5

    def __init__(self, name: str | None = None):
        if name:
            self.name = name

    def apply(self, event, state: State) -> None:
        action = event.data["action"]
        key = f"count:{action}"
        state[key] = state.get(key, 0) + 1
        state[f"dirty:{action}"] = True

    def emit(self, state: State, now: datetime):
        out = []
        for key, _ in state.items("dirty:"):
            action = key.split(":", 1)[1]
            n = state.get(f"count:{action}", 0)
            out.append(
                encode(
                    KPI_TYPE,
                    {
                        "kpi": f"streamtest.{action}",
                        "scope_level": "city",
                        "scope_code": "HN",
                        "window_start": "2026-01-01T00:00:00Z",
                        "window_seconds": 86400,
                        "value": float(n),
                        "numerator": float(n),
                        "denominator": None,
                        "unit": "count",
                        "partition": state.partition,
                        "observed_at": now.isoformat(),
                        "key": f"streamtest.{action}|city|HN",
                    },
                    source="/ioc/test",
                )
            )
            state.pop(key)
        return out


def audit(action: str, target: str) -> AuditRecorded:
    return AuditRecorded(principal="p", action=action, target=target, at=datetime.now(UTC), service="t")


AUDIT = event_type_of(AuditRecorded)
