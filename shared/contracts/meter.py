"""AMR smart-meter contracts: the meter registry, validated interval readings (OBIS-keyed, IEC 62056),
canonical meter events, derived supply interruptions, per-feeder supply changes, plus the domain's KPI and
alarm topics.

Readings, events, interruptions and the registry are consumed together by the KPI processor: same partition
count, same key (meter id), so one partition sees everything about its meters. Registry facts the processor
needs (district, customers served, feeder, reading interval) also travel in every reading and event (the
service enriches them at ingest from its cached registry).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Literal

from pydantic import Field

from shared.contracts.base import (
    AreaCode,
    EntityId,
    EventModel,
    StrictFloat,
    StrictInt,
    TopicSpec,
    event_type,
    register_topic,
)
from shared.contracts.common import domain_topics

# Readings, events, interruptions and registry are co-partitioned (consumed together by meter-kpi).
PARTITIONS = 6

READINGS_TOPIC = register_topic(
    TopicSpec(
        name="ioc.meter.readings",
        partitions=PARTITIONS,
        key="meter_id",
        owner="meter",
        description="Validated meter readings (one record per meter, OBIS code and interval end) with quality "
        "flags and the register delta, enriched with district, commune, feeder and customers served.",
    )
)
EVENTS_TOPIC = register_topic(
    TopicSpec(
        name="ioc.meter.events",
        partitions=PARTITIONS,
        key="meter_id",
        owner="meter",
        description="Meter events (power down/last gasp, power up, tamper, reverse energy, clock, disconnector) "
        "normalised to one canonical taxonomy, raw vendor code kept.",
        retention_ms=30 * 24 * 3600 * 1000,
    )
)
INTERRUPTIONS_TOPIC = register_topic(
    TopicSpec(
        name="ioc.meter.interruptions",
        partitions=PARTITIONS,
        key="meter_id",
        owner="meter",
        description="Supply interruptions per meter: a power-down paired with its power-up by event time "
        "(or inferred from missing reads), momentary (<= 5 min, IEEE 1366) or sustained.",
        retention_ms=365 * 24 * 3600 * 1000,
    )
)
REGISTRY_TOPIC = register_topic(
    TopicSpec(
        name="ioc.meter.registry",
        partitions=PARTITIONS,
        key="meter_id",
        owner="meter",
        description="Latest registry entry of every meter (customers served, district, commune, feeder, "
        "reading interval), keyed by meter id; compacted.",
        retention_ms=None,
        compacted=True,
    )
)
FEEDER_SUPPLY_TOPIC = register_topic(
    TopicSpec(
        name="ioc.meter.feeder_supply",
        partitions=3,
        key="feeder",
        owner="meter",
        description="Supply lost/restored at a meter, keyed by feeder, so one partition sees a whole feeder "
        "(feeder-outage detection).",
        retention_ms=7 * 24 * 3600 * 1000,
    )
)
KPI_EVENT, ALARM_EVENT = domain_topics("meter", owner="meter")

ReadingQuality = Literal["measured", "estimated", "substituted", "edited", "missing"]
IntervalSeconds = Literal[900, 1800, 3600]
ObisCode = str

MeterEventKind = Literal[
    "power_down",
    "power_up",
    "clock_adjusted",
    "clock_invalid",
    "battery_low",
    "hardware_error",
    "terminal_cover_opened",
    "terminal_cover_closed",
    "magnetic_field_detected",
    "magnetic_field_cleared",
    "meter_cover_opened",
    "meter_cover_closed",
    "reverse_energy_detected",
    "reverse_energy_cleared",
    "login_failed",
    "configuration_changed",
    "disconnected",
    "connected",
]
MeterEventCategory = Literal[
    "power", "clock", "battery", "hardware", "tamper", "security", "configuration", "disconnector"
]


@event_type(
    "ioc.meter.registry.changed.v1",
    topic=REGISTRY_TOPIC,
    key="meter_id",
    subject="meter_id",
    description="A meter was registered or its registry entry changed (latest state; compacted topic).",
    examples=(
        {
            "meter_id": "MTR-000001",
            "customers": 1,
            "district": "HN-BD",
            "commune": "HN-BD-01",
            "feeder": "F-BD-001",
            "transformer": "T-BD-001-03",
            "installed_on": "2023-04-01",
            "interval_seconds": 900,
        },
    ),
)
class MeterRegistered(EventModel):
    """A meter of the registry: what the city needs to know about it (no customer identity)."""

    meter_id: EntityId
    customers: StrictInt = Field(
        ge=0, le=10000, description="customers served through this meter (usually 1)"
    )
    district: AreaCode
    commune: AreaCode
    feeder: EntityId = Field(description="medium-voltage feeder the meter is supplied from")
    transformer: EntityId | None = Field(None, description="distribution transformer")
    installed_on: date = Field(description="installation (or replacement) date of the physical meter")
    interval_seconds: IntervalSeconds = Field(900, description="load-profile interval")
    decommissioned_on: date | None = Field(
        None,
        description="the day the meter was removed from service: it serves no customer from that day on "
        "(N_T of windows from then on leaves it out)",
    )
    effective_on: date | None = Field(
        None,
        description="the day this entry takes effect (a meter moved to another district or changing its "
        "customers); null: since installed_on",
    )


@event_type(
    "ioc.meter.reading.recorded.v1",
    topic=READINGS_TOPIC,
    key="meter_id",
    subject="obis",
    description="A validated meter reading for one OBIS code and interval end, with quality flags.",
    examples=(
        {
            "meter_id": "MTR-000001",
            "obis": "1-0:1.8.0",
            "interval_end": "2024-05-01T10:15:00Z",
            "interval_seconds": 900,
            "value": 12345.678,
            "unit": "kWh",
            "quality": "measured",
            "flags": [],
            "delta": 0.412,
            "district": "HN-BD",
            "commune": "HN-BD-01",
            "feeder": "F-BD-001",
            "customers": 1,
        },
    ),
)
class MeterReadingRecorded(EventModel):
    """A reading that passed validation (VEE). ``value`` is in the OBIS code's canonical unit."""

    meter_id: EntityId
    obis: ObisCode = Field(max_length=24, pattern=r"^\d+-\d+:\d+\.\d+\.\d+$")
    interval_end: datetime
    interval_seconds: IntervalSeconds
    value: StrictFloat | None = Field(description="null only when quality is 'missing'")
    unit: str = Field(max_length=8)
    quality: ReadingQuality
    flags: list[str] = Field(
        default_factory=list,
        max_length=8,
        description="validation notes: first_read, rollover, late, register_reset, gap (the delta spans "
        "missing intervals; they were published as estimated readings), gap_estimate (an estimated "
        "interval of a gap), frozen_register (the register has not moved for the configured number of "
        "intervals)",
    )
    delta: StrictFloat | None = Field(
        None,
        description="cumulative registers: increase since the previous accepted reading (rollover "
        "corrected); null for the first or a late reading and for non-cumulative quantities",
    )
    district: AreaCode
    commune: AreaCode
    feeder: EntityId
    customers: StrictInt = Field(ge=0)


@event_type(
    "ioc.meter.event.recorded.v1",
    topic=EVENTS_TOPIC,
    key="meter_id",
    subject="event",
    description="A meter event in the canonical taxonomy (vendor code kept in raw_code).",
    examples=(
        {
            "meter_id": "MTR-000001",
            "at": "2024-05-01T10:03:12Z",
            "event": "power_down",
            "category": "power",
            "code": 1,
            "raw_code": "1",
            "district": "HN-BD",
            "commune": "HN-BD-01",
            "feeder": "F-BD-001",
            "customers": 1,
        },
    ),
)
class MeterEventRecorded(EventModel):
    meter_id: EntityId
    at: datetime
    event: MeterEventKind
    category: MeterEventCategory
    code: StrictInt | None = Field(None, description="DLMS standard event code, when the HES gave one")
    raw_code: str = Field(max_length=32, description="the vendor's own code, as received")
    district: AreaCode
    commune: AreaCode
    feeder: EntityId
    customers: StrictInt = Field(ge=0)


@event_type(
    "ioc.meter.interruption.recorded.v1",
    topic=INTERRUPTIONS_TOPIC,
    key="meter_id",
    subject="kind",
    description="A supply interruption at a meter: power-down paired with power-up (IEEE 1366 input).",
    examples=(
        {
            "meter_id": "MTR-000001",
            "started_at": "2024-05-01T10:03:12Z",
            "ended_at": "2024-05-01T10:45:00Z",
            "duration_seconds": 2508.0,
            "kind": "sustained",
            "customers": 1,
            "district": "HN-BD",
            "commune": "HN-BD-01",
            "feeder": "F-BD-001",
        },
    ),
)
class InterruptionRecorded(EventModel):
    meter_id: EntityId
    started_at: datetime
    ended_at: datetime
    duration_seconds: StrictFloat = Field(ge=0)
    kind: Literal["momentary", "sustained"]
    customers: StrictInt = Field(ge=0)
    district: AreaCode
    commune: AreaCode
    feeder: EntityId
    inferred: bool = Field(
        False,
        description="no power-down arrived for it: its start is the end of the meter's last interval read "
        "before the power-up (inferred from missing reads)",
    )


@event_type(
    "ioc.meter.feeder_supply.changed.v1",
    topic=FEEDER_SUPPLY_TOPIC,
    key="feeder",
    subject="feeder",
    description="A meter of a feeder lost or regained supply (keyed by feeder for outage detection).",
    examples=(
        {
            "feeder": "F-BD-001",
            "meter_id": "MTR-000001",
            "supply": "lost",
            "at": "2024-05-01T10:03:12Z",
            "district": "HN-BD",
            "feeder_meters": 200,
        },
    ),
)
class FeederSupplyChanged(EventModel):
    feeder: EntityId
    meter_id: EntityId
    supply: Literal["lost", "restored"]
    at: datetime
    district: AreaCode
    feeder_meters: StrictInt = Field(ge=0, description="meters registered on this feeder")


__all__ = [
    "ALARM_EVENT",
    "EVENTS_TOPIC",
    "FEEDER_SUPPLY_TOPIC",
    "INTERRUPTIONS_TOPIC",
    "KPI_EVENT",
    "PARTITIONS",
    "READINGS_TOPIC",
    "REGISTRY_TOPIC",
    "FeederSupplyChanged",
    "InterruptionRecorded",
    "MeterEventRecorded",
    "MeterReadingRecorded",
    "MeterRegistered",
]
