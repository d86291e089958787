"""Console sign-in for tests: operators with a cheap password hash, and signing a browser page in."""

from __future__ import annotations

import secrets
import uuid

from services.city.service_auth import save_operator

# A cheap scrypt cost for test accounts only (the stored hash carries its parameters; production uses
# shared.auth.SCRYPT_N): tests sign in often on a shared machine.
TEST_SCRYPT_N = 2**10


async def make_operator(pool, role: str, *, username: str | None = None) -> tuple[str, str]:
    """A new console account with ``role``: ``(username, password)``."""
    username = username or f"{role[:4]}-{uuid.uuid4().hex[:8]}"
    password = "pw-" + secrets.token_urlsafe(16)
    await save_operator(
        pool,
        username=username,
        display_name=username,
        role=role,
        password=password,
        actor="test",
        scrypt_n=TEST_SCRYPT_N,
    )
    return username, password


async def sign_in_page(page, username: str, password: str) -> None:
    """Sign the console in through its form (the page must be open on the console)."""
    from playwright.async_api import expect

    await page.fill("#sign-in-user", username)
    await page.fill("#sign-in-password", password)
    await page.click("#sign-in-submit")
    await expect(page.locator("body")).not_to_have_class("signed-out")
