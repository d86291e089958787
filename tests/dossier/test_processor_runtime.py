"""The dossier KPI processor under the real runtime and broker: lifecycle events in, KPIs and alarms out."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.dossier.domain import local_date
from services.dossier.processors import DossierKpiProcessor
from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import encode
from shared.contracts.dossier import ALARM_TOPIC_NAME, KPI_TOPIC_NAME, DossierOverdue, DossierStatusChanged
from shared.kafka.producer import EventPublisher
from shared.stream.runtime import ProcessorRuntime
from shared.testing import read_topic

pytestmark = pytest.mark.integration


def _status(code, agency, status, at, *, prev=None, action="receive", channel="online", due):
    return DossierStatusChanged(
        dossier_id=f"{agency}:{code}",
        dossier_code=code,
        procedure_code="P1",
        agency_code=agency,
        admin_unit="HK-02",
        district="HK",
        channel=channel,
        online_level="fully_online",
        has_fees=False,
        status=status,
        received_at=at,
        due_date=due,
        at=at,
        previous_status=prev,
        status_name="x",
        action=action,
    )


async def test_kpis_and_alarms_from_the_lifecycle_topic(kafka_settings, topics_ready):
    agency = f"AG{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC)
    today = local_date(now)
    et = event_type_of(DossierStatusChanged)
    events = []
    # Three online/in-person dossiers received now: one resolved on time, one open, one overdue.
    for i, channel in enumerate(("online", "online", "in_person")):
        code = f"{agency}-{i}"
        due = today + timedelta(days=5) if i < 2 else today - timedelta(days=1)
        events.append(
            encode(et, _status(code, agency, 2, now, channel=channel, due=due), source="/ioc/dossier")
        )
    events.append(
        encode(
            et,
            _status(f"{agency}-0", agency, 9, now, prev=2, action="resolve", due=today + timedelta(days=5)),
            source="/ioc/dossier",
        )
    )
    overdue = DossierOverdue(
        **{
            k: v
            for k, v in _status(
                f"{agency}-2", agency, 2, now, channel="in_person", due=today - timedelta(days=1)
            )
            .model_dump()
            .items()
            if k in DossierOverdue.model_fields
        },
        days_overdue=1,
    )
    events.append(encode(event_type_of(DossierOverdue), overdue, source="/ioc/dossier"))
    pub = EventPublisher(kafka_settings, client_id="test-dossier")
    await pub.publish(events)
    await pub.stop()

    async with ProcessorRuntime(DossierKpiProcessor(), kafka_settings).running() as rt:
        await rt.drain(timeout=40)

    obs = await read_topic(kafka_settings, KPI_TOPIC_NAME, where=lambda e: e.data["scope_code"] == agency)
    latest: dict[tuple, dict] = {}
    for e in obs:  # one agency's dossiers share no key, so sum the latest observation of each partition
        latest[(e.data["kpi"], e.data["window_seconds"] == 86400, e.data["partition"])] = e.data

    def total(kpi, day=False):
        parts = [d for (k, is_day, _), d in latest.items() if k == kpi and is_day == day]
        return sum(d["numerator"] for d in parts), sum(d["denominator"] or 0 for d in parts)

    assert total("dossier.received") == (3, 0)
    assert total("dossier.online_ratio") == (2, 3)
    assert total("dossier.on_time_ratio") == (1, 1)
    assert total("dossier.overdue_open", day=True) == (1, 0)
    assert total("dossier.open_within_deadline", day=True) == (1, 0)
    # progress: (1 on time + 1 open within) / (1 finished + 2 open)
    assert total("dossier.progress_766_points") == (2, 3)
    alarms = await read_topic(
        kafka_settings,
        ALARM_TOPIC_NAME,
        where=lambda e: e.data["source_id"] == f"{agency}:{agency}-2",
        expect=1,
    )
    assert alarms[0].data["state"] == "raised" and alarms[0].data["alarm_type"] == "dossier_overdue"
