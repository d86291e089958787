"""The common shape of every IOC HTTP service.

:func:`create_service_app` builds a FastAPI app whose lifespan opens the PostgreSQL pool (applying the platform
and the service's migrations), creates missing topics, opens the event publisher, runs the service's own
start/stop hooks, and closes everything on shutdown. Every app gets the same error format, ``/healthz``,
``/readyz``, ``/metrics``, a body-size limit (413), a concurrency limit (503 + Retry-After), and per-route
Prometheus metrics. Nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.auth import PLATFORM_SCHEMA, ApiError, FailedAuthThrottle, KeyStore, Principal, RateLimiter
from shared.config import ServiceSettings
from shared.db import apply_migrations, create_pool, ping
from shared.gc_tuning import tune_gc
from shared.ingest import BatchResult
from shared.kafka.admin import ensure_topics
from shared.kafka.producer import BrokerUnavailable, EventPublisher
from shared.logging import configure_logging
from shared.metrics import BUILD_INFO, MetricsMiddleware, metrics_response
from shared.tasks import stop_tasks

log = logging.getLogger(__name__)
PLATFORM_MIGRATIONS = Path(__file__).parent / "migrations"


class ORJSONResponse(JSONResponse):
    """JSON responses serialised with orjson (FastAPI's own class of that name is deprecated)."""

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)


class RequestModel(BaseModel):
    """Base of request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str = Field(
        description="machine-readable: unauthenticated, forbidden, invalid_request, not_found, ..."
    )
    message: str = Field(description="what went wrong, for people")
    details: list[Any] = Field(default_factory=list, description="which item, which field, why")


class ErrorBody(BaseModel):
    """Every error answer of every IOC service."""

    error: ErrorDetail


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


#: The errors any operation of an IOC service may answer (documented on every operation, so a client and the
#: fuzz test know the complete set; ``Retry-After`` comes with 408, 429 and 503).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _error("Malformed JSON or Idempotency-Key"),
    401: _error("No, unknown or revoked credential (WWW-Authenticate: Bearer)"),
    403: _error("The principal lacks the scope, role or ownership"),
    404: _error("No such resource visible to this principal"),
    408: _error("The request body did not arrive in time"),
    409: _error("Conflict: the resource exists, or a request with this Idempotency-Key is still running"),
    413: _error("Request body over the size limit"),
    422: {
        # A batch whose every item was refused answers its per-item result (shared.ingest.batch_result).
        "model": ErrorBody | BatchResult,
        "description": "The request does not match the schema or the domain's rules (items and fields named)",
    },
    429: _error("Rate limit, live-stream limit, or too many failed authentications from this address"),
    503: _error(
        "Broker or database unavailable, or overloaded: nothing was accepted; retry after Retry-After"
    ),
}


@dataclass
class ServiceContext:
    """What a running service holds: settings, the DB pool, the publisher, auth, its background tasks. A service's
    own objects (its ``<D>Service``) live in typed attributes of ``app.state``, set in its ``on_start``."""

    name: str
    settings: ServiceSettings
    publisher: EventPublisher
    pool: asyncpg.Pool | None = None
    keys: KeyStore | None = None
    rate_limiter: RateLimiter | None = None
    auth_throttle: FailedAuthThrottle | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)

    @property
    def source(self) -> str:
        """CloudEvents ``source`` of everything this service publishes."""
        return f"/ioc/{self.name}"

    def spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task:
        """Run a background task for the life of the app (cancelled at shutdown)."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self.tasks.append(task)
        return task


Hook = Callable[[ServiceContext], Awaitable[None]]


def error_body(code: str, message: str, details: list | None = None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or []}}


def _validation_details(errors: Sequence[dict]) -> list[dict]:
    details = []
    for err in errors[:200]:
        loc = list(err.get("loc", ()))
        item = next((p for p in loc if isinstance(p, int)), None)
        fields = [p for p in loc if isinstance(p, str) and p != "body"]
        details.append(
            {
                "loc": loc,
                "item": item,
                "field": fields[-1] if fields else None,
                "reason": err.get("msg", "invalid"),
                "type": err.get("type"),
            }
        )
    return details


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return ORJSONResponse(error_body(exc.code, exc.message, exc.details), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return ORJSONResponse(
                error_body(
                    "malformed_json", "the request body is not valid JSON", _validation_details(errors)
                ),
                400,
            )
        return ORJSONResponse(
            error_body(
                "invalid_request", "the request does not match the schema", _validation_details(errors)
            ),
            422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # The router names only the first route matching the path; several routes may share it.
            headers["Allow"] = ", ".join(sorted(_allowed_methods(request)))
        return ORJSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=headers)

    @app.exception_handler(BrokerUnavailable)
    async def _broker(_: Request, exc: BrokerUnavailable):
        return ORJSONResponse(
            error_body(
                "broker_unavailable", "events could not be made durable; nothing was accepted, retry later"
            ),
            503,
            headers={"Retry-After": "5"},
        )

    async def _db_down(_: Request, exc: Exception):
        log.warning("database unavailable: %s", type(exc).__name__)
        return ORJSONResponse(
            error_body(
                "database_unavailable", "the database is unavailable; nothing was accepted, retry later"
            ),
            503,
            headers={"Retry-After": "5"},
        )

    # InternalClientError: asyncpg's protocol state breaks when the server dies in the middle of an operation
    # ("cannot switch to state 11; another operation is in progress", seen in the PostgreSQL-kill test).
    for exc_type in (
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        ConnectionError,
        OSError,
        asyncpg.CannotConnectNowError,
        TimeoutError,
        asyncpg.InternalClientError,
    ):
        app.add_exception_handler(exc_type, _db_down)

    @app.exception_handler(asyncpg.DataError)
    async def _bad_value(_: Request, exc: asyncpg.DataError):
        # A value the database cannot hold (out of range, NUL in text...) that validation let through:
        # the caller's input, not a server fault. The message is generic: it could echo personal data.
        log.warning("database refused a value: %s", type(exc).__name__)
        return ORJSONResponse(
            error_body("invalid_value", "a value is out of the range the service can store"), 422
        )

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception):
        log.exception("unhandled error")
        return ORJSONResponse(error_body("internal", "internal error"), 500)


def _allowed_methods(request: Request) -> set[str]:
    from fastapi.routing import iter_route_contexts
    from starlette.routing import compile_path

    path = request.url.path
    allowed: set[str] = set()
    for rc in iter_route_contexts(request.app.routes):
        if rc.methods and rc.path is not None and compile_path(rc.path)[0].match(path):
            allowed |= set(rc.methods)
    if "GET" in allowed:
        allowed.add("HEAD")
    return allowed or {"GET"}


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``, declared (Content-Length) or streamed (chunked).

    Bodies of writes are read here, up to ``max_bytes``, and replayed to the app: an error raised inside the
    app's ``receive`` would be turned into a 400 by the framework, so the limit is enforced before it runs.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_body("payload_too_large", f"request body over {self.max_bytes} bytes")
        for k, v in scope.get("headers", ()):
            if k == b"content-length" and v.isdigit() and int(v) > self.max_bytes:
                return await _send_json(send, 413, too_large)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []
        size = 0
        try:
            # A body trickled in slowly would hold a connection and a concurrency slot: it has a deadline.
            async with asyncio.timeout(self.timeout_s):
                while True:
                    msg = await receive()
                    if msg["type"] != "http.request":
                        return  # client went away
                    body = msg.get("body", b"")
                    size += len(body)
                    if size > self.max_bytes:
                        return await _send_json(send, 413, too_large)
                    chunks.append(body)
                    if not msg.get("more_body", False):
                        break
        except TimeoutError:
            return await _send_json(
                send,
                408,
                error_body("request_timeout", f"the request body did not arrive within {self.timeout_s:g} s"),
                {"connection": "close"},
            )
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# The console loads only its own scripts and styles (inline style attributes allowed: the charts set them);
# the OpenAPI pages load Swagger UI / ReDoc from FastAPI's default CDN with an inline bootstrap script.
# Nothing may frame any page (clickjacking of the console's buttons).
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src 'self' https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
_COMMON_SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeadersMiddleware:
    """Browser hardening headers on every HTTP answer (unless the app set them itself)."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self._console = [(b"content-security-policy", CONSOLE_CSP.encode()), *_COMMON_SECURITY_HEADERS]
        self._docs = [(b"content-security-policy", DOCS_CSP.encode()), *_COMMON_SECURITY_HEADERS]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = self._docs if scope.get("path") in DOCS_PATHS else self._console

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {k.lower() for k, _ in headers}
                headers += [h for h in extra if h[0] not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ConcurrencyLimitMiddleware:
    """Backpressure: beyond ``limit`` writes in flight, answer 503 with Retry-After instead of queueing."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        if self.inflight >= self.limit:
            return await _send_json(
                send,
                503,
                error_body("overloaded", "too many requests in flight; retry"),
                {"retry-after": "1"},
            )
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


async def _send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    raw = orjson.dumps(body)
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


async def _connect_pool(settings: ServiceSettings, schema: str, attempts: int = 60) -> asyncpg.Pool:
    for i in range(attempts):
        try:
            return await create_pool(settings.database, schema=schema)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if i == attempts - 1:
                raise
            log.warning("database not reachable yet (%s); retrying", type(exc).__name__)
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


def create_service_app(
    settings: ServiceSettings,
    *,
    name: str,
    title: str,
    description: str,
    routers: Sequence[APIRouter],
    migrations: Path | None = None,
    on_start: Hook | None = None,
    on_stop: Hook | None = None,
    topics: Sequence[Any] | None = None,
) -> FastAPI:
    """Build a service app. ``on_start``/``on_stop`` run inside the lifespan with the :class:`ServiceContext`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        configure_logging(name, settings.log_level)
        ctx = ServiceContext(
            name=name,
            settings=settings,
            publisher=EventPublisher(
                settings.kafka, client_id=f"ioc-{name}", timeout_s=settings.kafka.publish_timeout_s
            ),
        )
        app.state.ctx = ctx
        ctx.pool = await _connect_pool(settings, name)
        await apply_migrations(ctx.pool, PLATFORM_SCHEMA, PLATFORM_MIGRATIONS)
        if migrations is not None:
            await apply_migrations(ctx.pool, name, migrations)
        ctx.keys = KeyStore(ctx.pool, cache_seconds=float(getattr(settings, "auth_cache_seconds", 2.0)))
        ctx.rate_limiter = RateLimiter(settings.rate_limit)
        if settings.auth_failure_limit:
            ctx.auth_throttle = FailedAuthThrottle(settings.auth_failure_limit)
        if settings.create_topics:
            try:
                await ensure_topics(settings.kafka, topics)
            except Exception as exc:
                log.warning("could not create topics at start-up: %s", type(exc).__name__)
        try:
            await ctx.publisher.start()
        except BrokerUnavailable:
            log.warning("broker not reachable at start-up; will retry on first publish")
        if on_start is not None:
            await on_start(ctx)
        ctx.spawn(_purge_idempotency_keys_forever(ctx.pool), "idempotency-purge")
        tune_gc()  # after start-up, so what it loaded (registries, caches) is frozen out of the collector's way
        BUILD_INFO.labels(name, "0.1.0").set(1)
        log.info("service started", extra={"port": settings.port})
        try:
            yield
        finally:
            if on_stop is not None:
                await on_stop(ctx)
            # Cancelled until they end (a dependency's wait_for can swallow one cancellation), never waited on
            # for ever: a background loop that will not stop must not keep the service from stopping.
            await stop_tasks(ctx.tasks, timeout=10)
            await ctx.publisher.stop()
            try:  # close waits for every connection to be released: a task that would not stop may hold one
                async with asyncio.timeout(10):
                    await ctx.pool.close()
            except TimeoutError:
                log.error("database pool did not close within 10 s; terminating its connections")
                ctx.pool.terminate()

    app = FastAPI(
        title=title,
        description=description,
        version="1.0.0",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    install_error_handlers(app)
    for router in routers:
        app.include_router(router, responses=ERROR_RESPONSES)

    @app.get("/healthz", tags=["ops"], summary="Liveness")
    async def healthz() -> dict:
        return {"status": "ok", "service": name}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Readiness: database and broker reachable",
        responses={503: {"description": "database or broker unreachable (same body)"}},
    )
    async def readyz(request: Request):
        ctx: ServiceContext = request.app.state.ctx
        db_ok = ctx.pool is not None and await ping(ctx.pool)
        broker_ok = await ctx.publisher.ping()
        body = {
            "status": "ok" if db_ok and broker_ok else "unavailable",
            "database": db_ok,
            "broker": broker_ok,
        }
        return JSONResponse(body, 200 if db_ok and broker_ok else 503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", include_in_schema=False)
    async def metrics():
        return metrics_response()

    app.add_middleware(ConcurrencyLimitMiddleware, limit=settings.max_inflight_requests)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_s=float(getattr(settings, "body_timeout_seconds", 30.0)),
    )
    app.add_middleware(MetricsMiddleware, service=name)
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: also on 413/503 answers of the limits
    return app


STALE_IDEMPOTENCY_SECONDS = 60.0
#: How long a stored answer is replayed for an Idempotency-Key; older rows are purged and the key is free again.
IDEMPOTENCY_TTL_SECONDS = 24 * 3600.0
IDEMPOTENCY_PURGE_INTERVAL_SECONDS = 600.0


def request_hash(method: str, target: str, body: bytes) -> bytes:
    """Digest of what an Idempotency-Key is bound to: method, path with query string, and body (the principal
    is part of the row's key)."""
    h = hashlib.sha256()
    h.update(method.upper().encode())
    h.update(b"\n")
    h.update(target.encode())
    h.update(b"\n")
    h.update(body)
    return h.digest()


def _request_target(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def purge_idempotency_keys(pool: asyncpg.Pool, ttl_seconds: float = IDEMPOTENCY_TTL_SECONDS) -> int:
    """Delete expired idempotency rows (in batches, so a large backlog never holds a long transaction)."""
    purged = 0
    while True:
        n = await pool.fetchval(
            "WITH gone AS (DELETE FROM platform.idempotency_keys WHERE ctid IN (SELECT ctid FROM "
            "platform.idempotency_keys WHERE created_at < now() - make_interval(secs => $1) LIMIT 5000) "
            "RETURNING 1) SELECT count(*) FROM gone",
            ttl_seconds,
        )
        purged += n
        if n < 5000:
            return purged


async def _purge_idempotency_keys_forever(pool: asyncpg.Pool) -> None:
    while True:
        try:
            n = await purge_idempotency_keys(pool)
            if n:
                log.info("expired idempotency keys purged", extra={"rows": n})
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("idempotency purge failed: %s", type(exc).__name__)
        await asyncio.sleep(IDEMPOTENCY_PURGE_INTERVAL_SECONDS)


async def idempotent(
    request: Request,
    principal: Principal,
    scope: str,
    compute: Callable[[], Awaitable[tuple[int, dict]]],
) -> JSONResponse:
    """Run ``compute`` once per ``Idempotency-Key`` header value and principal; replay its answer on retries.

    The key is bound to the request's method, path (with query string) and body: reusing it for a different
    request is a 422 (IETF Idempotency-Key draft), never the other request's answer. Rows expire after
    :data:`IDEMPOTENCY_TTL_SECONDS` and are purged by every service. A retry with the same key and a different
    request is a 422; one arriving while the first is still running
    gets 409. Without the header, ``compute`` simply runs. Only successful (2xx) answers are remembered, so a
    retry after a 503 really retries.
    """
    key = request.headers.get("idempotency-key")
    if not key:
        status, body = await compute()
        return ORJSONResponse(body, status)
    if len(key) > 200:
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key is longer than 200 characters")
    ctx: ServiceContext = request.app.state.ctx
    assert ctx.pool is not None
    digest = request_hash(request.method, _request_target(request), await request.body())
    # An expired row no longer binds the key (the purge may not have run yet).
    await ctx.pool.execute(
        "DELETE FROM platform.idempotency_keys WHERE principal_id=$1 AND scope=$2 AND key=$3 "
        "AND created_at < now() - make_interval(secs => $4)",
        principal.id,
        scope,
        key,
        IDEMPOTENCY_TTL_SECONDS,
    )
    inserted = await ctx.pool.fetchval(
        "INSERT INTO platform.idempotency_keys(principal_id, scope, key, request_hash) VALUES ($1,$2,$3,$4) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        principal.id,
        scope,
        key,
        digest,
    )
    if not inserted:
        row = await ctx.pool.fetchrow(
            "SELECT request_hash, status_code, response FROM platform.idempotency_keys "
            "WHERE principal_id=$1 AND scope=$2 AND key=$3",
            principal.id,
            scope,
            key,
        )
        if row is not None and bytes(row["request_hash"]) != digest:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request (method, path or body)",
            )
        if row is not None and row["status_code"] is not None:
            return ORJSONResponse(
                row["response"], row["status_code"], headers={"Idempotent-Replayed": "true"}
            )
        # Still "in progress": a live request, or one that died before recording its answer (e.g. the
        # database went away after the publish). After a minute the key is taken over and the request rerun;
        # deterministic event ids let consumers drop whatever the first attempt had published.
        taken = await ctx.pool.fetchval(
            "UPDATE platform.idempotency_keys SET created_at = now() WHERE principal_id=$1 AND scope=$2 AND key=$3 "
            "AND status_code IS NULL AND created_at < now() - make_interval(secs => $4) RETURNING 1",
            principal.id,
            scope,
            key,
            STALE_IDEMPOTENCY_SECONDS,
        )
        if not taken:
            raise ApiError(
                409,
                "request_in_progress",
                "a request with this Idempotency-Key is still running",
                headers={"Retry-After": "1"},
            )
    try:
        status, body = await compute()
    except BaseException:
        await ctx.pool.execute(
            "DELETE FROM platform.idempotency_keys WHERE principal_id=$1 AND scope=$2 AND key=$3",
            principal.id,
            scope,
            key,
        )
        raise
    if 200 <= status < 300:
        await ctx.pool.execute(
            "UPDATE platform.idempotency_keys SET status_code=$4, response=$5 "
            "WHERE principal_id=$1 AND scope=$2 AND key=$3",
            principal.id,
            scope,
            key,
            status,
            body,
        )
    else:
        await ctx.pool.execute(
            "DELETE FROM platform.idempotency_keys WHERE principal_id=$1 AND scope=$2 AND key=$3",
            principal.id,
            scope,
            key,
        )
    return ORJSONResponse(body, status)
