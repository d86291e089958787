"""Settings shared by every IOC process (pydantic-settings, ``IOC_`` environment variables).

Each service subclasses :class:`ServiceSettings` with its own fields and ``env_prefix``; the common
connection settings (``IOC_KAFKA_BOOTSTRAP_SERVERS``, ``IOC_DATABASE_URL``...) are read from the same
variables by every service, so one environment configures the whole center.
"""

from __future__ import annotations

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
    # Authenticated event sources (shared/contracts/provenance.py): with keys, events are signed and checked.
    event_keys: str | None = _common(
        "EVENT_KEYS", None, "event signing keys: key_id=base64[,key_id=base64]", repr=False
    )
    event_keys_file: str | None = _common(
        "EVENT_KEYS_FILE", None, "JSON file {key_id: base64} of event signing keys (mode 0600)"
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
    auth_failure_limit: str = _common(
        "AUTH_FAILURE_LIMIT", "60/minute", "failed authentications per source address before 429 ('' = off)"
    )
    body_timeout_seconds: float = _common(
        "BODY_TIMEOUT_SECONDS", 30.0, "how long a request body may take to arrive before 408"
    )
    max_inflight_requests: int = _common("MAX_INFLIGHT_REQUESTS", 64, "concurrent write requests before 503")
    log_level: str = _common("LOG_LEVEL", "INFO", "log level")
    create_topics: bool = _common("CREATE_TOPICS", True, "create missing topics at start-up")
