"""SQL of console sign-in: operators (principals with a password hash or an OIDC subject) in ``platform``."""

from __future__ import annotations

from typing import Any

import asyncpg


async def upsert_operator(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    principal_id: str,
    username: str,
    display_name: str,
    role: str,
    scopes: list[str],
    password_hash: str | None,
    oidc_subject: str | None = None,
) -> None:
    """Create or update an operator; a ``None`` password hash keeps the stored one."""
    await conn.execute(
        "INSERT INTO platform.principals(id, kind, display_name, scopes, attributes) "
        "VALUES ($1, 'operator', $2, $3, $4) ON CONFLICT (id) DO UPDATE SET kind = 'operator', "
        "display_name = $2, scopes = $3, attributes = platform.principals.attributes || $4, disabled_at = NULL",
        principal_id,
        display_name,
        scopes,
        {"role": role, "username": username},
    )
    await conn.execute(
        "INSERT INTO platform.operator_credentials(principal_id, username, password_hash, oidc_subject) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (principal_id) DO UPDATE SET username = $2, "
        "password_hash = COALESCE($3, platform.operator_credentials.password_hash), "
        "oidc_subject = COALESCE($4, platform.operator_credentials.oidc_subject), updated_at = now()",
        principal_id,
        username,
        password_hash,
        oidc_subject,
    )


async def credentials(pool: asyncpg.Pool, username: str) -> dict[str, Any] | None:
    """An enabled operator's principal id and password hash by user name, or ``None``."""
    row = await pool.fetchrow(
        "SELECT c.principal_id, c.password_hash FROM platform.operator_credentials c "
        "JOIN platform.principals p ON p.id = c.principal_id WHERE c.username = $1 AND p.disabled_at IS NULL",
        username,
    )
    return dict(row) if row is not None else None


async def operator_by_username(pool: asyncpg.Pool, username: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT c.principal_id, c.username, c.oidc_subject FROM platform.operator_credentials c "
        "WHERE c.username = $1",
        username,
    )
    return dict(row) if row is not None else None


async def list_operators(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT p.id, c.username, p.display_name, p.attributes->>'role' AS role, p.scopes, "
        "p.disabled_at IS NOT NULL AS disabled, c.password_hash IS NOT NULL AS has_password, "
        "c.oidc_subject IS NOT NULL AS oidc, "
        "(SELECT count(*) FROM platform.sessions s WHERE s.principal_id = p.id AND s.ended_at IS NULL "
        " AND s.expires_at > now() AND s.idle_expires_at > now()) AS sessions "
        "FROM platform.operator_credentials c JOIN platform.principals p ON p.id = c.principal_id "
        "ORDER BY c.username"
    )
    return [{**dict(r), "scopes": sorted(r["scopes"])} for r in rows]


async def disable_principal(conn: asyncpg.Connection | asyncpg.Pool, principal_id: str) -> bool:
    r = await conn.execute(
        "UPDATE platform.principals SET disabled_at = now() WHERE id = $1 AND disabled_at IS NULL "
        "AND EXISTS (SELECT 1 FROM platform.operator_credentials c WHERE c.principal_id = $1)",
        principal_id,
    )
    return r.endswith(" 1")


async def save_oidc_login(
    pool: asyncpg.Pool,
    *,
    state_hash: bytes,
    binding_hash: bytes,
    code_verifier: str,
    nonce: str,
    redirect_uri: str,
    seconds: float,
) -> None:
    await pool.execute("DELETE FROM platform.oidc_logins WHERE expires_at < now()")
    await pool.execute(
        "INSERT INTO platform.oidc_logins(state_hash, binding_hash, code_verifier, nonce, redirect_uri, "
        "expires_at) VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))",
        state_hash,
        binding_hash,
        code_verifier,
        nonce,
        redirect_uri,
        seconds,
    )


async def take_oidc_login(pool: asyncpg.Pool, state_hash: bytes) -> dict[str, Any] | None:
    """The unexpired sign-in of this state, used up (a callback counts once)."""
    row = await pool.fetchrow(
        "DELETE FROM platform.oidc_logins WHERE state_hash = $1 AND expires_at > now() "
        "RETURNING binding_hash, code_verifier, nonce, redirect_uri",
        state_hash,
    )
    return dict(row) if row is not None else None


async def operator_by_oidc_subject(pool: asyncpg.Pool, subject: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT c.principal_id, c.username, p.disabled_at IS NOT NULL AS disabled "
        "FROM platform.operator_credentials c JOIN platform.principals p ON p.id = c.principal_id "
        "WHERE c.oidc_subject = $1",
        subject,
    )
    return dict(row) if row is not None else None


async def username_taken(pool: asyncpg.Pool, username: str) -> bool:
    return bool(
        await pool.fetchval("SELECT 1 FROM platform.operator_credentials WHERE username = $1", username)
    )
