"""Dossier events: domain objects → CloudEvents, written to the service's transactional outbox
(``shared.outbox``) in the same PostgreSQL transaction as the change they report, and published by its relay.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.contracts.base import EventModel, event_type_of
from shared.contracts.cloudevents import EncodedEvent, encode
from shared.contracts.dossier import (
    ALARM_EVENT,
    DossierApologized,
    DossierDeadlineApproached,
    DossierFeedbackRecorded,
    DossierOverdue,
    DossierPortalSynced,
    DossierStatusChanged,
    DossierStepHandedOver,
    dossier_id,
)

from .domain import Dossier, Procedure, utc

SOURCE = "/ioc/dossier"


def _iso(at: datetime) -> str:
    return utc(at).isoformat().replace("+00:00", "Z")


def facts(d: Dossier, procedure: Procedure, at: datetime) -> dict[str, Any]:
    """The fields every dossier event carries. Only codes, statuses and times: never the applicant."""
    return {
        "dossier_id": dossier_id(d.agency_code, d.code),
        "dossier_code": d.code,
        "procedure_code": d.procedure_code,
        "agency_code": d.agency_code,
        "admin_unit": d.admin_unit,
        "district": d.district,
        "channel": d.channel,
        "online_level": procedure.online_level,
        "has_fees": procedure.has_fees,
        "status": d.status,
        "received_at": d.received_at,
        "due_date": d.due_date,
        "at": at,
    }


def _encode(payload: EventModel, at: datetime) -> EncodedEvent:
    return encode(event_type_of(payload), payload, source=SOURCE, time=_iso(at))


def status_changed(
    d: Dossier,
    procedure: Procedure,
    *,
    action: str,
    previous: int | None,
    at: datetime,
    paid_online: bool | None = None,
) -> EncodedEvent:
    payload = DossierStatusChanged(
        **facts(d, procedure, at),
        previous_status=previous,
        status_name=d.status_name,
        action=action,
        clock_paused=d.paused_at is not None,
        paid_online=paid_online,
        digitised=d.digitised if action == "receive" else None,
        result_esigned=d.result_esigned if action in ("resolve", "return_result") else None,
    )
    return _encode(payload, at)


def feedback_recorded(
    d: Dossier, procedure: Procedure, at: datetime, rating: str | None, complained: bool
) -> EncodedEvent:
    payload = DossierFeedbackRecorded(**facts(d, procedure, at), rating=rating, complained=complained)
    return _encode(payload, at)


def portal_synced(
    d: Dossier,
    procedure: Procedure,
    *,
    synced_status: int,
    status_at: datetime,
    synced_at: datetime,
    on_time: bool,
) -> EncodedEvent:
    payload = DossierPortalSynced(
        **facts(d, procedure, synced_at),
        synced_status=synced_status,
        status_at=status_at,
        synced_at=synced_at,
        on_time=on_time,
    )
    return _encode(payload, synced_at)


def calendar_alarm(
    state: str, at: datetime, confirmed_through: str | None, horizon_days: int
) -> EncodedEvent:
    """The calendar alarm: raised while the working calendar is not confirmed ``horizon_days`` ahead (e.g. next
    year's Tết days not yet decided: due dates beyond the confirmed date rest on the library's estimate)."""
    if state == "raised":
        message = (
            f"working calendar confirmed only through {confirmed_through or 'no date'}: add the government's "
            f"decisions for the next {horizon_days} days (shared/data/calendar_vn_decisions.csv)"
        )
    else:
        message = f"working calendar confirmed through {confirmed_through}"
    payload = ALARM_EVENT.model.model_validate(
        dict(
            alarm_id="dossier:calendar_unconfirmed:city",
            domain="dossier",
            alarm_type="calendar_unconfirmed",
            state=state,
            severity="warning",
            source_id="working-calendar",
            at=at,
            message=message,
        )
    )
    return encode(ALARM_EVENT, payload, source=SOURCE, time=_iso(at))


def apologized(d: Dossier, procedure: Procedure, at: datetime) -> EncodedEvent:
    assert d.promised_date is not None
    return _encode(DossierApologized(**facts(d, procedure, at), promised_date=d.promised_date), at)


def handed_over(d: Dossier, procedure: Procedure, at: datetime, step_name: str) -> EncodedEvent:
    return _encode(DossierStepHandedOver(**facts(d, procedure, at), step=d.step, step_name=step_name), at)


def deadline_approached(d: Dossier, procedure: Procedure, at: datetime, days_left: int) -> EncodedEvent:
    return _encode(DossierDeadlineApproached(**facts(d, procedure, at), working_days_left=days_left), at)


def overdue(d: Dossier, procedure: Procedure, at: datetime, days: int) -> EncodedEvent:
    return _encode(DossierOverdue(**facts(d, procedure, at), days_overdue=days), at)
