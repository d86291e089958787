"""Settings of the dossier service (``IOC_DOSSIER_*`` environment variables)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class DossierSettings(ServiceSettings):
    """Dossier service settings; the common ``IOC_*`` connection settings apply too."""

    model_config = SettingsConfigDict(env_prefix="IOC_DOSSIER_", extra="ignore", populate_by_name=True)

    service_name: str = "dossier"
    port: int = 8104
    #: administrative hierarchy file: the seed district CSV format or a generic code,name,level,parent_code CSV;
    #: empty for the built-in Hanoi seed
    hierarchy_csv: str = ""
    #: the government's calendar decisions (shared/calendar.py format); empty for shared/data's table
    calendar_csv: str = ""
    #: a status reaching the national portal later than this after it happened is not "on time" (766); IOC's
    #: choice, the Decision's exact deadline was not read (docs/dossier-766.md)
    portal_sync_max_delay_seconds: float = 86400.0
    #: raise the calendar alarm when the calendar is not confirmed this many days ahead
    calendar_horizon_days: int = 90
    #: warn when an open dossier is due within this many working days
    deadline_warning_days: int = 2
    #: how often the deadline watcher scans open dossiers
    deadline_scan_seconds: float = 60.0
    #: outbox relay: rows per publish and idle poll interval
    outbox_batch_size: int = 500
    outbox_poll_seconds: float = 0.5
    outbox_max_backoff_seconds: float = 10.0
    #: keep published outbox rows this long (for inspection) before deleting them
    outbox_retention_seconds: float = 24 * 3600.0
    #: stream processor: keep daily / monthly KPI windows this many days
    kpi_day_retention_days: int = 35
    kpi_month_retention_days: int = 400
