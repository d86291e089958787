"""Authentication and authorization: API keys and console sessions, both bound to principals with scopes.

A key looks like ``ioc_<key_id>_<secret>``; only a SHA-256 of the (256-bit random) secret is stored, so a
database leak does not leak usable keys. Every endpoint depends on :func:`require_scope`; 401 means no
or bad credential, 403 means the principal may not do this. ``ioc keys issue/revoke`` manages keys.

People at the console sign in instead (``POST /v1/session`` of the city service): the browser then holds only
an HttpOnly cookie with an opaque session id (:data:`SESSION_COOKIE`), checked by the same
:func:`require_scope` against ``platform.sessions`` (:class:`SessionStore`), which yields the same kind of
:class:`Principal`. A state-changing request authenticated by that cookie must carry the session's CSRF token
in :data:`CSRF_HEADER` (synchronizer token); a request with a key in a header needs none (no ambient
credential a foreign page could make the browser send).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from fastapi import Request
from limits import parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter

PLATFORM_SCHEMA = "platform"
KEY_PREFIX = "ioc_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: an agency, a field gateway, an operator, a service or an admin."""

    id: str
    kind: str
    scopes: frozenset[str]
    attributes: dict[str, Any] = field(default_factory=dict)

    def has_scope(self, scope: str) -> bool:
        domain = scope.split(":", 1)[0]
        return "*" in self.scopes or scope in self.scopes or f"{domain}:*" in self.scopes

    @property
    def role(self) -> str:
        return str(self.attributes.get("role", self.kind))


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message", "details"}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def refuse_unowned(
    items: Iterable[tuple[int, str]], may_report: Callable[[str], bool], *, field: str, noun: str
) -> None:
    """Entity ownership at ingest: a 403 naming every item whose entity the reporting principal may not report
    for, and then nothing of the batch is accepted. ``items``: (index in the batch, entity id) pairs of
    well-formed ids (see :func:`shared.contracts.base.is_entity_id`; a malformed id names no entity and is left
    to item validation, never echoed); ``may_report`` is asked once per id."""
    decided: dict[str, bool] = {}
    denied: list[dict[str, Any]] = []
    for i, entity in items:
        ok = decided.get(entity)
        if ok is None:
            ok = decided[entity] = may_report(entity)
        if not ok:
            denied.append(
                {
                    "item": i,
                    "id": entity,
                    "field": field,
                    "reason": f"this principal may not report for this {noun}",
                }
            )
    if denied:
        names = ", ".join(sorted({str(d["id"]) for d in denied})[:10])
        raise ApiError(403, "forbidden", f"not your {noun}(s): {names}; nothing was accepted", denied)


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def split_key(token: str) -> tuple[str, str] | None:
    if not token.startswith(KEY_PREFIX):
        return None
    rest = token[len(KEY_PREFIX) :]
    key_id, sep, secret = rest.partition("_")
    if not sep or not key_id or not secret or len(token) > 200:
        return None
    return key_id, secret


class KeyStore:
    """Principals and their keys in the ``platform`` schema."""

    def __init__(self, pool: asyncpg.Pool, *, cache_seconds: float = 2.0):
        self.pool = pool
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def upsert_principal(
        self,
        pid: str,
        kind: str,
        display_name: str,
        scopes: list[str],
        attributes: dict[str, Any] | None = None,
    ) -> None:
        await self.pool.execute(
            "INSERT INTO platform.principals(id, kind, display_name, scopes, attributes) VALUES ($1,$2,$3,$4,$5) "
            "ON CONFLICT (id) DO UPDATE SET kind=$2, display_name=$3, scopes=$4, attributes=$5, disabled_at=NULL",
            pid,
            kind,
            display_name,
            scopes,
            attributes or {},
        )

    async def get_principal(self, pid: str) -> dict[str, Any] | None:
        """A principal as stored (kind, display name, scopes, attributes, disabled), or ``None``."""
        row = await self.pool.fetchrow(
            "SELECT id, kind, display_name, scopes, attributes, disabled_at FROM platform.principals WHERE id = $1",
            pid,
        )
        if row is None:
            return None
        return {
            "id": row["id"],
            "kind": row["kind"],
            "display_name": row["display_name"],
            "scopes": sorted(row["scopes"]),
            "attributes": dict(row["attributes"]),
            "disabled": row["disabled_at"] is not None,
        }

    async def issue_key(self, principal_id: str) -> str:
        """Create a key for a principal and return it (shown once, never stored in clear)."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        await self.pool.execute(
            "INSERT INTO platform.api_keys(key_id, principal_id, secret_hash) VALUES ($1, $2, $3)",
            key_id,
            principal_id,
            _hash(secret),
        )
        return f"{KEY_PREFIX}{key_id}_{secret}"

    async def revoke_key(self, key_id: str) -> bool:
        r = await self.pool.execute(
            "UPDATE platform.api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id
        )
        self._cache.clear()
        return r.endswith("1")

    async def authenticate(self, token: str) -> Principal | None:
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        parts = split_key(token)
        principal = None
        if parts is not None:
            key_id, secret = parts
            row = await self.pool.fetchrow(
                "SELECT k.secret_hash, p.id, p.kind, p.scopes, p.attributes FROM platform.api_keys k "
                "JOIN platform.principals p ON p.id = k.principal_id "
                "WHERE k.key_id = $1 AND k.revoked_at IS NULL AND p.disabled_at IS NULL",
                key_id,
            )
            if row is not None and hmac.compare_digest(bytes(row["secret_hash"]), _hash(secret)):
                principal = Principal(
                    row["id"], row["kind"], frozenset(row["scopes"]), dict(row["attributes"])
                )
        if self.cache_seconds > 0:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[token] = (now + self.cache_seconds, principal)
        return principal


class RateLimiter:
    """Per-principal moving-window rate limit (the ``limits`` library, in memory per process)."""

    def __init__(self, rate: str):
        self.item = parse(rate)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def check(self, principal_id: str) -> None:
        if not await self.limiter.hit(self.item, principal_id):
            stats = await self.limiter.get_window_stats(self.item, principal_id)
            retry = max(1, int(stats.reset_time - time.time()) + 1)
            raise ApiError(
                429,
                "rate_limited",
                f"rate limit {self.item} exceeded for this principal",
                headers={"Retry-After": str(retry)},
            )


def bearer_token(request: Request) -> str | None:
    """The caller's key, from ``Authorization: Bearer`` or ``X-API-Key`` (never from the URL)."""
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token:
            return token.strip()
    return request.headers.get("x-api-key")


class FailedAuthThrottle:
    """Failed authentications per source address (moving window, in memory per process): once over the
    limit, every request from that address gets 429 with Retry-After, good key or not, until the window
    has moved on. Guessing keys is thereby bounded; legitimate callers elsewhere are unaffected."""

    def __init__(self, rate: str):
        self.item = parse(rate)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def check(self, address: str) -> None:
        if not await self.limiter.test(self.item, address):
            stats = await self.limiter.get_window_stats(self.item, address)
            retry = max(1, int(stats.reset_time - time.time()) + 1)
            raise ApiError(
                429,
                "too_many_failed_authentications",
                f"too many failed authentications from this address ({self.item}); retry later",
                headers={"Retry-After": str(retry)},
            )

    async def failed(self, address: str) -> None:
        await self.limiter.hit(self.item, address)


STREAM_TICKET_SECONDS = 30
TICKET_QUERY = "ticket"


def _ticket_hash(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode()).digest()


async def issue_stream_ticket(pool: asyncpg.Pool, principal: Principal) -> str:
    """A single-use ticket, valid :data:`STREAM_TICKET_SECONDS`, standing for ``principal`` on one
    Server-Sent Events request (a browser's EventSource cannot send headers). Only its hash is stored."""
    ticket = "iot_" + secrets.token_urlsafe(24)
    await pool.execute(
        "DELETE FROM platform.stream_tickets WHERE expires_at < now() - interval '1 minute'"
    )  # keeps the table at the tickets of the last minute
    await pool.execute(
        "INSERT INTO platform.stream_tickets(ticket_hash, principal_id, expires_at) "
        "VALUES ($1, $2, now() + make_interval(secs => $3))",
        _ticket_hash(ticket),
        principal.id,
        float(STREAM_TICKET_SECONDS),
    )
    return ticket


async def redeem_stream_ticket(pool: asyncpg.Pool, ticket: str) -> Principal | None:
    """The principal of an unexpired, unused ticket (and the ticket is used up), else ``None``."""
    if not ticket.startswith("iot_") or len(ticket) > 100:
        return None
    row = await pool.fetchrow(
        "WITH used AS (DELETE FROM platform.stream_tickets WHERE ticket_hash = $1 AND expires_at > now() "
        "RETURNING principal_id) SELECT p.id, p.kind, p.scopes, p.attributes FROM used "
        "JOIN platform.principals p ON p.id = used.principal_id WHERE p.disabled_at IS NULL",
        _ticket_hash(ticket),
    )
    if row is None:
        return None
    return Principal(row["id"], row["kind"], frozenset(row["scopes"]), dict(row["attributes"]))


# Console sign-in ---------------------------------------------------------------------------------------------
SESSION_COOKIE = "ioc_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# scrypt cost (RFC 7914): N=2^15, r=8, p=3 is one of OWASP's equivalent minimum settings (32 MiB, 3 lanes);
# the parameters are stored with each hash, so raising them later only affects new passwords.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 3
_SCRYPT_MAXMEM = 256 * 1024 * 1024


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt$hash`` (hex) of ``password`` with a fresh 16-byte salt."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_SCRYPT_MAXMEM, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time compare); ``False`` for a malformed hash.
    Without a stored hash a dummy one is still computed, so an unknown user takes as long as a wrong password."""
    try:
        scheme, n, r, p, salt, digest = (stored or "").split("$")
        if scheme != "scrypt":
            raise ValueError(scheme)
        params = (int(n), int(r), int(p), bytes.fromhex(salt), bytes.fromhex(digest))
    except ValueError:
        hashlib.scrypt(b"x", salt=b"0" * 16, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=_SCRYPT_MAXMEM)
        return False
    n_, r_, p_, salt_b, digest_b = params
    got = hashlib.scrypt(
        password.encode(), salt=salt_b, n=n_, r=r_, p=p_, maxmem=_SCRYPT_MAXMEM, dklen=len(digest_b)
    )
    return hmac.compare_digest(got, digest_b)


def _session_hash(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()


@dataclass(frozen=True)
class Session:
    """A console session as the holder of its cookie sees it (the id itself is never stored)."""

    principal: Principal
    csrf_token: str
    method: str
    expires_at: Any
    idle_expires_at: Any


class SessionStore:
    """Server-side console sessions in ``platform.sessions``: idle expiry (moved on by each request, never past
    the absolute expiry) and absolute expiry, both checked by the database clock."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def create(
        self, principal_id: str, *, method: str, idle_seconds: int, absolute_seconds: int
    ) -> tuple[str, str]:
        """A new session for ``principal_id``: ``(session id for the cookie, CSRF token)``."""
        session_id = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        # keeps the table at live sessions and those ended within the day (for the audit, the log has them)
        await self.pool.execute(
            "DELETE FROM platform.sessions WHERE expires_at < now() - interval '1 day' "
            "OR ended_at < now() - interval '1 day'"
        )
        await self.pool.execute(
            "INSERT INTO platform.sessions(id_hash, principal_id, csrf_token, method, idle_seconds, "
            "idle_expires_at, expires_at) VALUES ($1, $2, $3, $4, $5::int, "
            "LEAST(now() + make_interval(secs => $5::int), now() + make_interval(secs => $6)), "
            "now() + make_interval(secs => $6))",
            _session_hash(session_id),
            principal_id,
            csrf,
            method,
            idle_seconds,
            float(absolute_seconds),
        )
        return session_id, csrf

    async def authenticate(self, session_id: str) -> Session | None:
        """The live session of this id (its idle expiry moved on), else ``None``."""
        if not session_id or len(session_id) > 100:
            return None
        row = await self.pool.fetchrow(
            "UPDATE platform.sessions s SET last_seen_at = now(), "
            "idle_expires_at = LEAST(now() + make_interval(secs => s.idle_seconds), s.expires_at) "
            "FROM platform.principals p WHERE s.id_hash = $1 AND p.id = s.principal_id "
            "AND s.ended_at IS NULL AND s.expires_at > now() AND s.idle_expires_at > now() "
            "AND p.disabled_at IS NULL "
            "RETURNING p.id, p.kind, p.scopes, p.attributes, s.csrf_token, s.method, s.expires_at, "
            "s.idle_expires_at",
            _session_hash(session_id),
        )
        if row is None:
            return None
        principal = Principal(row["id"], row["kind"], frozenset(row["scopes"]), dict(row["attributes"]))
        return Session(principal, row["csrf_token"], row["method"], row["expires_at"], row["idle_expires_at"])

    async def end(self, session_id: str) -> bool:
        r = await self.pool.execute(
            "UPDATE platform.sessions SET ended_at = now() WHERE id_hash = $1 AND ended_at IS NULL",
            _session_hash(session_id),
        )
        return r.endswith(" 1")

    async def end_all(self, principal_id: str) -> int:
        """End every session of a principal (disabled, role changed, password reset)."""
        r = await self.pool.execute(
            "UPDATE platform.sessions SET ended_at = now() WHERE principal_id = $1 AND ended_at IS NULL",
            principal_id,
        )
        return int(r.split()[-1])


class SessionWatch:
    """For a long response (a live stream): whether the session that opened it still holds, asked at most every
    ``every`` seconds, so signing out, expiry or a disabled account also ends the streams. Always true for a
    request authenticated otherwise (a key: revoking it ends nothing already open, as before)."""

    def __init__(self, request: Request, every: float):
        self.session_id = (
            request.cookies.get(SESSION_COOKIE) if getattr(request.state, "session", None) else None
        )
        self.pool = request.app.state.ctx.pool
        self.every = every
        self.checked = time.monotonic()

    async def holds(self) -> bool:
        if self.session_id is None or time.monotonic() - self.checked < self.every:
            return True
        self.checked = time.monotonic()
        return await SessionStore(self.pool).authenticate(self.session_id) is not None


def check_csrf(request: Request, session: Session) -> None:
    """403 unless a state-changing request carries the session's CSRF token in :data:`CSRF_HEADER`."""
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER)
    if not sent:
        raise ApiError(
            403,
            "csrf_token_missing",
            f"a state-changing request signed in by the session cookie needs the {CSRF_HEADER} header "
            "(the csrf_token of GET /v1/session)",
            [{"header": CSRF_HEADER, "reason": "missing"}],
        )
    if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
        raise ApiError(
            403,
            "csrf_token_invalid",
            f"the {CSRF_HEADER} header does not match this session's token; reload the console",
            [{"header": CSRF_HEADER, "reason": "does not match the session"}],
        )


def _source_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def require_scope(
    scope: str | tuple[str, ...], roles: frozenset[str] | None = None, *, allow_ticket: bool = False
):
    """FastAPI dependency: the calling :class:`Principal`, which must hold ``scope`` (a tuple: any one of those
    scopes, e.g. a narrow aggregate-read scope beside the full read scope) and, when ``roles`` is given, have
    one of those roles (``attributes.role``, else its kind).

    The credential is an API key in a header, else the console's session cookie (:data:`SESSION_COOKIE`;
    a state-changing request then needs :data:`CSRF_HEADER`, see :func:`check_csrf`). 401 without a valid
    key or live session, 403 without the scope, role or CSRF token, 429 over the rate limit or after too many
    failed authentications from the caller's address. ``allow_ticket``: a Server-Sent Events route, which also
    accepts a single-use ``?ticket=`` from :func:`issue_stream_ticket` (never a key in the URL).
    """

    accepted = (scope,) if isinstance(scope, str) else tuple(scope)
    if not accepted:
        raise ValueError("require_scope needs at least one scope")

    async def dependency(request: Request) -> Principal:
        ctx = request.app.state.ctx
        throttle: FailedAuthThrottle | None = getattr(ctx, "auth_throttle", None)
        address = _source_address(request)
        if throttle is not None:
            await throttle.check(address)
        token = bearer_token(request)
        session_id = request.cookies.get(SESSION_COOKIE) if not token else None
        ticket = (
            request.query_params.get(TICKET_QUERY) if allow_ticket and not token and not session_id else None
        )
        if not token and not ticket and not session_id:
            raise ApiError(
                401,
                "unauthenticated",
                "sign in, or send an API key (Authorization: Bearer <key>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if session_id:
            session = await SessionStore(ctx.pool).authenticate(session_id)
            if session is None:
                # not counted as a failed authentication: a 256-bit id cannot be guessed, and a console whose
                # session expired keeps asking until it shows the sign-in form (it must not lock out the room)
                raise ApiError(
                    401,
                    "session_expired",
                    "the session has expired or ended; sign in again",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            check_csrf(request, session)
            principal: Principal | None = session.principal
            request.state.session = session
        elif token:
            store: KeyStore = ctx.keys
            principal = await store.authenticate(token)
        else:
            principal = await redeem_stream_ticket(ctx.pool, ticket or "")
        if principal is None:
            if throttle is not None:
                await throttle.failed(address)
            raise ApiError(
                401,
                "unauthenticated",
                "the API key is unknown or revoked" if token else "the ticket is unknown, used or expired",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not any(principal.has_scope(s) for s in accepted):
            wanted = " or ".join(repr(s) for s in accepted)
            raise ApiError(403, "forbidden", f"this principal lacks the scope {wanted}")
        if roles is not None and principal.role not in roles:
            raise ApiError(
                403,
                "forbidden",
                f"the role {principal.role!r} may not do this; roles allowed: {', '.join(sorted(roles))}",
            )
        limiter: RateLimiter | None = getattr(ctx, "rate_limiter", None)
        if limiter is not None:
            await limiter.check(principal.id)
        request.state.principal = principal
        return principal

    # named after the first scope (require_<domain>_<action>); ``scopes`` lists every one it accepts
    dependency.__name__ = f"require_{accepted[0].replace(':', '_').replace('*', 'any')}"
    dependency.scopes = accepted  # type: ignore[attr-defined]  # read by route introspection (tests/security)
    return dependency


async def record_audit(
    pool: asyncpg.Pool | asyncpg.Connection,
    *,
    principal: str,
    service: str,
    action: str,
    target: str,
    detail: dict | None = None,
) -> None:
    """Append to the audit trail (who did what to which dossier, alarm or credential, and when)."""
    await pool.execute(
        "INSERT INTO platform.audit_log(principal, service, action, target, detail) VALUES ($1,$2,$3,$4,$5)",
        principal,
        service,
        action,
        target,
        detail or {},
    )
