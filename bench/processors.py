"""Processors used by the platform-level paths: the same aggregation as the baselines (count per action)."""

from __future__ import annotations

from datetime import datetime

from bench.workload import AUDIT
from shared.contracts.cloudevents import encode
from shared.contracts.common import domain_topics
from shared.stream import State, StreamProcessor

BENCH_KPI, _ = domain_topics("bench", owner="bench", partitions=4)


class ActionCounts(StreamProcessor):
    """Counts events per action and emits one KPI observation per changed action per batch."""

    name = "bench-action-counts"
    topics = (AUDIT.topic,)
    tick_seconds = 1.0

    def __init__(self, name: str | None = None):
        if name:
            self.name = name  # type: ignore[misc]  # a bench copy under another name

    def apply(self, event, state: State) -> None:
        action = event.data["action"]
        state.put(action, state.get(action, 0) + 1)
        state.put(f"changed:{action}", 1)

    def apply_batch(self, events, state: State) -> None:
        # Aggregate in memory, write each key once per batch.
        counts: dict[str, int] = {}
        for ev in events:
            a = ev.data["action"]
            counts[a] = counts.get(a, 0) + 1
        for a, n in counts.items():
            state.put(a, state.get(a, 0) + n)
            state.put(f"changed:{a}", 1)

    def emit(self, state: State, now: datetime):
        out = []
        for key, _ in state.items("changed:"):
            action = key.split(":", 1)[1]
            n = float(state.get(action, 0))
            out.append(
                encode(
                    BENCH_KPI,
                    {
                        "kpi": f"bench.{action}",
                        "scope_level": "city",
                        "scope_code": "HN",
                        "window_start": "2026-11-01T00:00:00Z",
                        "window_seconds": 86400,
                        "value": n,
                        "numerator": n,
                        "denominator": None,
                        "unit": "count",
                        "partition": state.partition,
                        "observed_at": now.isoformat(),
                        "key": f"bench.{action}|city|HN",
                    },
                    source="/ioc/bench",
                )
            )
            state.pop(key)
        return out
