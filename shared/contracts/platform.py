"""Platform-level contracts: the audit trail of who did what (credentials, alarms, dossiers)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from shared.contracts.base import EventModel, TopicSpec, event_type, register_topic

AUDIT_TOPIC = register_topic(
    TopicSpec(
        name="ioc.platform.audit",
        partitions=1,
        key="principal",
        owner="platform",
        description="Append-only audit trail: principal, action, target, time. Never personal data.",
        retention_ms=365 * 24 * 3600 * 1000,
    )
)


@event_type(
    "ioc.platform.audit.recorded.v1",
    topic=AUDIT_TOPIC,
    key="principal",
    subject="target",
    description="A principal did something to a dossier, an alarm or a credential.",
)
class AuditRecorded(EventModel):
    principal: str = Field(max_length=64)
    action: str = Field(max_length=64)
    target: str = Field(max_length=200)
    at: datetime
    service: str = Field(max_length=32)
