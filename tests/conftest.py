"""Session fixtures: one real broker and one real PostgreSQL for the whole test run (started here)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from shared.auth import PLATFORM_SCHEMA
from shared.db import apply_migrations, create_pool
from shared.http import PLATFORM_MIGRATIONS
from shared.kafka.admin import ensure_topics
from shared.testing import Infrastructure, issue_test_key

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def infra(tmp_path_factory) -> Infrastructure:
    """The embedded broker and PostgreSQL (or external ones with IOC_TEST_EXTERNAL=1)."""
    os.environ.setdefault("IOC_CREATE_TOPICS", "true")
    env = Infrastructure(tmp_path_factory.mktemp("infra")).start()
    yield env
    env.stop()


@pytest.fixture(scope="session")
def kafka_settings(infra):
    return infra.kafka()


@pytest.fixture(scope="session")
def db_settings(infra):
    return infra.database()


@pytest.fixture(scope="session")
async def topics_ready(kafka_settings):
    """Every catalogue topic exists."""
    await ensure_topics(kafka_settings)
    return True


@pytest.fixture(scope="session")
async def platform_pool(db_settings):
    """A pool on the test database with the platform schema migrated (principals, keys, audit)."""
    pool = await create_pool(db_settings)
    await apply_migrations(pool, PLATFORM_SCHEMA, PLATFORM_MIGRATIONS)
    yield pool
    await pool.close()


@pytest.fixture
async def make_key(platform_pool):
    """``await make_key(["meter:ingest"], kind=..., attributes=...)`` → (principal_id, api_key)."""

    async def make(scopes, **kw):
        return await issue_test_key(platform_pool, scopes, **kw)

    return make


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def pytest_collection_modifyitems(items):
    # Keep the event loop per session so session-scoped async fixtures can be shared.
    for item in items:
        if asyncio.iscoroutinefunction(getattr(item, "function", None)):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"))
