"""Prometheus gauges of the city working calendar (``shared.calendar``), set by the services that use it."""

from __future__ import annotations

from prometheus_client import Gauge

CALENDAR_CONFIRMED_AHEAD = Gauge(
    "ioc_calendar_confirmed_ahead_seconds",
    "How far ahead of today the working calendar follows decisions actually taken (negative: run out)",
    ["service"],
)
CALENDAR_UNCONFIRMED = Gauge(
    "ioc_calendar_unconfirmed",
    "1 when some day within the service's horizon is beyond the confirmed working calendar",
    ["service"],
)
