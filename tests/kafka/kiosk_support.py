"""The kiosk service's fixtures on the Apache Kafka cluster, for the tests/reliability scenarios run on Kafka.

Import the fixtures into a test module (``from tests.kafka.kiosk_support import kafka, kiosk_settings,
admin_key``): they replace the embedded broker the tests/reliability conftest gives those names.
"""

from __future__ import annotations

import pytest

from services.kiosk.settings import KioskSettings
from shared.testing import issue_test_key


@pytest.fixture
def kafka(kafka_cluster, monkeypatch):
    # Worker subprocesses (tests/reliability/worker.py) read these from the environment: production's settings.
    monkeypatch.setenv("IOC_KAFKA_IDEMPOTENCE", "true")
    monkeypatch.setenv("IOC_KAFKA_REPLICATION_FACTOR", "3")
    return kafka_cluster.kafka_settings()


@pytest.fixture
def kiosk_settings(kafka, db_settings) -> KioskSettings:
    return KioskSettings(
        kafka=kafka, database=db_settings, registry_republish_seconds=0.5, registry_refresh_seconds=1.0
    )


@pytest.fixture
async def admin_key(platform_pool) -> str:
    _, key = await issue_test_key(platform_pool, ["*"], kind="admin")
    return key
