"""Settings of the archive (``IOC_ARCHIVE_*`` environment variables)."""

from __future__ import annotations

import os

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class ArchiveSettings(ServiceSettings):
    """Archiver, extracts API, query and replay settings; the common ``IOC_*`` connection settings apply too."""

    model_config = SettingsConfigDict(env_prefix="IOC_ARCHIVE_", extra="ignore", populate_by_name=True)

    service_name: str = "archive"
    port: int = 8105
    #: where the archive lives: a directory (default ``$IOC_STATE_DIR/archive``, ``var/archive``), or an fsspec
    #: URL such as ``s3://ioc-archive/events``
    root: str = Field(default_factory=lambda: os.path.join(os.environ.get("IOC_STATE_DIR", "var"), "archive"))
    #: ``ioc up`` runs an archiver and restores the day from the archive after starting an empty broker
    enabled: bool = True
    #: fsspec options of ``root`` (JSON), e.g. {"endpoint_url": "http://minio:9000"}; credentials come from
    #: the store's own environment variables (AWS_ACCESS_KEY_ID ...), never from here
    storage_options: dict = Field(default_factory=dict)
    #: the archiver's name: its state file, one writer per name (run several with disjoint ``topics``)
    name: str = "archiver"
    #: topics to archive; empty: every non-internal topic of the catalogue but ``exclude``
    topics: list[str] = Field(default_factory=list)
    #: never archived: dead letters hold records as they arrived, which may hold anything
    exclude: list[str] = Field(default_factory=lambda: ["ioc.deadletter"])
    #: a commit when this many records are buffered, or when the oldest buffered one waited ``flush_seconds``
    flush_records: int = 200_000
    flush_seconds: float = 60.0
    #: Parquet row groups and zstd level
    row_group_rows: int = 128 * 1024
    compression_level: int = 3
    #: compaction: files below this size in one topic-date are merged once there are ``compact_min_files``
    compact_small_bytes: int = 32 * 1024 * 1024
    compact_min_files: int = 8
    #: how often the archiver looks for compaction and expiry work (seconds)
    maintenance_seconds: float = 300.0
    #: retention in days per topic (glob patterns allowed), else ``retention_days_default``
    retention_days: dict[str, int] = Field(
        default_factory=lambda: {
            "ioc.meter.*": 3 * 365,
            "ioc.traffic.events": 400,
            "ioc.traffic.signal_state": 30,
            "ioc.kiosk.heartbeats": 90,
            "ioc.dossier.lifecycle": 10 * 365,
            "ioc.platform.audit": 10 * 365,
        }
    )
    retention_days_default: int = 2 * 365
    #: restart continuity: topics replayed into an empty broker before the processors start; empty means the
    #: processors' source topics except those processors produce themselves (``restore_exclude``)
    restore_topics: list[str] = Field(default_factory=list)
    restore_exclude: list[str] = Field(
        default_factory=lambda: ["*.kpis", "*.alarms", "ioc.meter.feeder_supply", "ioc.internal.*"]
    )
    #: replay this far back from now (hours) at a restart; 0 is the start of the local day (``timezone``)
    restore_hours: float = 0.0
    #: the processors' day is Hanoi's
    timezone: str = "Asia/Ho_Chi_Minh"
    #: extracts API limits
    extract_max_rows: int = 1_000_000
    extract_max_days: int = 92
