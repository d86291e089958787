"""Kiosk service settings (``IOC_KIOSK_*`` environment variables)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class KioskSettings(ServiceSettings):
    """Settings of the kiosk service and its KPI processor."""

    model_config = SettingsConfigDict(env_prefix="IOC_KIOSK_", extra="ignore", populate_by_name=True)

    service_name: str = "kiosk"
    port: int = 8103
    heartbeat_timeout_seconds: float = Field(
        180.0, gt=0, description="silence after which a kiosk is offline (several missed 30-60 s heartbeats)"
    )
    kpi_interval_seconds: float = Field(30.0, gt=0, description="how often the processor publishes KPIs")
    tick_seconds: float = Field(1.0, gt=0, description="processor tick (offline detection resolution)")
    registry_refresh_seconds: float = Field(10.0, gt=0, description="reload of the in-memory kiosk registry")
    registry_republish_seconds: float = Field(
        5.0,
        gt=0,
        description="how often the outbox relay looks for registry events not yet on the registry topic (other "
        "replicas' writes; this replica's own are published at once) and its first retry delay",
    )
    max_clock_skew_seconds: float = Field(
        300.0, ge=0, description="how far in the future an event time may be"
    )
    max_event_age_seconds: float = Field(7 * 24 * 3600.0, gt=0, description="oldest event time accepted")
    calendar_csv: str = Field(
        "",
        description="the government's calendar decisions (shared/calendar.py format) for opening hours; empty for "
        "shared/data/calendar_vn_decisions.csv",
    )
