"""Use cases of console sign-in: signing in and out, managing operators (accounts of the console's people)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

import asyncpg

from services.city import repository_auth as repo
from services.city.roles import ROLE_SCOPES, ROLES
from shared.auth import (
    SCRYPT_N,
    ApiError,
    Principal,
    SessionStore,
    hash_password,
    record_audit,
    verify_password,
)

SERVICE = "city"
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
MIN_PASSWORD = 12  # NIST SP 800-63B 5.1.1.2 asks at least 8; an operations room's shared screens ask more
MAX_PASSWORD = 256


@dataclass(frozen=True)
class SignedIn:
    session_id: str
    csrf_token: str
    principal_id: str


def principal_id_for(username: str) -> str:
    return f"op-{username}"


def check_operator_fields(username: str, role: str, password: str | None) -> None:
    """422 naming each field that is wrong."""
    errors: list[dict[str, Any]] = []
    if not USERNAME.match(username):
        errors.append(
            {"field": "username", "reason": "2-63 of a-z 0-9 . _ -, starting with a letter or digit"}
        )
    if role not in ROLES:
        errors.append({"field": "role", "reason": f"one of {', '.join(ROLES)}"})
    if password is not None and not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        errors.append({"field": "password", "reason": f"{MIN_PASSWORD} to {MAX_PASSWORD} characters"})
    if errors:
        raise ApiError(422, "invalid_request", "the operator is not valid", errors)


async def list_operators(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Console accounts, their roles and live sessions."""
    return await repo.list_operators(pool)


async def operator_exists(pool: asyncpg.Pool, username: str) -> bool:
    return await repo.operator_by_username(pool, username) is not None


async def save_operator(
    pool: asyncpg.Pool,
    *,
    username: str,
    display_name: str,
    role: str,
    password: str | None,
    actor: str,
    scrypt_n: int = SCRYPT_N,
) -> str:
    """Create or update an operator (audited); its sessions end when its role or password changes."""
    check_operator_fields(username, role, password)
    pid = principal_id_for(username)
    hashed = await asyncio.to_thread(hash_password, password, n=scrypt_n) if password is not None else None
    async with pool.acquire() as conn, conn.transaction():
        await repo.upsert_operator(
            conn,
            principal_id=pid,
            username=username,
            display_name=display_name or username,
            role=role,
            scopes=list(ROLE_SCOPES[role]),
            password_hash=hashed,
        )
        await record_audit(
            conn,
            principal=actor,
            service=SERVICE,
            action="operator.saved",
            target=pid,
            detail={"role": role, "password_set": password is not None},
        )
    await SessionStore(pool).end_all(pid)
    return pid


async def disable_operator(pool: asyncpg.Pool, principal_id: str, actor: str) -> None:
    """Disable an operator and end its sessions at once (audited); 404 if it is no operator or disabled."""
    if not await repo.disable_principal(pool, principal_id):
        raise ApiError(404, "not_found", "no such enabled operator", [{"principal_id": principal_id}])
    ended = await SessionStore(pool).end_all(principal_id)
    await record_audit(
        pool,
        principal=actor,
        service=SERVICE,
        action="operator.disabled",
        target=principal_id,
        detail={"sessions_ended": ended},
    )


async def sign_in(
    pool: asyncpg.Pool, username: str, password: str, *, idle_seconds: int, absolute_seconds: int
) -> SignedIn | None:
    """A new session if the user name and password match an enabled operator (audited either way), else
    ``None``; the check takes as long for an unknown user as for a wrong password."""
    well_formed = USERNAME.match(username) is not None
    found = await repo.credentials(pool, username) if well_formed else None
    stored = found["password_hash"] if found is not None else None
    # (a malformed name cannot exist: no hash to hide behind, so none is spent on it)
    ok = well_formed and await asyncio.to_thread(verify_password, password[:MAX_PASSWORD], stored)
    if not ok or found is None:
        # an unknown name is not written down: people type their password into the wrong field
        who = principal_id_for(username) if found is not None else "unknown-user"
        await record_audit(
            pool,
            principal=f"console:{who}",
            service=SERVICE,
            action="session.refused",
            target=who,
            detail={"reason": "wrong password" if found is not None else "unknown user"},
        )
        return None
    pid = found["principal_id"]
    session_id, csrf = await SessionStore(pool).create(
        pid, method="password", idle_seconds=idle_seconds, absolute_seconds=absolute_seconds
    )
    await record_audit(
        pool,
        principal=pid,
        service=SERVICE,
        action="session.started",
        target=pid,
        detail={"method": "password"},
    )
    return SignedIn(session_id, csrf, pid)


async def sign_out(pool: asyncpg.Pool, session_id: str, principal: Principal) -> None:
    if await SessionStore(pool).end(session_id):
        await record_audit(
            pool, principal=principal.id, service=SERVICE, action="session.ended", target=principal.id
        )
