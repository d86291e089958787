"""The traffic-signals processor's fault scenarios of docs/guarantees.md on Apache Kafka (RF 3, min ISR 2,
idempotent producers, transactions): kill -9 mid-batch twice, a slow consumer, duplicate deliveries across a
restart (poison: ``test_other_processors_poison.py``).

The ledger: controllers of this run only, each configured on the registry topic (``tests/traffic/test_domain.py``
``REGISTRY``: phases 2 and 4, an advance detector on phase 2) and logging the same hi-res events in three records:
two signal cycles of phase 2 with 7 vehicle arrivals on its advance detector (``two_cycles``; the arrivals are
worked out in ``tests/traffic/test_processors.py``), then two events past the end of the 08:00 bin plus its grace
and reorder hold, which close that bin. Reconciled: the phase-measure records of the 08:00 bin on
``ioc.traffic.measures`` (read_committed) of these intersections: exactly one per intersection and phase, with
7 arrivals on phase 2 and none on phase 4. A bin measured twice, or an event folded twice, would show.

The registry records go first, and the workers wait up to 15 minutes (not 30 s) of arrival time for a
controller's configuration (``tests/reliability/worker.py``): with the 30 s of production a consumer lagging the
registry topic that long measured controllers without their detectors (0 arrivals), although they had been
configured before their first event (found by the kill -9 scenario; reported, not changed here).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import encode
from shared.contracts.traffic import HiResEventsLogged, IntersectionConfigured
from tests.areas import area
from tests.kafka import processor_scenarios as scenarios
from tests.kafka.processor_scenarios import Workload, kafka_workers, read_committed
from tests.reliability.harness import uid
from tests.traffic.test_domain import REGISTRY, two_cycles
from tests.traffic.test_processors import end_of_bin_event

pytestmark = pytest.mark.slow

__all__ = ["kafka_workers"]

BIN = "2024-05-01T08:00:00Z"  # the bin of two_cycles (T0 of tests/traffic/test_domain.py)
MEASURES = "ioc.traffic.measures"


def workload(controllers: int) -> Workload:
    run = uid()
    district = area("LB")
    cycles = two_cycles()
    half = len(cycles) // 2
    chunks = [cycles[:half], cycles[half:], end_of_bin_event()]
    ids = [(f"C-{run}-{i}", f"I-{run}-{i}") for i in range(controllers)]
    configs, events = [], []
    for cid, iid in ids:  # controller after controller: the measures grow along the stream
        config = {
            "intersection_id": iid,
            "controller_id": cid,
            "name": "Kim Mã - Giảng Võ",
            "district": district,
            "lat": 21.03,
            "lon": 105.82,
            "revision": 1,
            **REGISTRY,
        }
        configs.append(
            encode(event_type_of(IntersectionConfigured), config, source="/ioc/traffic", id=f"{cid}:cfg")
        )
        for n, chunk in enumerate(chunks):
            payload = {
                "controller_id": cid,
                "intersection_id": iid,
                "district": district,
                "events": [
                    {"t": datetime.fromtimestamp(t / 1000, UTC).isoformat(), "code": c, "param": p}
                    for t, c, p in chunk
                ],
            }
            events.append(
                encode(event_type_of(HiResEventsLogged), payload, source="/ioc/traffic", id=f"{cid}:{n}")
            )
    mine = {iid for _, iid in ids}

    async def observe(kafka) -> dict:
        obs = await read_committed(
            kafka,
            MEASURES,
            lambda e: (
                e.data.get("intersection_id") in mine and "phase" in e.data and e.data["bin_start"] == BIN
            ),
        )
        seen: dict[tuple[str, int], tuple[int, int]] = {}
        for e in obs:
            if e.data.get("revision"):
                continue  # a later revision adds ped volume estimates only
            key = (e.data["intersection_id"], e.data["phase"])
            n, arrivals = seen.get(key, (0, 0))
            seen[key] = (n + 1, arrivals + e.data["arrivals"])
        return seen

    return Workload(
        kind="traffic",
        source="/ioc/traffic",
        events=configs + events,  # the registry first, as a deployment configures before it runs
        expected={**{(iid, 2): (1, 7) for _, iid in ids}, **{(iid, 4): (1, 0) for _, iid in ids}},
        observe=observe,
        progress=lambda seen: len(seen),
        chunk=40,
    )


async def test_traffic_worker_killed_mid_batch_twice_measures_every_bin_once(
    kafka_cluster, kafka_workers, tmp_path
):
    await scenarios.killed_mid_batch_twice(
        kafka_cluster.kafka_settings(), workload(60), tmp_path, max_records=20
    )


async def test_traffic_slow_consumer_catches_up_exactly(kafka_cluster):
    await scenarios.slow_consumer(kafka_cluster.kafka_settings(), workload(30), pause_s=0.3, max_records=10)


async def test_traffic_duplicates_measure_once_across_a_restart(kafka_cluster):
    await scenarios.duplicate_deliveries(kafka_cluster.kafka_settings(), workload(30))
