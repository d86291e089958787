"""City domain objects → CloudEvents on ``ioc.city.kpis`` and ``ioc.city.alarms``."""

from __future__ import annotations

from datetime import datetime

from shared.contracts.base import event_type_of
from shared.contracts.city import CityAlarmChanged, CityKpiUpdated
from shared.contracts.cloudevents import EncodedEvent, encode
from shared.contracts.common import kpi_key

SOURCE = "/ioc/city"
_KPI = event_type_of(CityKpiUpdated)
_ALARM = event_type_of(CityAlarmChanged)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def kpi_updated(*, kpi: str, domain: str, scope_level: str, scope_code: str, window_start: str,
                window_seconds: int, value: float | None, numerator: float, denominator: float | None, unit: str,
                status: str, target: float | None, partitions: int, now: datetime) -> EncodedEvent:
    """A ``CityKpiUpdated`` event (the payload is built from trusted, already-validated parts)."""
    payload = {
        "kpi": kpi, "domain": domain, "scope_level": scope_level, "scope_code": scope_code,
        "window_start": window_start, "window_seconds": int(window_seconds),
        "value": None if value is None else float(value), "numerator": float(numerator),
        "denominator": None if denominator is None else float(denominator), "unit": unit, "status": status,
        "target": None if target is None else float(target), "partitions": max(1, int(partitions)),
        "updated_at": _iso(now), "key": kpi_key(kpi, scope_level, scope_code),
    }
    return encode(_KPI, payload, source=SOURCE, time=_iso(now))


def alarm_changed(*, alarm_id: str, alarm_type: str, state: str, severity: str, source_id: str,
                  district: str | None, message: str, now: datetime) -> EncodedEvent:
    """A city-layer alarm raised or cleared."""
    payload = CityAlarmChanged(alarm_id=alarm_id, domain="city", alarm_type=alarm_type, state=state,
                               severity=severity, source_id=source_id, district=district, at=now,
                               message=message[:500])
    return encode(_ALARM, payload, source=SOURCE, time=_iso(now))
