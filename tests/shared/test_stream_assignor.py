"""Co-partitioned ownership: the assignor in isolation, then every multi-topic processor scaled out on the broker.

A processor keeps state per source partition number, so a worker must hold partition *p* of every source topic
or of none. aiokafka's round robin (also what Faust uses for an app without tables) assigns topic partitions
one by one: with two workers of ``kiosk-kpi``, ``city-kpi`` or ``traffic-signals`` (and 4–5 of ``meter-kpi``)
some partition's topics ended up split between workers.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

from services.city.processors import city_kpi_processor
from services.kiosk.processors import KioskKpiProcessor
from services.meter.processors import MeterKpiProcessor
from services.traffic.processors import traffic_processor
from services.traffic.settings import TrafficSettings
from shared.stream.assignor import CoPartitionedAssignor, copartitioned_assignment
from shared.stream.core import whole_partitions
from shared.stream.runtime import ProcessorRuntime


def test_partition_numbers_are_shared_out_evenly_and_deterministically():
    got = copartitioned_assignment(8, {"b": [], "a": [], "c": []})
    assert got == {"a": [0, 1, 2], "b": [3, 4, 5], "c": [6, 7]}
    assert copartitioned_assignment(8, {"c": [], "a": [], "b": []}) == got
    assert copartitioned_assignment(2, {"a": [], "b": [], "c": []}) == {"a": [0], "b": [1], "c": []}


def test_a_member_keeps_what_it_owned_when_balance_allows():
    # a newcomer takes one partition from the member with most; nobody else's partitions move
    got = copartitioned_assignment(6, {"a": [0, 1, 2], "b": [3, 4, 5], "new": []})
    assert got["a"] == [0, 1] or got["a"] == [0, 1, 2]
    assert set(got["b"]) <= {3, 4, 5} and set(got["a"]) <= {0, 1, 2}
    assert sorted(got["a"] + got["b"] + got["new"]) == list(range(6))
    assert [len(got[m]) for m in ("a", "b", "new")] == [2, 2, 2]
    # a member leaving: the survivors keep theirs and share its partitions
    got = copartitioned_assignment(6, {"a": [0, 1], "new": [4, 5]})
    assert set(got["a"]) >= {0, 1} and set(got["new"]) >= {4, 5}
    assert sorted(got["a"] + got["new"]) == list(range(6))
    # two members claiming the same partition (a zombie's stale claim): one owner
    got = copartitioned_assignment(2, {"a": [0, 1], "b": [0]})
    assert sorted(got["a"] + got["b"]) == [0, 1] and len(got["a"]) == len(got["b"]) == 1


class _Cluster:
    """The part of aiokafka's ClusterMetadata an assignor reads."""

    def __init__(self, partitions: dict[str, int]):
        self.partitions = partitions

    def partitions_for_topic(self, topic):
        n = self.partitions.get(topic)
        return None if n is None else set(range(n))


def test_the_assignor_gives_every_topic_of_a_partition_number_to_one_member():
    topics = ["reg", "hb", "per", "ses"]
    members = {f"m{i}": CoPartitionedAssignor().metadata(topics) for i in range(2)}
    members = {m: ConsumerProtocolMemberMetadata.decode(md.encode()) for m, md in members.items()}
    result = CoPartitionedAssignor().assign(_Cluster(dict.fromkeys(topics, 3)), members)
    holders: dict[int, set[str]] = {}
    for m, assignment in result.items():
        tps = [TopicPartition(t, p) for t, ps in assignment.assignment for p in ps]
        assert len(tps) == len(topics) * len(whole_partitions(tps, topics)), f"{m} holds a split partition"
        for tp in tps:
            holders.setdefault(tp.partition, set()).add(m)
    assert sorted(holders) == [0, 1, 2] and all(len(h) == 1 for h in holders.values())


def test_members_send_back_what_they_own_and_keep_it():
    topics = ["a", "b"]
    first, second = CoPartitionedAssignor(), CoPartitionedAssignor()
    cluster = _Cluster({"a": 4, "b": 4})
    result = first.assign(cluster, {"m1": first.metadata(topics)})
    first.on_assignment(result["m1"])
    assert first.owned == {0, 1, 2, 3}
    md = {"m1": first.metadata(topics), "m2": second.metadata(topics)}
    md = {m: ConsumerProtocolMemberMetadata.decode(x.encode()) for m, x in md.items()}
    result = first.assign(cluster, md)
    m1 = {p for _, ps in result["m1"].assignment for p in ps}
    m2 = {p for _, ps in result["m2"].assignment for p in ps}
    assert len(m1) == len(m2) == 2 and m1 | m2 == {0, 1, 2, 3}


# On the broker ------------------------------------------------------------------------------------------------
def _processors():
    return {
        "kiosk-kpi": (
            lambda: KioskKpiProcessor(heartbeat_timeout_s=3600, kpi_interval_s=1, tick_seconds=1),
            2,
        ),
        "city-kpi": (lambda: city_kpi_processor(), 2),
        "traffic-signals": (lambda: traffic_processor(TrafficSettings()), 2),
        "meter-kpi": (lambda: MeterKpiProcessor(), 5),
    }


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("processor", list(_processors()))
async def test_every_worker_of_a_scaled_out_processor_owns_whole_partitions(
    kafka_settings, topics_ready, processor
):
    make, workers = _processors()[processor]
    group = f"{processor}-{uuid.uuid4().hex[:6]}"
    runtimes = []
    for _ in range(workers):
        p = make()
        p.name = group  # a consumer group and changelog of this test only
        runtimes.append(ProcessorRuntime(p, kafka_settings, driver="aiokafka"))
    topics = runtimes[0].processor.topics
    partitions = runtimes[0].partitions
    await asyncio.gather(*(rt.start() for rt in runtimes))
    try:
        # all members joined one generation and every partition number is held by someone
        async with asyncio.timeout(60):
            while True:
                assignments = [rt.driver.consumer.assignment() for rt in runtimes]
                generations = {rt.driver.consumer._coordinator.generation for rt in runtimes}
                if len(generations) == 1 and sum(len(a) for a in assignments) == len(topics) * partitions:
                    break
                await asyncio.sleep(0.2)
        owners: dict[int, int] = {}
        for i, assigned in enumerate(assignments):
            whole = whole_partitions(assigned, topics)
            assert set(assigned) == {TopicPartition(t, p) for t in topics for p in whole}, (
                f"worker {i} of {processor} holds part of a partition: {sorted(assigned)}"
            )
            for p in whole:
                assert p not in owners, f"partition {p} owned by workers {owners[p]} and {i}"
                owners[p] = i
        assert sorted(owners) == list(range(partitions))
    finally:
        await asyncio.gather(*(rt.stop() for rt in runtimes), return_exceptions=True)
