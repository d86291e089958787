"""The city KPI processor's fault scenarios of docs/guarantees.md on Apache Kafka (RF 3, min ISR 2, idempotent
producers, transactions): kill -9 mid-batch twice, a slow consumer, duplicate deliveries across a restart
(poison: ``test_other_processors_poison.py``).

city-kpi reads every domain's KPI topic, which the domain processors write with transactions: their commit
markers are what kept ``ProcessorRuntime.drain`` from ever returning here (``test_stream_catch_up.py``). Its
workers read whatever other tests left on those topics too; they are paced only on this scenario's batches.

The ledger: ``dossier.received`` partials of a district of each scenario's own, for 20 day windows and 4 source
partitions, each revised three times (numerator ``100·(w+1) + 10·p + r`` for window *w*, partition *p*, revision
*r*, observed a second later each time). The city keeps the newest partial per (window, source partition) and
publishes their sum, so once the ledger is folded the newest ``ioc.city.kpis`` value (read_committed) of window
*w* is Σₚ (100·(w+1) + 10·p + 3) = 400·(w+1) + 60 + 12, whatever the order, the duplicates or the restarts.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.contracts.cloudevents import encode
from shared.contracts.dossier import KPI_EVENT
from tests.areas import area
from tests.kafka import processor_scenarios as scenarios
from tests.kafka.processor_scenarios import Workload, kafka_workers, read_committed
from tests.reliability.harness import uid

pytestmark = pytest.mark.slow

__all__ = ["kafka_workers"]

KPI = "dossier.received"
CITY_KPIS = "ioc.city.kpis"
WINDOWS, PARTITIONS, REVISIONS = 20, 4, 3


def workload(district_2019: str) -> Workload:
    """One scenario's ledger, in a district no other test publishes ``dossier.received`` for (every city worker
    folds every partial on the topics: a district per scenario keeps their outputs apart)."""
    district = area(district_2019)
    source = f"/ioc/test/city-{uid()}"
    now = datetime.now(UTC).replace(microsecond=0)
    starts = [
        datetime.fromisoformat(f"{now.date() - timedelta(days=w + 1)}T00:00:00+07:00").isoformat()
        for w in range(WINDOWS)
    ]
    events = []
    for r in range(1, REVISIONS + 1):  # revision after revision: the city's values grow along the stream
        observed = (now - timedelta(minutes=10) + timedelta(seconds=r)).isoformat().replace("+00:00", "Z")
        for w, start in enumerate(starts):
            for p in range(PARTITIONS):
                numerator = float(100 * (w + 1) + 10 * p + r)
                payload = {
                    "kpi": KPI,
                    "scope_level": "district",
                    "scope_code": district,
                    "window_start": start,
                    "window_seconds": 86400,
                    "value": numerator,
                    "numerator": numerator,
                    "denominator": None,
                    "unit": "dossiers",
                    "partition": p,
                    "observed_at": observed,
                    "key": f"{KPI}|district|{district}",
                }
                events.append(encode(KPI_EVENT, payload, source=source, id=f"{source}:{w}:{p}:{r}"))
    mine = set(starts)

    async def observe(kafka) -> dict:
        obs = await read_committed(
            kafka,
            CITY_KPIS,
            lambda e: e.data.get("scope_code") == district and e.data.get("kpi") == KPI,
        )
        latest: dict[str, float] = {}
        for e in obs:  # in log order: the last one is the newest (one key: one partition)
            if e.data["window_seconds"] == 86400 and e.data["window_start"] in mine:
                latest[e.data["window_start"]] = e.data["numerator"]
        return latest

    return Workload(
        kind="city",
        source=source,
        events=events,
        # Σ over the 4 partitions of their last revision (r = 3): 4·100·(w+1) + 10·(0+1+2+3) + 4·3
        expected={start: float(400 * (w + 1) + 60 + 12) for w, start in enumerate(starts)},
        observe=observe,
        progress=lambda seen: sum(seen.values()),
        chunk=80,
    )


async def test_city_worker_killed_mid_batch_twice_publishes_the_ledgers_values(
    kafka_cluster, kafka_workers, tmp_path
):
    await scenarios.killed_mid_batch_twice(
        kafka_cluster.kafka_settings(), workload("SS"), tmp_path, pause_s=0.5, max_records=10
    )


async def test_city_slow_consumer_catches_up_exactly(kafka_cluster):
    await scenarios.slow_consumer(kafka_cluster.kafka_settings(), workload("MD"), pause_s=0.2, max_records=20)


async def test_city_duplicates_change_nothing_across_a_restart(kafka_cluster):
    await scenarios.duplicate_deliveries(kafka_cluster.kafka_settings(), workload("PX"))
