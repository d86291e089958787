"""City-layer contracts: the merged city view of every domain's KPIs, and the city's own alarms.

The city KPI processor reads the domains' mergeable KPI observations (``ioc.<domain>.kpis``), merges the
partials of every source partition and publishes one :class:`CityKpiUpdated` per KPI, area and window on
``ioc.city.kpis``, with its status against the KPI definition's thresholds. It raises threshold-breach and
"no signal" alarms on ``ioc.city.alarms`` with the same :class:`~shared.contracts.common.AlarmChanged` payload
the domains use, so every alarm of the center has one model.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from shared.contracts.base import (
    AreaCode,
    EventModel,
    StrictFloat,
    StrictInt,
    TopicSpec,
    event_type,
    register_topic,
)
from shared.contracts.common import AlarmChanged

CITY_KPI_TOPIC = register_topic(
    TopicSpec(
        name="ioc.city.kpis",
        partitions=3,
        key="kpi|scope_level|scope_code",
        owner="city",
        description="The city view: every domain KPI merged per district and city-wide, with its status.",
        retention_ms=30 * 24 * 3600 * 1000,
    )
)

CITY_ALARM_TOPIC = register_topic(
    TopicSpec(
        name="ioc.city.alarms",
        partitions=3,
        key="alarm_id",
        owner="city",
        description="City-layer alarms (KPI threshold breaches, districts or domains with no signal).",
        retention_ms=30 * 24 * 3600 * 1000,
    )
)

KpiStatus = Literal["ok", "warning", "critical", "unknown"]


@event_type(
    "ioc.city.kpi.updated.v1",
    topic=CITY_KPI_TOPIC,
    key="key",
    subject="scope_code",
    description="The merged value of a KPI for a district or the whole city in one window, with its status.",
    examples=(
        {
            "kpi": "meter.read_success_rate",
            "domain": "meter",
            "scope_level": "district",
            "scope_code": "D01",
            "window_start": "2024-05-01T10:00:00Z",
            "window_seconds": 900,
            "value": 0.97,
            "numerator": 970.0,
            "denominator": 1000.0,
            "unit": "ratio",
            "status": "ok",
            "target": 0.98,
            "partitions": 3,
            "updated_at": "2024-05-01T10:14:00Z",
            "key": "meter.read_success_rate|district|D01",
        },
    ),
)
class CityKpiUpdated(EventModel):
    """A KPI for one district (or the city) and window, merged over every source partition."""

    kpi: str = Field(min_length=1, max_length=80, pattern=r"^[a-z0-9_.]+$")
    domain: str = Field(max_length=24, description="the domain that measures it (meter, traffic, ...)")
    scope_level: Literal["city", "district"]
    scope_code: AreaCode = Field(description="district code, or 'HN' for the city")
    window_start: datetime
    window_seconds: StrictInt = Field(gt=0)
    value: StrictFloat | None = Field(
        description="the merged KPI value; null when undefined (no denominator)"
    )
    numerator: StrictFloat = 0.0
    denominator: StrictFloat | None = None
    unit: str = Field(max_length=24)
    status: KpiStatus = Field(description="against the definition's thresholds; unknown without a value")
    target: StrictFloat | None = None
    partitions: StrictInt = Field(ge=1, description="how many source partitions the value merges")
    updated_at: datetime
    key: str = Field(max_length=200, description="record key: kpi|scope_level|scope_code")


@event_type(
    "ioc.city.alarm.changed.v1",
    topic=CITY_ALARM_TOPIC,
    key="alarm_id",
    subject="source_id",
    description="A city-layer alarm (KPI threshold breach, no signal) raised or cleared.",
)
class CityAlarmChanged(AlarmChanged):
    """The common alarm payload, for alarms the city layer itself raises."""


__all__ = ["CITY_ALARM_TOPIC", "CITY_KPI_TOPIC", "CityAlarmChanged", "CityKpiUpdated", "KpiStatus"]
_ = StrictFloat
