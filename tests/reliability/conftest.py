"""Fixtures of the fault-injection suite: its own broker and PostgreSQL, which the tests kill and restart.

The session-wide ``infra`` of ``tests/conftest.py`` is shared by every other test, so it is never used here.
PostgreSQL is started once per module (initdb is the slow part); the broker once per test, so each scenario
starts from empty topics and a kill cannot leak into the next one. Settings are always built explicitly from
these servers (never from the ``IOC_*`` environment, which the session fixtures point elsewhere).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from services.kiosk.settings import KioskSettings
from shared.auth import PLATFORM_SCHEMA
from shared.config import DatabaseSettings, KafkaSettings
from shared.db import apply_migrations, create_pool
from shared.embedded import EmbeddedBroker, EmbeddedPostgres
from shared.http import PLATFORM_MIGRATIONS
from shared.testing import issue_test_key

DATABASE = "ioc_reliability"


@pytest.fixture(scope="module")
def postgres() -> EmbeddedPostgres:
    """A PostgreSQL of this module only (tests may stop and restart it).

    Its directory is not under pytest's numbered tmp dirs: a concurrent pytest run prunes those.
    """
    workdir = Path(tempfile.mkdtemp(prefix="ioc-reliability-"))
    pg = EmbeddedPostgres(workdir / "pgdata").start()
    pg.create_database(DATABASE)
    yield pg
    pg.destroy()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def broker() -> EmbeddedBroker:
    """A fresh embedded broker for one test (memory storage: a restart empties it)."""
    workdir = Path(tempfile.mkdtemp(prefix="ioc-reliability-broker-"))
    b = EmbeddedBroker(log_file=workdir / "tansu.log").start()
    yield b
    b.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def kafka(broker) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker.bootstrap_servers)


@pytest.fixture
def database(postgres) -> DatabaseSettings:
    return DatabaseSettings(url=postgres.url(DATABASE))


@pytest.fixture
def kiosk_settings(kafka, database) -> KioskSettings:
    """Kiosk service settings on this test's servers; registry retries fast so recovery is quick to see."""
    return KioskSettings(
        kafka=kafka, database=database, registry_republish_seconds=0.5, registry_refresh_seconds=1.0
    )


@pytest.fixture
async def admin_key(database) -> str:
    """A key with every scope."""
    pool = await create_pool(database)
    try:
        await apply_migrations(pool, PLATFORM_SCHEMA, PLATFORM_MIGRATIONS)
        _, key = await issue_test_key(pool, ["*"], kind="admin")
    finally:
        await pool.close()
    return key
