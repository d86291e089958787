"""Settings of the city service (``IOC_CITY_*``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class CitySettings(ServiceSettings):
    """City KPI layer and operations console."""

    model_config = SettingsConfigDict(env_prefix="IOC_CITY_", extra="ignore", populate_by_name=True)

    service_name: str = "city"
    port: int = 8100
    kpi_definitions_path: str | None = None  # extra KPI YAML (file or directory) beside shared/kpis
    kpi_domains: list[str] | None = (
        None  # domains whose ioc.<d>.kpis the processor reads; None = all registered
    )
    consumer_group: str = "city-store"
    # Alarms in one district within this many minutes of each other form one incident.
    correlation_minutes: float = 15.0
    # ...and an alarm of a district whose incident is still open joins it up to this long after it opened.
    incident_span_minutes: float = 120.0
    # "No signal": a district (or a whole domain) whose KPIs stopped arriving for this long.
    district_silence_seconds: float = 1800.0
    domain_silence_seconds: float = 900.0
    # Retention of the time series: raw window values, minute and hour roll-ups (days are kept).
    raw_retention_days: int = 35
    minute_retention_days: int = 100
    hour_retention_days: int = 800
    stream_retention_hours: int = 48
    retention_interval_seconds: float = 3600.0
    # Server-Sent Events: heartbeat comment period and how long one connection lasts before the client
    # reconnects (with Last-Event-ID, so nothing is lost).
    sse_heartbeat_seconds: float = 15.0
    sse_max_seconds: float = 600.0
    sse_poll_seconds: float = 1.0
    # Live streams (stream + tail) held at once per principal and by the whole process (429 / 503 beyond).
    sse_max_streams_per_principal: int = 4
    sse_max_streams: int = 64
    # The archive service the console's archive extracts are forwarded to (GET /v1/exports/archive).
    archive_url: str = "http://127.0.0.1:8105"
    archive_timeout_seconds: float = 120.0
    # The domain services the asset pages ask for what only they know (an intersection's measures and
    # timeline, a kiosk's registry entry, an agency's Decision 766 scorecard), with the caller's own key.
    traffic_url: str = "http://127.0.0.1:8102"
    kiosk_url: str = "http://127.0.0.1:8103"
    dossier_url: str = "http://127.0.0.1:8104"
    domain_timeout_seconds: float = 20.0
