"""Settings of the meter service (``IOC_METER_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class MeterSettings(ServiceSettings):
    """The meter service: port 8101, validation limits, cache refresh, feeder-outage rule."""

    model_config = SettingsConfigDict(env_prefix="IOC_METER_", extra="ignore", populate_by_name=True)

    service_name: str = "meter"
    port: int = 8101
    # Largest batch a request may carry (413 batch_too_large above it). The request schemas' ceilings (what the
    # OpenAPI document shows) cannot be raised, only lowered.
    max_batch_readings: int = Field(10_000, ge=1, le=10_000)
    max_batch_events: int = Field(10_000, ge=1, le=10_000)
    max_batch_meters: int = Field(50_000, ge=1, le=50_000)
    max_demand_kw: float = 250.0
    register_modulus_kwh: float = 1_000_000.0
    future_tolerance_seconds: int = 120
    registry_refresh_seconds: float = 30.0
    event_dedup_memory: int = 200_000
    # Register states are written to PostgreSQL this often (coalesced), after Kafka acknowledged the readings.
    register_flush_seconds: float = 1.0
    # After requests, the C heap's free pages are returned to the system at most this often, with a fixed mmap
    # threshold (services/meter/memory.py). Off by default (0): its effect on memory was inside the bench's
    # noise and the meter-ingest bench measured more CPU with it (docs/performance-targets.md).
    heap_release_seconds: float = Field(0.0, ge=0)
    # IEEE 1366-2012: an interruption of this long or shorter is momentary (the standard's 5 minutes).
    momentary_limit_seconds: float = 300.0
    # Power-downs and power-ups are paired by event time within this horizon (an unmatched power-up waits this
    # long for its power-down, then an interruption is inferred from missing reads, or it is counted unpaired).
    pairing_horizon_seconds: int = 7 * 86400
    # A cumulative register not moving for this many intervals is flagged frozen.
    frozen_intervals: int = 96
    feeder_outage_fraction: float = 0.5
    feeder_outage_min_meters: int = 3
