"""The kiosk KPI processor's fault scenarios of tests/reliability (kill -9 mid-batch twice, a slow consumer,
duplicate deliveries across a restart, poison records), run unchanged on Apache Kafka: the same test functions
and harness, given the fixtures they need (``kafka``, ``kiosk_settings``, ``admin_key``) on the 3-node cluster
(RF 3, min ISR 2, idempotent producers) instead of a fresh embedded broker."""

from __future__ import annotations

import pytest

from services.kiosk.settings import KioskSettings
from tests.reliability.test_processor_faults import (
    test_duplicate_deliveries_count_once_even_across_a_worker_restart as test_kiosk_duplicates_on_apache_kafka,
)
from tests.reliability.test_processor_faults import (
    test_poison_messages_are_dead_lettered_and_do_not_stall_the_partition as test_kiosk_poison_on_apache_kafka,
)
from tests.reliability.test_processor_faults import (
    test_slow_consumer_lags_then_catches_up_exactly as test_kiosk_slow_consumer_on_apache_kafka,
)
from tests.reliability.test_processor_faults import (
    test_worker_killed_mid_batch_twice_recovers_without_double_counting as test_kiosk_kill9_on_apache_kafka,
)

pytestmark = pytest.mark.slow

__all__ = [
    "test_kiosk_duplicates_on_apache_kafka",
    "test_kiosk_kill9_on_apache_kafka",
    "test_kiosk_poison_on_apache_kafka",
    "test_kiosk_slow_consumer_on_apache_kafka",
]


@pytest.fixture
def kafka(kafka_cluster, monkeypatch):
    # Worker subprocesses (tests/reliability/worker.py) read these from the environment.
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
    from shared.testing import issue_test_key

    _, key = await issue_test_key(platform_pool, ["*"], kind="admin")
    return key
