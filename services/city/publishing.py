"""City domain objects → CloudEvents on ``ioc.city.kpis`` and ``ioc.city.alarms``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from shared.contracts.base import event_type_of
from shared.contracts.city import CityAlarmChanged, CityKpiUpdated
from shared.contracts.cloudevents import EncodedEvent, encode, encode_many
from shared.contracts.common import kpi_key

SOURCE = "/ioc/city"
_KPI = event_type_of(CityKpiUpdated)
_ALARM = event_type_of(CityAlarmChanged)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def kpi_payload(
    *,
    kpi: str,
    domain: str,
    scope_level: str,
    scope_code: str,
    window_start: str,
    window_seconds: int,
    value: float | None,
    numerator: float,
    denominator: float | None,
    unit: str,
    status: str,
    target: float | None,
    partitions: int,
    updated_at: str,
) -> dict[str, Any]:
    """The payload of a ``CityKpiUpdated`` event, built from trusted, already-validated parts."""
    return {
        "kpi": kpi,
        "domain": domain,
        "scope_level": scope_level,
        "scope_code": scope_code,
        "window_start": window_start,
        "window_seconds": int(window_seconds),
        "value": None if value is None else float(value),
        "numerator": float(numerator),
        "denominator": None if denominator is None else float(denominator),
        "unit": unit,
        "status": status,
        "target": None if target is None else float(target),
        "partitions": max(1, int(partitions)),
        "updated_at": updated_at,
        "key": kpi_key(kpi, scope_level, scope_code),
    }


def kpi_updated(*, now: datetime, **parts: Any) -> EncodedEvent:
    """A ``CityKpiUpdated`` event (``parts`` as :func:`kpi_payload` takes them, without ``updated_at``)."""
    return encode(_KPI, kpi_payload(**parts, updated_at=iso(now)), source=SOURCE, time=iso(now))


def kpis_updated(payloads: Sequence[dict[str, Any]], now: datetime) -> list[EncodedEvent]:
    """``CityKpiUpdated`` events of :func:`kpi_payload` payloads made at ``now`` (headers built once)."""
    return encode_many(_KPI, payloads, source=SOURCE, time=iso(now))


def alarm_changed(
    *,
    alarm_id: str,
    alarm_type: str,
    state: str,
    severity: str,
    source_id: str,
    district: str | None,
    message: str,
    now: datetime,
) -> EncodedEvent:
    """A city-layer alarm raised or cleared."""
    payload = CityAlarmChanged(
        alarm_id=alarm_id,
        domain="city",
        alarm_type=alarm_type,
        state=state,
        severity=severity,
        source_id=source_id,
        district=district,
        at=now,
        message=message[:500],
    )
    return encode(_ALARM, payload, source=SOURCE, time=iso(now))
