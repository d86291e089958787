"""Settings of the traffic-signal service (``IOC_TRAFFIC_*``)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class TrafficSettings(ServiceSettings):
    """Where the service listens and how it judges controller event logs."""

    model_config = SettingsConfigDict(env_prefix="IOC_TRAFFIC_", extra="ignore", populate_by_name=True)

    service_name: str = "traffic"
    port: int = 8102
    max_batch_events: int = 50_000
    future_tolerance_seconds: float = 60.0
    # Oldest event accepted live; older logs are sent as a backfill (POST /v1/events?backfill=true, ioc replay).
    max_event_age_seconds: float = 30 * 86400
    out_of_order_tolerance_seconds: float = 5.0
    chunk_events: int = 5000
    registry_refresh_seconds: float = 30.0
    # Stream processing
    bin_seconds: int = 900
    grace_seconds: int = 300
    stuck_detector_seconds: int = 600
    comm_loss_seconds: float = 300.0
    idle_flush_seconds: float = 900.0
    # Provisional district/city KPIs of the open 15-minute bins: republished at most once per this many
    # seconds (of event time and of processing time) per window; 0 publishes KPIs only when bins close.
    live_kpi_seconds: float = 30.0
    measures_store_group: str = "traffic-measures-store"
    store_measures: bool = True
