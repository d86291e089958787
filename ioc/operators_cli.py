"""``ioc operators add|disable|list``: the console's accounts (people who sign in; docs/console.md).

Writes the database directly (like ``ioc keys``), audited under the person who ran the command. Passwords
are read from a prompt or a file, never from the command line (it lands in shell history and ``ps``).
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Console accounts: who signs in, with which role.", no_args_is_help=True)
console = Console(stderr=True)


async def _pool():
    from ioc.cli import _keystore

    pool, _ = await _keystore()
    return pool


@app.command("add")
def add(
    username: str,
    role: str = typer.Option(..., help="leader, supervisor, operator or administrator"),
    name: str = typer.Option("", help="display name"),
    password_file: Path | None = typer.Option(
        None, help="read the password from this file (else a prompt; with --generate a new one is printed)"
    ),
    generate: bool = typer.Option(False, "--generate", help="generate a password and print it once"),
) -> None:
    """Create an operator or change its role/password (its sessions end)."""
    from ioc.cli import _actor
    from services.city.service_auth import save_operator

    if generate:
        password = secrets.token_urlsafe(18)
    elif password_file is not None:
        password = password_file.read_text().strip()
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)

    async def go() -> str:
        pool = await _pool()
        try:
            return await save_operator(
                pool, username=username, display_name=name, role=role, password=password, actor=_actor()
            )
        finally:
            await pool.close()

    from shared.auth import ApiError

    try:
        pid = asyncio.run(go())
    except ApiError as exc:
        console.print(f"[red]{exc.message}: {exc.details}[/red]")
        raise typer.Exit(2) from None
    console.print(f"{username} ({pid}) is a console {role}")
    if generate:
        print(password)


@app.command("disable")
def disable(username: str) -> None:
    """Disable an operator; its sessions end at once."""
    from ioc.cli import _actor
    from services.city.service_auth import disable_operator, principal_id_for

    async def go() -> None:
        pool = await _pool()
        try:
            await disable_operator(pool, principal_id_for(username), _actor())
        finally:
            await pool.close()

    from shared.auth import ApiError

    try:
        asyncio.run(go())
    except ApiError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None


@app.command("list")
def list_() -> None:
    """Operators, roles, live sessions."""
    from services.city.repository_auth import list_operators

    async def go():
        pool = await _pool()
        try:
            return await list_operators(pool)
        finally:
            await pool.close()

    table = Table(title="console operators")
    for col in ("username", "role", "disabled", "password", "oidc", "live sessions"):
        table.add_column(col)
    for r in asyncio.run(go()):
        table.add_row(
            r["username"],
            r["role"] or "",
            str(r["disabled"]),
            str(r["has_password"]),
            str(r["oidc"]),
            str(r["sessions"]),
        )
    Console().print(table)


async def ensure_dev_operator(pool, state_dir: Path) -> tuple[str, str]:
    """``ioc up``'s console sign-in: the administrator ``admin`` with a random password kept in
    ``var/dev-console.password`` (mode 0600), reused while it still signs in."""
    from services.city.repository_auth import credentials
    from services.city.service_auth import save_operator
    from shared.auth import verify_password

    path = state_dir / "dev-console.password"
    if path.exists():
        found = await credentials(pool, "admin")
        password = path.read_text().strip()
        if found is not None and await asyncio.to_thread(verify_password, password, found["password_hash"]):
            return "admin", password
    password = secrets.token_urlsafe(18)
    await save_operator(
        pool,
        username="admin",
        display_name="Development administrator",
        role="administrator",
        password=password,
        actor="ioc-up",
    )
    path.write_text(password + "\n")
    path.chmod(0o600)
    return "admin", password
