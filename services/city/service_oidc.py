"""OIDC sign-in to the console: the authorization code flow with PKCE (RFC 6749 4.1, RFC 7636, OpenID
Connect Core 1.0 3.1) against the deployment's provider (e.g. a Keycloak realm).

The browser is sent to the provider with ``state``, ``nonce`` and a PKCE challenge (none of them secret); the
callback's ``state`` finds the pending sign-in, which must belong to the same browser (a binding cookie); the
code is exchanged at the token endpoint with the PKCE verifier and the client secret in an HTTP Basic header
(never in a URL); the ID token's ``iss``, ``aud``/``azp``, ``exp`` and ``nonce`` are checked. Its signature is
not: it came straight from the token endpoint over TLS, which OIDC Core 3.1.3.7 (6) allows instead. Hence an
issuer must be https (plain http on loopback only, for development and tests).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import asyncpg
import httpx
import orjson

from services.city import repository_auth as repo
from services.city.roles import ROLE_SCOPES, ROLES
from services.city.settings import CitySettings
from shared.auth import ApiError, SessionStore, record_audit

PENDING_SECONDS = 600.0
DISCOVERY_SECONDS = 3600.0
CLOCK_SKEW_SECONDS = 120
# When the claim names several IOC roles, the one that may do most wins (an operator acts, a leader watches).
_RANK = ("administrator", "supervisor", "operator", "leader")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def configured(settings: CitySettings) -> bool:
    return bool(settings.oidc_issuer and settings.oidc_client_id)


def client_secret(settings: CitySettings) -> str:
    if settings.oidc_client_secret is not None:
        return settings.oidc_client_secret.get_secret_value()
    if settings.oidc_client_secret_file:
        with open(settings.oidc_client_secret_file) as f:
            return f.read().strip()
    return ""


def check_issuer_url(issuer: str) -> None:
    parts = urlsplit(issuer)
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in LOOPBACK):
        raise ApiError(503, "oidc_misconfigured", "the OIDC issuer must be an https URL")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 4.2: S256 = BASE64URL(SHA256(ASCII(code_verifier)))."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by dotted path (``realm_access.roles``)."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def role_from_claims(claims: dict[str, Any], claim_path: str, role_map: dict[str, str]) -> str | None:
    """The IOC role the provider's role claim grants (``None``: none)."""
    raw = claim(claims, claim_path)
    values = (
        [raw]
        if isinstance(raw, str)
        else [v for v in raw if isinstance(v, str)]
        if isinstance(raw, list)
        else []
    )
    mapping = role_map or {**{r: r for r in ROLES}, **{f"ioc-{r}": r for r in ROLES}}
    granted = {mapping[v] for v in values if mapping.get(v) in ROLES}
    return next((r for r in _RANK if r in granted), None)


def id_token_claims(id_token: str) -> dict[str, Any]:
    try:
        payload = id_token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, orjson.JSONDecodeError):
        raise ApiError(502, "oidc_bad_token", "the identity provider's ID token is not a JWT") from None
    if not isinstance(claims, dict):
        raise ApiError(502, "oidc_bad_token", "the identity provider's ID token is not a JWT")
    return claims


def check_id_token(claims: dict[str, Any], *, issuer: str, client_id: str, nonce: str, now: float) -> None:
    """OIDC Core 3.1.3.7 (2, 3, 4, 5, 9, 10, 11): refused with 401 naming the claim that is wrong."""
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    problems = []
    if claims.get("iss") != issuer:
        problems.append("iss")
    if client_id not in audiences or (len(audiences) > 1 and claims.get("azp") != client_id):
        problems.append("aud")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or exp + CLOCK_SKEW_SECONDS < now:
        problems.append("exp")
    if isinstance(iat, int | float) and iat - CLOCK_SKEW_SECONDS > now:
        problems.append("iat")
    if not isinstance(nonce, str) or not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
        problems.append("nonce")
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        problems.append("sub")
    if problems:
        raise ApiError(
            401,
            "oidc_token_refused",
            "the identity provider's ID token does not hold for this sign-in",
            [{"claim": c, "reason": "missing or wrong"} for c in problems],
        )


@dataclass(frozen=True)
class Started:
    authorize_url: str
    binding: str


async def discovery(settings: CitySettings, cache: dict[str, Any]) -> dict[str, Any]:
    """The provider's metadata (``/.well-known/openid-configuration``), cached for an hour."""
    issuer = str(settings.oidc_issuer).rstrip("/")
    check_issuer_url(issuer)
    hit = cache.get("oidc_discovery")
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(issuer + "/.well-known/openid-configuration")
        meta = r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        meta = None
    if not isinstance(meta, dict) or meta.get("issuer", "").rstrip("/") != issuer:
        raise ApiError(502, "oidc_unavailable", "the identity provider's metadata could not be read")
    cache["oidc_discovery"] = (time.monotonic() + DISCOVERY_SECONDS, meta)
    return meta


async def start(
    pool: asyncpg.Pool, settings: CitySettings, cache: dict[str, Any], redirect_uri: str
) -> Started:
    meta = await discovery(settings, cache)
    state, nonce, verifier, binding = (secrets.token_urlsafe(32) for _ in range(4))
    await repo.save_oidc_login(
        pool,
        state_hash=digest(state),
        binding_hash=digest(binding),
        code_verifier=verifier,
        nonce=nonce,
        redirect_uri=redirect_uri,
        seconds=PENDING_SECONDS,
    )
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.oidc_client_id,
            "redirect_uri": redirect_uri,
            "scope": settings.oidc_scopes,
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
    )
    return Started(f"{meta['authorization_endpoint']}?{query}", binding)


async def finish(
    pool: asyncpg.Pool,
    settings: CitySettings,
    cache: dict[str, Any],
    *,
    code: str,
    state: str,
    binding: str | None,
) -> str:
    """Exchange the code, check the ID token, provision the operator; the new session's id."""
    pending = await repo.take_oidc_login(pool, digest(state))
    if (
        pending is None
        or not binding
        or not secrets.compare_digest(digest(binding), bytes(pending["binding_hash"]))
    ):
        raise ApiError(
            400,
            "oidc_state_invalid",
            "this sign-in is unknown, used, expired or was started in another browser; sign in again",
        )
    meta = await discovery(settings, cache)
    issuer = str(settings.oidc_issuer).rstrip("/")
    client_id = str(settings.oidc_client_id)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(
                meta["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": pending["redirect_uri"],
                    "code_verifier": pending["code_verifier"],
                },
                auth=(client_id, client_secret(settings)),  # client_secret_basic: in a header
                headers={"Accept": "application/json"},
            )
    except httpx.HTTPError:
        raise ApiError(
            502, "oidc_unavailable", "the identity provider's token endpoint did not answer"
        ) from None
    if r.status_code != 200:
        raise ApiError(401, "oidc_code_refused", "the identity provider refused the authorization code")
    try:
        id_token = r.json()["id_token"]
    except (ValueError, KeyError, TypeError):
        raise ApiError(502, "oidc_bad_token", "the identity provider answered no ID token") from None
    claims = id_token_claims(str(id_token))
    check_id_token(claims, issuer=issuer, client_id=client_id, nonce=pending["nonce"], now=time.time())
    subject = f"{issuer}|{claims['sub']}"
    role = role_from_claims(claims, settings.oidc_role_claim, settings.oidc_role_map)
    if role is None:
        await record_audit(
            pool,
            principal=f"oidc:{claims['sub'][:64]}",
            service="city",
            action="session.refused",
            target=subject[:200],
            detail={"reason": f"no IOC role in the claim {settings.oidc_role_claim}"},
        )
        raise ApiError(
            403,
            "no_role",
            f"the identity provider gives this user no IOC role (claim {settings.oidc_role_claim!r}); "
            "ask an administrator",
        )
    pid = await _provision(pool, subject, claims, role)
    session_id, _ = await SessionStore(pool).create(
        pid,
        method="oidc",
        idle_seconds=settings.session_idle_seconds,
        absolute_seconds=settings.session_absolute_seconds,
    )
    await record_audit(
        pool,
        principal=pid,
        service="city",
        action="session.started",
        target=pid,
        detail={"method": "oidc", "role": role},
    )
    return session_id


async def _provision(pool: asyncpg.Pool, subject: str, claims: dict[str, Any], role: str) -> str:
    """The operator of this provider subject, created on first sign-in; its role follows the provider."""
    existing = await repo.operator_by_oidc_subject(pool, subject)
    if existing is not None and existing["disabled"]:
        raise ApiError(403, "forbidden", "this account is disabled in IOC")
    short = hashlib.sha256(subject.encode()).hexdigest()[:12]
    pid = existing["principal_id"] if existing is not None else f"oidc-{short}"
    if existing is not None:
        username = existing["username"]
    else:
        wanted = str(claims.get("preferred_username") or claims["sub"]).lower()[:50]
        username = wanted if not await repo.username_taken(pool, wanted) else f"{wanted}-{short[:6]}"
    async with pool.acquire() as conn, conn.transaction():
        await repo.upsert_operator(
            conn,
            principal_id=pid,
            username=username,
            display_name=str(claims.get("name") or username)[:120],
            role=role,
            scopes=list(ROLE_SCOPES[role]),
            password_hash=None,
            oidc_subject=subject,
        )
    return pid
