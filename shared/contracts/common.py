"""Contracts every domain shares: KPI observations, alarms, and the dead-letter topic.

Each domain publishes its KPIs on ``ioc.<domain>.kpis`` and its alarms on ``ioc.<domain>.alarms`` with the
payloads defined here, so the city layer and outside subscribers read every domain the same way.

KPI observations are *mergeable*: a stream-processor worker owns some source partitions and publishes, per
KPI, area and window, the additive parts (``numerator``/``denominator``, or a ``max``) of what it saw on
``partition``. Consumers keep the latest observation per partition and combine them (sum, ratio of sums or
max, as the KPI definition says); ``partition = -1`` marks an observation that already covers everything.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from shared.contracts.base import (
    AreaCode,
    EntityId,
    EventModel,
    EventType,
    StrictFloat,
    StrictInt,
    TopicSpec,
    event_type,
    register_topic,
)

DEAD_LETTER_TOPIC = register_topic(
    TopicSpec(
        name="ioc.deadletter",
        partitions=3,
        key="the original record key",
        owner="platform",
        description="Records a consumer could not decode or validate: original bytes and headers plus "
        "dlq_error, dlq_topic, dlq_partition, dlq_offset and dlq_consumer headers.",
        retention_ms=30 * 24 * 3600 * 1000,
    )
)

ScopeLevel = Literal["city", "district", "commune", "agency"]
Severity = Literal["critical", "major", "minor", "warning"]


class KpiObserved(EventModel):
    """A KPI value for one area (or agency) and window, as one worker saw it on one source partition."""

    kpi: str = Field(
        min_length=1, max_length=80, pattern=r"^[a-z0-9_.]+$", description="KPI id, e.g. meter.energy_kwh"
    )
    scope_level: ScopeLevel
    scope_code: AreaCode = Field(description="district code, commune code, agency code, or 'HN' for the city")
    window_start: datetime
    window_seconds: StrictInt = Field(gt=0)
    value: StrictFloat | None = Field(
        description="the KPI over what this observation covers; null when undefined"
    )
    numerator: StrictFloat = 0.0
    denominator: StrictFloat | None = None
    unit: str = Field(max_length=24)
    partition: StrictInt = Field(default=-1, ge=-1, description="source partition covered, -1 for all")
    observed_at: datetime
    key: str = Field(default="", max_length=200, description="record key: kpi|scope_level|scope_code")


class AlarmChanged(EventModel):
    """An alarm raised or cleared by a domain (signal flash, feeder outage, kiosk offline, dossier overdue...)."""

    alarm_id: str = Field(min_length=1, max_length=200, description="stable id: domain:type:source")
    domain: str = Field(max_length=24)
    alarm_type: str = Field(max_length=64, pattern=r"^[a-z0-9_]+$")
    state: Literal["raised", "cleared"]
    severity: Severity
    source_id: EntityId = Field(
        description="the asset or entity id (intersection, meter, kiosk, dossier code)"
    )
    district: AreaCode | None = None
    commune: AreaCode | None = None
    at: datetime
    message: str = Field(max_length=500, description="what happened, for operators; never personal data")


def kpi_key(kpi: str, scope_level: str, scope_code: str) -> str:
    return f"{kpi}|{scope_level}|{scope_code}"


def kpi_observed_payload(
    kpi: str,
    scope_level: str,
    scope_code: str,
    window_start: str,
    window_seconds: int,
    value: float | None,
    numerator: float,
    denominator: float | None,
    unit: str,
    partition: int,
    observed_at: str,
) -> dict:
    """A :class:`KpiObserved` payload exactly as the model dumps it (field order and float types included),
    built without a model object: processors emit many per second. Times are RFC 3339 strings already."""
    return {
        "kpi": kpi,
        "scope_level": scope_level,
        "scope_code": scope_code,
        "window_start": window_start,
        "window_seconds": window_seconds,
        "value": None if value is None else float(value),
        "numerator": float(numerator),
        "denominator": None if denominator is None else float(denominator),
        "unit": unit,
        "partition": partition,
        "observed_at": observed_at,
        "key": kpi_key(kpi, scope_level, scope_code),
    }


def domain_topics(domain: str, owner: str, partitions: int = 3) -> tuple[EventType, EventType]:
    """Register ``ioc.<domain>.kpis`` and ``ioc.<domain>.alarms`` and their event types for a domain."""
    from shared.contracts.base import event_type_of

    kpis = register_topic(
        TopicSpec(
            name=f"ioc.{domain}.kpis",
            partitions=partitions,
            key="kpi|scope_level|scope_code",
            owner=owner,
            description=f"{domain} KPI observations per area and window (mergeable partials)",
            retention_ms=30 * 24 * 3600 * 1000,
        )
    )
    alarms = register_topic(
        TopicSpec(
            name=f"ioc.{domain}.alarms",
            partitions=partitions,
            key="alarm_id",
            owner=owner,
            description=f"{domain} alarms raised and cleared",
            retention_ms=30 * 24 * 3600 * 1000,
        )
    )
    cap = domain.capitalize()
    kpi_model = event_type(
        f"ioc.{domain}.kpi.observed.v1",
        topic=kpis,
        key="key",
        subject="scope_code",
        description=f"A {domain} KPI observed for an area and window.",
    )(type(f"{cap}KpiObserved", (KpiObserved,), {"__module__": __name__}))
    alarm_model = event_type(
        f"ioc.{domain}.alarm.changed.v1",
        topic=alarms,
        key="alarm_id",
        subject="source_id",
        description=f"A {domain} alarm raised or cleared.",
    )(type(f"{cap}AlarmChanged", (AlarmChanged,), {"__module__": __name__}))
    return event_type_of(kpi_model), event_type_of(alarm_model)


__all__ = [
    "DEAD_LETTER_TOPIC",
    "AlarmChanged",
    "KpiObserved",
    "Severity",
    "domain_topics",
    "kpi_key",
]
_ = (EntityId, StrictFloat)
