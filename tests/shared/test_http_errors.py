"""What a service answers when its database goes away under a request: 503 with Retry-After, never a 500."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from shared.http import install_error_handlers

OUTAGES = {
    "connection_lost": asyncpg.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation"
    ),
    "cannot_connect_now": asyncpg.CannotConnectNowError("the database system is starting up"),
    "refused": ConnectionRefusedError(111, "Connect call failed"),
    "protocol_broken": asyncpg.InternalClientError(
        "cannot switch to state 11; another operation (2) is in progress"
    ),
    "timeout": TimeoutError(),
}


@pytest.mark.parametrize("name", sorted(OUTAGES))
async def test_a_database_outage_is_503_with_retry_after(name):
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/work")
    async def work():
        raise OUTAGES[name]

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.get("/work")
    assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
    assert r.json()["error"]["code"] == "database_unavailable"
