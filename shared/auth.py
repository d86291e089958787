"""Authentication and authorization: API keys bound to principals with scopes.

A key looks like ``ioc_<key_id>_<secret>``; only a SHA-256 of the (256-bit random) secret is stored, so a
database leak does not leak usable keys. Every write endpoint depends on :func:`require_scope`; 401 means no
or bad credential, 403 means the principal may not do this. ``ioc keys issue/revoke`` manages keys.
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


def _source_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def require_scope(scope: str, roles: frozenset[str] | None = None, *, allow_ticket: bool = False):
    """FastAPI dependency: the calling :class:`Principal`, which must hold ``scope`` (and, when ``roles`` is
    given, have one of those roles: ``attributes.role``, else its kind).

    401 without a valid key, 403 without the scope or role, 429 over the rate limit or after too many failed
    authentications from the caller's address. ``allow_ticket``: a Server-Sent Events route, which also
    accepts a single-use ``?ticket=`` from :func:`issue_stream_ticket` (never a key in the URL).
    """

    async def dependency(request: Request) -> Principal:
        ctx = request.app.state.ctx
        throttle: FailedAuthThrottle | None = getattr(ctx, "auth_throttle", None)
        address = _source_address(request)
        if throttle is not None:
            await throttle.check(address)
        token = bearer_token(request)
        ticket = request.query_params.get(TICKET_QUERY) if allow_ticket and not token else None
        if not token and not ticket:
            raise ApiError(
                401,
                "unauthenticated",
                "an API key is required (Authorization: Bearer <key>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if token:
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
        if not principal.has_scope(scope):
            raise ApiError(403, "forbidden", f"this principal lacks the scope {scope!r}")
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

    dependency.__name__ = f"require_{scope.replace(':', '_').replace('*', 'any')}"
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
