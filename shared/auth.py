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
    denied = []
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
        names = ", ".join(sorted({d["id"] for d in denied})[:10])
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
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token:
            return token.strip()
    return request.headers.get("x-api-key")


def require_scope(scope: str):
    """FastAPI dependency: the calling :class:`Principal`, which must hold ``scope``.

    401 without a valid key, 403 without the scope, 429 over the rate limit.
    """

    async def dependency(request: Request) -> Principal:
        token = bearer_token(request)
        if not token:
            raise ApiError(
                401,
                "unauthenticated",
                "an API key is required (Authorization: Bearer <key>)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        store: KeyStore = request.app.state.ctx.keys
        principal = await store.authenticate(token)
        if principal is None:
            raise ApiError(
                401,
                "unauthenticated",
                "the API key is unknown or revoked",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not principal.has_scope(scope):
            raise ApiError(403, "forbidden", f"this principal lacks the scope {scope!r}")
        limiter: RateLimiter | None = getattr(request.app.state.ctx, "rate_limiter", None)
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
