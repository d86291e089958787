"""Settings of the city service (``IOC_CITY_*``)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from shared.config import ServiceSettings


class CitySettings(ServiceSettings):
    """City KPI layer and operations console."""

    model_config = SettingsConfigDict(env_prefix="IOC_CITY_", extra="ignore", populate_by_name=True)

    service_name: str = "city"
    port: int = 8100
    # The console map draws the boundaries alone unless a tile server is configured (docs/console-map.md):
    # an XYZ URL template such as https://tiles.example.vn/{z}/{x}/{y}.png (no credential in it) and its credit.
    map_tile_url: str = ""
    map_tile_attribution: str = ""
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
    # Console sign-in (docs/console.md, "Sign-in and roles"): a session ends after this long without a request,
    # and after its absolute lifetime (a shift) whatever the activity. The cookie is Secure when the request
    # came over https (behind a TLS proxy: uvicorn --proxy-headers) unless set here.
    session_idle_seconds: int = 1800
    session_absolute_seconds: int = 12 * 3600
    session_cookie_secure: bool | None = None
    # an open live stream of a signed-in operator ends within this long of its session ending
    sse_session_check_seconds: float = 15.0
    # Optional OIDC sign-in (authorization code flow with PKCE), e.g. a Keycloak realm: the issuer URL (https,
    # or http on loopback only), this client's id, its secret from IOC_CITY_OIDC_CLIENT_SECRET or a file,
    # the ID-token claim holding the user's roles (a dotted path: Keycloak's realm roles are
    # realm_access.roles) and how its values map to IOC roles (default: leader, operator, supervisor,
    # administrator or ioc-<role>).
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: SecretStr | None = None
    oidc_client_secret_file: str | None = None
    oidc_role_claim: str = "roles"
    oidc_role_map: dict[str, str] = {}
    oidc_scopes: str = "openid profile"
    oidc_label: str = "OIDC"
    # this service's public callback URL (…/v1/session/oidc/callback); default: from the request
    oidc_redirect_url: str | None = None
    # How often the incident workflow's background task escalates unacknowledged incidents and returns alarms
    # whose shelf ran out (services/city/service_incidents.py).
    incident_escalation_interval_seconds: float = 15.0
    # The domain services the asset pages ask for what only they know (an intersection's measures and
    # timeline, a kiosk's registry entry, an agency's Decision 766 scorecard), with the caller's own key.
    traffic_url: str = "http://127.0.0.1:8102"
    kiosk_url: str = "http://127.0.0.1:8103"
    dossier_url: str = "http://127.0.0.1:8104"
    domain_timeout_seconds: float = 20.0
