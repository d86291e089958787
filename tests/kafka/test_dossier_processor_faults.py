"""The dossier KPI processor's fault scenarios of docs/guarantees.md on Apache Kafka (RF 3, min ISR 2,
idempotent producers, transactions): kill -9 mid-batch twice, a slow consumer, duplicate deliveries across a
restart (poison: ``test_other_processors_poison.py``).

The ledger: dossiers of an agency of this run only, each received (status 2, due in five days), and every other
one then resolved (status 9) the same day, before its due date. Reconciled: the agency's
``dossier.received`` (numerator: dossiers received) and ``dossier.on_time_ratio`` (numerator: resolved on time,
denominator: resolved) on ``ioc.dossier.kpis`` (read_committed), the latest observation per source partition
and window summed, as the city combines them: exactly the ledger's counts. A receipt counted twice (a duplicate,
or a batch applied again after a kill) would show as more.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.dossier.domain import local_date
from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import encode
from shared.contracts.dossier import KPI_TOPIC_NAME, DossierStatusChanged
from tests.areas import area, first_unit
from tests.kafka import processor_scenarios as scenarios
from tests.kafka.processor_scenarios import Workload, kafka_workers, read_committed
from tests.reliability.harness import uid

pytestmark = pytest.mark.slow

__all__ = ["kafka_workers"]

KPIS = ("dossier.received", "dossier.on_time_ratio")


def status(code: str, agency: str, status: int, at: datetime, due, *, prev=None, action="receive") -> dict:
    district = area("ML")
    return DossierStatusChanged(
        dossier_id=f"{agency}:{code}",
        dossier_code=code,
        procedure_code="P1",
        agency_code=agency,
        admin_unit=first_unit(district),
        district=district,
        channel="online",
        online_level="fully_online",
        has_fees=False,
        status=status,
        received_at=at,
        due_date=due,
        at=at,
        previous_status=prev,
        status_name="x",
        action=action,
    ).model_dump(mode="json")


def workload(dossiers: int) -> Workload:
    agency = f"AG{uid()[:10].upper()}"
    now = datetime.now(UTC).replace(microsecond=0)
    due = local_date(now) + timedelta(days=5)
    etype = event_type_of(DossierStatusChanged)
    events = []
    for i in range(dossiers):  # receipts and resolutions interleaved: the counts grow along the stream
        code = f"{agency}-{i}"
        events.append(encode(etype, status(code, agency, 2, now, due), source="/ioc/dossier", id=f"{code}:r"))
        if i % 2:
            resolved = status(code, agency, 9, now, due, prev=2, action="resolve")
            events.append(encode(etype, resolved, source="/ioc/dossier", id=f"{code}:s"))

    async def observe(kafka) -> dict:
        obs = await read_committed(kafka, KPI_TOPIC_NAME, lambda e: e.data.get("scope_code") == agency)
        latest: dict[tuple, tuple] = {}
        for e in obs:
            d = e.data
            if d["kpi"] in KPIS and d["window_seconds"] != 86400:
                latest[(d["kpi"], d["window_seconds"], d["window_start"], d["partition"])] = (
                    d["numerator"],
                    d["denominator"] or 0.0,
                )
        totals: dict[str, tuple[float, float]] = {}
        for (kpi, *_), (num, den) in latest.items():
            n, m = totals.get(kpi, (0.0, 0.0))
            totals[kpi] = (n + num, m + den)
        return totals

    resolved = dossiers // 2
    return Workload(
        kind="dossier",
        source="/ioc/dossier",
        events=events,
        # every resolution is before its due date: on time
        expected={"dossier.received": (float(dossiers), 0.0), "dossier.on_time_ratio": (resolved, resolved)},
        observe=observe,
        progress=lambda seen: seen.get("dossier.received", (0.0, 0.0))[0],
    )


async def test_dossier_worker_killed_mid_batch_twice_counts_every_dossier_once(
    kafka_cluster, kafka_workers, tmp_path
):
    await scenarios.killed_mid_batch_twice(kafka_cluster.kafka_settings(), workload(600), tmp_path)


async def test_dossier_slow_consumer_catches_up_exactly(kafka_cluster):
    await scenarios.slow_consumer(kafka_cluster.kafka_settings(), workload(300))


async def test_dossier_duplicates_count_once_across_a_restart(kafka_cluster):
    await scenarios.duplicate_deliveries(kafka_cluster.kafka_settings(), workload(200))
