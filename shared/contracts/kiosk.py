"""Kiosk contracts: the public-service kiosk fleet, its telemetry, sessions, state changes, KPIs and alarms.

Device and paper states follow banking-kiosk practice (CEN/XFS), see domain notes §4. Every kiosk topic that
the KPI processor reads is keyed by ``kiosk_id`` and has the same partition count (co-partitioned), so one
processor partition sees everything about its kiosks: registry entry, heartbeats, peripherals and sessions.
Sessions never carry personal data: at most a dossier reference code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field, model_validator

from shared.contracts.base import (
    AreaCode,
    EntityId,
    EventModel,
    StrictBool,
    StrictInt,
    TopicSpec,
    as_instant,
    event_type,
    register_topic,
)
from shared.contracts.common import domain_topics

PARTITIONS = 3  # all kiosk source topics share it: the KPI processor needs them co-partitioned
_DAY_MS = 24 * 3600 * 1000

Peripheral = Literal[
    "printer", "card_reader", "id_scanner", "barcode_reader", "camera", "payment_terminal", "touchscreen"
]
DeviceState = Literal[
    "online", "offline", "power_off", "no_device", "hardware_error", "user_error", "busy", "fraud_attempt"
]
PaperState = Literal["full", "low", "out", "jammed", "unknown"]
Journey = Literal[
    "lookup_procedure",
    "submit_dossier",
    "check_status",
    "pay_fee",
    "print_result",
    "queue_ticket",
    "rate_service",
]
Outcome = Literal["completed", "abandoned", "failed"]
FailureReason = Literal[
    "device_fault",
    "network_error",
    "payment_declined",
    "service_unavailable",
    "timeout",
    "user_cancelled",
    "other",
]
Network = Literal["wired", "wifi", "cellular"]
KioskStatus = Literal["online", "offline"]

PERIPHERALS: tuple[str, ...] = Peripheral.__args__  # type: ignore[attr-defined]
DEVICE_STATES: tuple[str, ...] = DeviceState.__args__  # type: ignore[attr-defined]
PAPER_STATES: tuple[str, ...] = PaperState.__args__  # type: ignore[attr-defined]
JOURNEYS: tuple[str, ...] = Journey.__args__  # type: ignore[attr-defined]
OUTCOMES: tuple[str, ...] = Outcome.__args__  # type: ignore[attr-defined]

TimeOfDay = Annotated[
    str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="local time HH:MM (UTC+7)")
]
ClosingTime = Annotated[
    str,
    Field(
        pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$",
        description="local time HH:MM (UTC+7), 24:00 for midnight",
    ),
]
IsoWeekday = Annotated[StrictInt, Field(ge=1, le=7, description="ISO weekday, 1 = Monday ... 7 = Sunday")]
DossierCode = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/\-]*$",
        description="a dossier's reference code (never personal data)",
    ),
]
ShortText = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+\-]*$")]


# Topics --------------------------------------------------------------------------------------------------------
REGISTRY_TOPIC = register_topic(
    TopicSpec(
        name="ioc.kiosk.registry",
        partitions=PARTITIONS,
        key="kiosk_id",
        owner="kiosk",
        compacted=True,
        retention_ms=None,
        description="The kiosk registry, latest entry per kiosk (location, opening hours, peripherals fitted).",
    )
)
HEARTBEATS_TOPIC = register_topic(
    TopicSpec(
        name="ioc.kiosk.heartbeats",
        partitions=PARTITIONS,
        key="kiosk_id",
        owner="kiosk",
        retention_ms=7 * _DAY_MS,
        description="Kiosk heartbeats (every 30-60 s: app version, uptime, network).",
    )
)
LAST_SEEN_TOPIC = register_topic(
    TopicSpec(
        name="ioc.kiosk.lastseen",
        partitions=PARTITIONS,
        key="kiosk_id",
        owner="kiosk",
        compacted=True,
        retention_ms=None,
        description="The last heartbeat of each kiosk (compacted).",
    )
)
PERIPHERALS_TOPIC = register_topic(
    TopicSpec(
        name="ioc.kiosk.peripherals",
        partitions=PARTITIONS,
        key="kiosk_id",
        owner="kiosk",
        retention_ms=30 * _DAY_MS,
        description="Peripheral device status changes (CEN/XFS-like states, paper).",
    )
)
SESSIONS_TOPIC = register_topic(
    TopicSpec(
        name="ioc.kiosk.sessions",
        partitions=PARTITIONS,
        key="kiosk_id",
        owner="kiosk",
        retention_ms=30 * _DAY_MS,
        description="Finished kiosk sessions: journey, times, outcome, rating.",
    )
)
STATE_TOPIC = register_topic(
    TopicSpec(
        name="ioc.kiosk.state",
        partitions=PARTITIONS,
        key="kiosk_id",
        owner="kiosk",
        retention_ms=30 * _DAY_MS,
        description="Kiosk online/offline changes detected by the KPI processor.",
    )
)
KPI_EVENT, ALARM_EVENT = domain_topics("kiosk", owner="kiosk", partitions=PARTITIONS)
KPIS_TOPIC_NAME = KPI_EVENT.topic
ALARMS_TOPIC_NAME = ALARM_EVENT.topic


# Payloads ------------------------------------------------------------------------------------------------------
class OpeningPeriod(EventModel):
    """Scheduled service time on some weekdays, in Hanoi local time (UTC+7, no daylight saving)."""

    days: list[IsoWeekday] = Field(min_length=1, max_length=7)
    open: TimeOfDay
    close: ClosingTime

    @staticmethod
    def payload_rules(payload: Mapping[str, Any]) -> None:
        if payload["close"] <= payload["open"]:
            raise ValueError("close must be after open (split an overnight period in two)")

    @model_validator(mode="after")
    def _close_after_open(self):
        self.payload_rules(self.__dict__)
        return self


@event_type(
    "ioc.kiosk.registration.updated.v1",
    topic=REGISTRY_TOPIC,
    key="kiosk_id",
    subject="kiosk_id",
    description="A kiosk was registered or its registry entry changed (latest wins, compacted).",
)
class KioskRegistered(EventModel):
    kiosk_id: EntityId
    building: str = Field(min_length=1, max_length=200, description="building or one-stop centre name")
    address: str = Field(min_length=1, max_length=300, description="street address of the building")
    district: AreaCode
    commune: AreaCode | None = None
    opening_hours: list[OpeningPeriod] = Field(max_length=14, description="scheduled service time")
    peripherals: list[Peripheral] = Field(max_length=7, description="peripherals fitted")
    software_version: ShortText
    in_service_since: AwareDatetime = Field(description="scheduled time counts from here")
    active: StrictBool = Field(True, description="false once decommissioned")
    version: StrictInt = Field(ge=1, description="registry version of this entry (increases on every change)")


@event_type(
    "ioc.kiosk.heartbeat.received.v1",
    topic=HEARTBEATS_TOPIC,
    key="kiosk_id",
    subject="kiosk_id",
    description="A kiosk said it is alive.",
)
class HeartbeatReceived(EventModel):
    kiosk_id: EntityId
    at: AwareDatetime
    app_version: ShortText
    uptime_seconds: StrictInt | None = Field(None, ge=0)
    network: Network | None = None


@event_type(
    "ioc.kiosk.lastseen.updated.v1",
    topic=LAST_SEEN_TOPIC,
    key="kiosk_id",
    subject="kiosk_id",
    description="The last heartbeat of a kiosk (compacted: latest per kiosk).",
)
class KioskLastSeen(EventModel):
    kiosk_id: EntityId
    at: AwareDatetime
    app_version: ShortText


@event_type(
    "ioc.kiosk.peripheral.changed.v1",
    topic=PERIPHERALS_TOPIC,
    key="kiosk_id",
    subject="kiosk_id",
    description="A kiosk peripheral's device state (and, for printers, paper state) changed.",
)
class PeripheralStatusChanged(EventModel):
    kiosk_id: EntityId
    peripheral: Peripheral
    state: DeviceState
    paper: PaperState | None = Field(None, description="printers only")
    at: AwareDatetime
    code: ShortText | None = Field(None, description="vendor error code, kept raw")

    @staticmethod
    def payload_rules(payload: Mapping[str, Any]) -> None:
        if payload.get("paper") is not None and payload["peripheral"] != "printer":
            raise ValueError("paper applies to printers only")

    @model_validator(mode="after")
    def _paper_only_on_printers(self):
        self.payload_rules(self.__dict__)
        return self


@event_type(
    "ioc.kiosk.session.ended.v1",
    topic=SESSIONS_TOPIC,
    key="kiosk_id",
    subject="kiosk_id",
    description="A kiosk session (one citizen journey) ended. Carries no personal data.",
)
class SessionEnded(EventModel):
    session_id: EntityId
    kiosk_id: EntityId
    journey: Journey
    started_at: AwareDatetime
    ended_at: AwareDatetime
    outcome: Outcome
    failure_reason: FailureReason | None = Field(None, description="why it failed or was abandoned")
    dossier_code: DossierCode | None = None
    rating: StrictInt | None = Field(None, ge=1, le=5, description="satisfaction rating 1-5")

    @staticmethod
    def payload_rules(payload: Mapping[str, Any]) -> None:
        if as_instant(payload["ended_at"]) < as_instant(payload["started_at"]):
            raise ValueError("ended_at is before started_at")
        failure_reason = payload.get("failure_reason")
        if payload["outcome"] == "completed" and failure_reason is not None:
            raise ValueError("a completed session has no failure_reason")
        if payload["outcome"] == "failed" and failure_reason is None:
            raise ValueError("a failed session needs a failure_reason")

    @model_validator(mode="after")
    def _consistent(self):
        self.payload_rules(self.__dict__)
        return self


@event_type(
    "ioc.kiosk.state.changed.v1",
    topic=STATE_TOPIC,
    key="kiosk_id",
    subject="kiosk_id",
    description="A kiosk went offline (missed heartbeats) or came back online.",
)
class KioskStateChanged(EventModel):
    kiosk_id: EntityId
    state: KioskStatus
    at: AwareDatetime
    reason: Literal["heartbeat_timeout", "heartbeats_resumed"]
    last_heartbeat_at: AwareDatetime | None = None
    district: AreaCode | None = None
    commune: AreaCode | None = None


__all__ = [
    "ALARM_EVENT",
    "HEARTBEATS_TOPIC",
    "KPI_EVENT",
    "LAST_SEEN_TOPIC",
    "PERIPHERALS_TOPIC",
    "REGISTRY_TOPIC",
    "SESSIONS_TOPIC",
    "STATE_TOPIC",
    "HeartbeatReceived",
    "KioskLastSeen",
    "KioskRegistered",
    "KioskStateChanged",
    "OpeningPeriod",
    "PeripheralStatusChanged",
    "SessionEnded",
]
