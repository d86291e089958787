"""Settings shared by every IOC process (pydantic-settings, ``IOC_`` environment variables).

Each service subclasses :class:`ServiceSettings` with its own fields and ``env_prefix``; the common
connection settings (``IOC_KAFKA_BOOTSTRAP_SERVERS``, ``IOC_DATABASE_URL``...) are read from the same
variables by every service, so one environment configures the whole center.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _common(name: str, default, description: str, **kw):
    # Common settings are read from IOC_<NAME> whatever the service's own prefix is.
    return Field(
        default, validation_alias=AliasChoices(f"IOC_{name}", name.lower()), description=description, **kw
    )


class KafkaSettings(BaseSettings):
    """How to reach Kafka. Defaults suit the embedded broker that ``ioc up`` starts."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    bootstrap_servers: str = _common("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092", "host:port[,host:port]")
    # The embedded Tansu broker answers InitProducerId with an error, so idempotence is off by
    # default there; ``ioc up`` against an external cluster should set it to true.
    enable_idempotence: bool = _common("KAFKA_IDEMPOTENCE", False, "idempotent producer (needs a real Kafka)")
    security_protocol: str = _common(
        "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", "PLAINTEXT, SASL_PLAINTEXT, SASL_SSL, SSL"
    )
    sasl_mechanism: str | None = _common("KAFKA_SASL_MECHANISM", None, "SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str | None = _common("KAFKA_SASL_USERNAME", None, "the service principal's Kafka user")
    sasl_password: str | None = _common("KAFKA_SASL_PASSWORD", None, "its password", repr=False)
    ssl_cafile: str | None = _common("KAFKA_SSL_CAFILE", None, "CA bundle for TLS")
    replication_factor: int = _common(
        "KAFKA_REPLICATION_FACTOR", 1, "replication factor for topics IOC creates"
    )
    partitions_override: int | None = _common(
        "KAFKA_PARTITIONS", None, "force every topic's partition count (tests)"
    )
    linger_ms: int = _common("KAFKA_LINGER_MS", 5, "producer linger")
    # Measured on meter readings (bench/producer_compression.py, docs/operations.md "Disk"): zstd stores a
    # reading in a fraction of its raw size for a few µs of producer CPU. Tansu and Apache Kafka both accept it.
    compression_type: Literal["zstd", "lz4", "gzip", "snappy", "none"] = _common(
        "KAFKA_COMPRESSION", "zstd", "producer compression codec of every IOC producer"
    )
    min_insync_replicas: int | None = _common(
        "KAFKA_MIN_INSYNC_REPLICAS",
        None,
        "min.insync.replicas of topics IOC creates (default: 2 when replicated 3 or more times, else 1)",
    )
    metadata_max_age_ms: int = _common(
        "KAFKA_METADATA_MAX_AGE_MS",
        30_000,
        "how old producer metadata (partition counts) may get before it is read again",
    )
    # Compacted topics (processor changelogs, registries): the active segment is never compacted, so without a
    # bound on its age a changelog's dirty tail (and a recovery's read) grows for the broker default of 7 days.
    compacted_segment_ms: int = _common(
        "KAFKA_COMPACTED_SEGMENT_MS", 3_600_000, "segment.ms of compacted topics IOC creates"
    )
    compacted_segment_bytes: int = _common(
        "KAFKA_COMPACTED_SEGMENT_BYTES", 64 * 1024 * 1024, "segment.bytes of compacted topics IOC creates"
    )
    compacted_min_cleanable_dirty_ratio: float = _common(
        "KAFKA_COMPACTED_MIN_CLEANABLE_DIRTY_RATIO",
        0.1,
        "min.cleanable.dirty.ratio of compacted topics IOC creates",
    )
    compacted_max_compaction_lag_ms: int = _common(
        "KAFKA_COMPACTED_MAX_COMPACTION_LAG_MS",
        6 * 3_600_000,
        "max.compaction.lag.ms of compacted topics IOC creates (a record is compacted within this)",
    )
    compacted_delete_retention_ms: int = _common(
        "KAFKA_COMPACTED_DELETE_RETENTION_MS",
        86_400_000,
        "delete.retention.ms (tombstone life) of compacted topics IOC creates",
    )
    publish_timeout_s: float = _common(
        "KAFKA_PUBLISH_TIMEOUT_SECONDS",
        10.0,
        "how long a write waits for the broker's acknowledgement before 503",
    )

    @model_validator(mode="after")
    def _sasl_needs_a_sasl_protocol(self):
        # Credentials with PLAINTEXT/SSL would be silently ignored: the client would connect unauthenticated.
        if (self.sasl_mechanism or self.sasl_username) and self.security_protocol not in (
            "SASL_PLAINTEXT",
            "SASL_SSL",
        ):
            raise ValueError("SASL credentials need IOC_KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT)")
        if self.sasl_mechanism and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                "IOC_KAFKA_SASL_MECHANISM needs IOC_KAFKA_SASL_USERNAME and IOC_KAFKA_SASL_PASSWORD"
            )
        return self

    @property
    def producer_compression(self) -> str | None:
        """The codec as aiokafka's ``compression_type`` takes it."""
        return None if self.compression_type == "none" else self.compression_type

    def topic_config(self, spec) -> dict[str, str]:
        """Topic-level configuration IOC creates ``spec`` with (shared.contracts.TopicSpec): the catalogue's own,
        the replication floor, and segment/compaction settings for compacted topics."""
        cfg = dict(spec.config())
        isr = self.min_insync_replicas
        if isr is None:
            isr = 2 if self.replication_factor >= 3 else 1
        cfg["min.insync.replicas"] = str(isr)
        if spec.compacted:
            cfg.setdefault("segment.ms", str(self.compacted_segment_ms))
            cfg.setdefault("segment.bytes", str(self.compacted_segment_bytes))
            cfg.setdefault("min.cleanable.dirty.ratio", str(self.compacted_min_cleanable_dirty_ratio))
            cfg.setdefault("max.compaction.lag.ms", str(self.compacted_max_compaction_lag_ms))
            cfg.setdefault("delete.retention.ms", str(self.compacted_delete_retention_ms))
        return cfg

    def client_kwargs(self) -> dict:
        """Keyword arguments common to aiokafka producers, consumers and admin clients."""
        kw: dict = {"bootstrap_servers": self.bootstrap_servers, "security_protocol": self.security_protocol}
        if self.sasl_mechanism:
            kw.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kw["ssl_context"] = create_ssl_context(cafile=self.ssl_cafile)
        return kw


class DatabaseSettings(BaseSettings):
    """How to reach PostgreSQL."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    url: str = _common("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/ioc", "asyncpg DSN")
    pool_min: int = _common("DATABASE_POOL_MIN", 1, "pool minimum size")
    pool_max: int = _common("DATABASE_POOL_MAX", 10, "pool maximum size")


class ServiceSettings(BaseSettings):
    """Base settings of an IOC service: its name, where it listens, Kafka, PostgreSQL and limits."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    service_name: str = "ioc"
    host: str = "127.0.0.1"
    port: int = 8000
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    max_body_bytes: int = _common(
        "MAX_BODY_BYTES", 8 * 1024 * 1024, "largest request body accepted (413 above)"
    )
    rate_limit: str = _common("RATE_LIMIT", "600/second", "per-principal request rate limit (limits syntax)")
    max_inflight_requests: int = _common("MAX_INFLIGHT_REQUESTS", 64, "concurrent write requests before 503")
    log_level: str = _common("LOG_LEVEL", "INFO", "log level")
    create_topics: bool = _common("CREATE_TOPICS", True, "create missing topics at start-up")
