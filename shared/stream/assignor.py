"""Co-partitioned assignment: a worker owns partition *p* of every source topic of its processor, or none.

A processor's state is kept per source partition *number* (the kiosk state of partition 2 folds the registry,
heartbeats, peripherals and sessions of partition 2 of each topic). aiokafka's default assignors (round robin,
range) hand out topic partitions one topic at a time, and Faust falls back to round robin when an app has no
tables: two workers of ``kiosk-kpi`` then both held partitions 0, 1 and 2 of some topic each, folded halves of
one partition into two copies of its state and wrote the same changelog partition. Kafka Streams and Faust's
own table assignor co-partition instead; this assignor does the same for any aiokafka consumer group
(``partition_assignment_strategy``), the Faust driver's included.

The assignment is balanced (each member gets ``floor`` or ``ceil`` of partitions / members) and sticky: a member
keeps the partition numbers it owned (it says which in its subscription's user data) as long as that stays
balanced, so a rebalance moves only what it must and every moved partition's state is recovered once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import orjson
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

log = logging.getLogger(__name__)


def copartitioned_assignment(partitions: int, members: Mapping[str, Iterable[int]]) -> dict[str, list[int]]:
    """Partition numbers ``0..partitions-1`` over ``members`` (member id → numbers it owned before): balanced,
    keeping previous owners where balance allows, deterministic (members in id order)."""
    ids = sorted(members)
    if not ids:
        return {}
    low, extra = divmod(partitions, len(ids))
    # The members that may hold one more: those that already hold the most, then in id order (deterministic).
    previous = {m: sorted({p for p in members[m] if 0 <= p < partitions}) for m in ids}
    by_claim = sorted(ids, key=lambda m: (-len(previous[m]), m))
    capacity = {m: low + (1 if i < extra else 0) for i, m in enumerate(by_claim)}
    owner: dict[int, str] = {}
    result: dict[str, list[int]] = {m: [] for m in ids}
    for m in by_claim:
        for p in previous[m]:
            if p not in owner and len(result[m]) < capacity[m]:
                owner[p] = m
                result[m].append(p)
    free = [p for p in range(partitions) if p not in owner]
    for m in ids:
        while len(result[m]) < capacity[m] and free:
            p = free.pop(0)
            owner[p] = m
            result[m].append(p)
    for m in ids:
        result[m].sort()
    return result


class CoPartitionedAssignor(AbstractPartitionAssignor):
    """An aiokafka assignor that gives each member whole partition numbers across all its subscribed topics.

    Members of one processor subscribe to the same topics. Topics are grouped by partition count; within a
    group, partition *p* of every topic goes to the same member. (A processor's source topics all have the same
    count: ``shared.stream.runtime.source_partitions`` refuses to run otherwise.)
    """

    name = "ioc-copartitioned"
    version = 0

    def __init__(self) -> None:
        #: partition numbers this member got in the last assignment (sent back for stickiness)
        self.owned: set[int] = set()

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:  # type: ignore[override]
        return ConsumerProtocolMemberMetadata(
            self.version, sorted(topics), orjson.dumps({"owned": sorted(self.owned)})
        )

    def assign(  # type: ignore[override]
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        subscribed: dict[str, set[str]] = {m: set(md.subscription) for m, md in members.items()}
        previous: dict[str, list[int]] = {}
        for m, md in members.items():
            try:
                previous[m] = list(orjson.loads(md.user_data or b"{}").get("owned", []))
            except (orjson.JSONDecodeError, AttributeError, TypeError):
                previous[m] = []  # another assignor's member data: no stickiness, still correct
        # topics by partition count, then by the set of members subscribed (both must match to co-partition)
        groups: dict[tuple[int, frozenset[str]], list[str]] = {}
        for topic in sorted(set().union(*subscribed.values()) if subscribed else ()):
            parts = cluster.partitions_for_topic(topic)
            if not parts:
                log.warning("no partition metadata for topic %s: not assigned", topic)
                continue
            count = max(parts) + 1
            who = frozenset(m for m, topics in subscribed.items() if topic in topics)
            groups.setdefault((count, who), []).append(topic)
        per_member: dict[str, dict[str, list[int]]] = {m: {} for m in members}
        for (count, who), topics in sorted(groups.items(), key=lambda g: (g[0][0], sorted(g[0][1]))):
            numbers = copartitioned_assignment(count, {m: previous[m] for m in who})
            for m, ps in numbers.items():
                for topic in topics:
                    existing = cluster.partitions_for_topic(topic) or set()
                    per_member[m][topic] = [p for p in ps if p in existing]
        return {
            m: ConsumerProtocolMemberAssignment(self.version, sorted(per_member[m].items()), b"")
            for m in members
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:  # type: ignore[override]
        self.owned = {p for _, partitions in assignment.assignment for p in partitions}
