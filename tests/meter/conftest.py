"""Meter test fixtures: one meter app per module (real broker and PostgreSQL), keys with meter scopes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.meter.app import create_app
from services.meter.settings import MeterSettings
from shared.testing import running_app

# Quarter hours well in the past so none is "in the future" (hour-aligned, so windows are predictable), and
# never in the last two hours before Hanoi's midnight (17:00 UTC), so the tests' readings share one day window.
BASE = (datetime.now(UTC) - timedelta(hours=6)).replace(minute=0, second=0, microsecond=0)
if (BASE + timedelta(hours=7)).hour >= 22:
    BASE -= timedelta(hours=3)


def at(minutes: float) -> str:
    """RFC 3339 time ``minutes`` after BASE."""
    return (BASE + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
async def app(kafka_settings, db_settings, topics_ready):
    return create_app(MeterSettings(kafka=kafka_settings, database=db_settings))


@pytest.fixture(scope="module")
async def client(app):
    async with running_app(app) as c:
        yield c


async def issue_key(app, scopes: list[str], pid: str | None = None) -> str:
    # The app's pool has the JSON codecs the principals table needs (tests/conftest.py's platform_pool
    # lacks them, so its make_key fails on the jsonb attributes).
    store = app.state.ctx.keys
    pid = pid or f"test-{uuid.uuid4().hex[:8]}"
    await store.upsert_principal(pid, "gateway", pid, scopes, {})
    return await store.issue_key(pid)


@pytest.fixture(scope="module")
def gateway() -> str:
    """The principal id of the module's head-end system: register meters with ``"gateway": gateway`` for
    ``keys["ingest"]`` to report for them."""
    return f"hes-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def keys(app, client, gateway):
    """API keys by role, and ``gateway``: the principal id behind ``ingest``."""
    return {
        "gateway": gateway,
        "admin": await issue_key(app, ["meter:admin", "meter:read"]),
        "ingest": await issue_key(app, ["meter:ingest"], pid=gateway),
        "other": await issue_key(app, ["traffic:ingest"]),
    }
