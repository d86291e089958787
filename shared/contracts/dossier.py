"""One-stop-shop dossier contracts: the lifecycle of administrative dossiers (domain notes §3).

Every event of one dossier travels on ``ioc.dossier.lifecycle`` keyed by the dossier id, so a consumer sees a
dossier's status changes, deadline warnings, overdue notices, apologies and hand-offs in order. Events carry
no personal data: the applicant's name, ID number, address and phone stay in the dossier service's database.
Status codes are the national portal's 1–10; channel codes 1 in person, 2 online, 3 public postal service.

Dossier codes are scoped per agency (two agencies may use the same code; issue #40), so a dossier's city-wide
identity is ``dossier_id`` = ``<agency_code>:<dossier_code>``: the record key and the subject. It was added to v1
as an optional field (the types stay v1: compatible), so events written before it still validate; a consumer
derives it from the two codes when absent (:func:`dossier_id_of`).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import Field

from shared.contracts.base import (
    ENTITY_ID_PATTERN,
    AreaCode,
    EntityId,
    EventModel,
    StrictBool,
    StrictInt,
    TopicSpec,
    event_type,
    register_topic,
)
from shared.contracts.common import domain_topics

LIFECYCLE_TOPIC = register_topic(
    TopicSpec(
        name="ioc.dossier.lifecycle",
        partitions=3,
        key="dossier_id",
        owner="dossier",
        description="Dossier status changes (national status codes 1-10), deadline warnings, overdue notices, "
        "apologies and step hand-offs, keyed by dossier id (<agency_code>:<dossier_code>). No personal data.",
        retention_ms=90 * 24 * 3600 * 1000,
    )
)
KPI_EVENT, ALARM_EVENT = domain_topics("dossier", owner="dossier")
KPI_TOPIC_NAME = KPI_EVENT.topic
ALARM_TOPIC_NAME = ALARM_EVENT.topic

Channel = Literal["in_person", "online", "postal"]
OnlineLevel = Literal["fully_online", "partly_online", "offline"]

#: national channel codes
CHANNEL_CODES: dict[str, int] = {"in_person": 1, "online": 2, "postal": 3}
#: national status codes and the names IOC uses for them
STATUS_NAMES: dict[int, str] = {
    1: "submitted",
    2: "received",
    3: "rejected",
    4: "processing",
    5: "documents_requested",
    6: "fees_requested",
    7: "withdrawn",
    8: "stopped",
    9: "resolved",
    10: "returned",
}
StatusCode = StrictInt
#: ``<agency_code>:<dossier_code>``: unique city-wide (a code alone is unique only within its agency)
DossierId = Annotated[str, Field(min_length=3, max_length=129, pattern=ENTITY_ID_PATTERN)]


def dossier_id(agency_code: str, dossier_code: str) -> str:
    """The city-wide id of an agency's dossier (the lifecycle record key)."""
    return f"{agency_code}:{dossier_code}"


def dossier_id_of(payload: dict) -> str:
    """The dossier id of a lifecycle payload, derived for events written before the field existed."""
    return payload.get("dossier_id") or dossier_id(payload["agency_code"], payload["dossier_code"])


class DossierFacts(EventModel):
    """What every dossier event says about the dossier (never who the applicant is)."""

    dossier_id: DossierId | None = Field(
        None,
        description="<agency_code>:<dossier_code>, unique city-wide: the record key (dossier codes are scoped "
        "per agency). Absent from events written before it: then derive it from the two codes",
    )
    dossier_code: EntityId = Field(description="the code the agency assigned (unique within the agency only)")
    procedure_code: EntityId
    agency_code: EntityId
    admin_unit: AreaCode = Field(description="the administrative unit of the handling agency")
    district: AreaCode | None = Field(
        None, description="district of the admin unit; null in a two-tier hierarchy"
    )
    channel: Channel
    online_level: OnlineLevel = Field(description="the procedure's online service level")
    has_fees: StrictBool
    status: StatusCode = Field(ge=1, le=10, description="national status code after this event")
    received_at: datetime | None = Field(None, description="when the agency accepted the dossier (status 2)")
    due_date: date | None = Field(None, description="legal due date (local date), pauses included")
    at: datetime = Field(description="when this happened")


@event_type(
    "ioc.dossier.status.changed.v1",
    topic=LIFECYCLE_TOPIC,
    key="dossier_id",
    subject="dossier_id",
    description="A dossier moved from one national status to another (or was created).",
    examples=(
        {
            "dossier_id": "UBND-BD:H26.01-250102-0001",
            "dossier_code": "H26.01-250102-0001",
            "procedure_code": "1.001234",
            "agency_code": "UBND-BD",
            "admin_unit": "BD",
            "district": "BD",
            "channel": "online",
            "online_level": "fully_online",
            "has_fees": False,
            "status": 2,
            "received_at": "2025-01-02T02:00:00Z",
            "due_date": "2025-01-07",
            "at": "2025-01-02T02:00:00Z",
            "previous_status": None,
            "action": "receive",
            "status_name": "received",
            "clock_paused": False,
            "paid_online": None,
        },
    ),
)
class DossierStatusChanged(DossierFacts):
    previous_status: StatusCode | None = Field(None, ge=1, le=10)
    status_name: str = Field(max_length=32)
    action: str = Field(max_length=32, pattern=r"^[a-z_]+$", description="the transition that was applied")
    clock_paused: StrictBool = Field(False, description="the legal clock is paused (documents requested)")
    paid_online: StrictBool | None = Field(None, description="for fees paid: whether online")
    # Decision 766 facts (optional, so events without them still validate: compatible within v1)
    digitised: StrictBool | None = Field(
        None, description="receive: the dossier's documents were digitised at receipt (766 digitisation)"
    )
    result_esigned: StrictBool | None = Field(
        None,
        description="resolve / return_result: the result is a legally valid electronic document (digitally "
        "signed; 766 digitisation)",
    )


Rating = Literal["very_satisfied", "satisfied", "unsatisfied"]


@event_type(
    "ioc.dossier.feedback.recorded.v1",
    topic=LIFECYCLE_TOPIC,
    key="dossier_id",
    subject="dossier_id",
    description="The applicant rated the handling of the dossier and/or complained about it (766 satisfaction). "
    "Only the rating and whether there was a complaint: no text, no person.",
)
class DossierFeedbackRecorded(DossierFacts):
    rating: Rating | None = Field(None, description="the applicant's rating of the handling, if given")
    complained: StrictBool = Field(
        False, description="a complaint or petition (phản ánh, kiến nghị) about this dossier's handling"
    )


@event_type(
    "ioc.dossier.portal.synced.v1",
    topic=LIFECYCLE_TOPIC,
    key="dossier_id",
    subject="dossier_id",
    description="A status of the dossier reached the National Public Service Portal (766 transparency).",
)
class DossierPortalSynced(DossierFacts):
    synced_status: StatusCode = Field(ge=1, le=10, description="the national status that was synchronised")
    status_at: datetime = Field(description="when that status was reached")
    synced_at: datetime = Field(description="when the portal acknowledged it")
    on_time: StrictBool = Field(
        description="synchronised within the service's deadline (docs/dossier-766.md)"
    )


@event_type(
    "ioc.dossier.deadline.approached.v1",
    topic=LIFECYCLE_TOPIC,
    key="dossier_id",
    subject="dossier_id",
    description="An open dossier is due within the warning horizon (working days).",
)
class DossierDeadlineApproached(DossierFacts):
    working_days_left: StrictInt = Field(ge=0)


@event_type(
    "ioc.dossier.deadline.missed.v1",
    topic=LIFECYCLE_TOPIC,
    key="dossier_id",
    subject="dossier_id",
    description="An open dossier passed its due date without being resolved (overdue).",
)
class DossierOverdue(DossierFacts):
    days_overdue: StrictInt = Field(ge=1, description="calendar days past the due date")


@event_type(
    "ioc.dossier.apology.issued.v1",
    topic=LIFECYCLE_TOPIC,
    key="dossier_id",
    subject="dossier_id",
    description="The agency apologised for a late dossier and promised a new date (form 04, Circular 01/2018).",
)
class DossierApologized(DossierFacts):
    promised_date: date


@event_type(
    "ioc.dossier.step.handed_over.v1",
    topic=LIFECYCLE_TOPIC,
    key="dossier_id",
    subject="dossier_id",
    description="A processing step was handed over to the next officer (form 05 control slip).",
)
class DossierStepHandedOver(DossierFacts):
    step: StrictInt = Field(ge=1, le=100)
    step_name: str = Field(min_length=1, max_length=100)


__all__ = [
    "ALARM_EVENT",
    "ALARM_TOPIC_NAME",
    "CHANNEL_CODES",
    "KPI_EVENT",
    "KPI_TOPIC_NAME",
    "LIFECYCLE_TOPIC",
    "STATUS_NAMES",
    "DossierApologized",
    "DossierDeadlineApproached",
    "DossierFacts",
    "DossierFeedbackRecorded",
    "DossierId",
    "DossierOverdue",
    "DossierPortalSynced",
    "DossierStatusChanged",
    "DossierStepHandedOver",
    "dossier_id",
    "dossier_id_of",
]
