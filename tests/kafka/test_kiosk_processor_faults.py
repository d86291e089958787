"""The kiosk KPI processor's fault scenarios of tests/reliability (kill -9 mid-batch twice, a slow consumer,
duplicate deliveries across a restart, poison records), run unchanged on Apache Kafka: the same test functions
and harness, given the fixtures they need (``kafka``, ``kiosk_settings``, ``admin_key``) on the 3-node cluster
(RF 3, min ISR 2, idempotent producers) instead of a fresh embedded broker.

Both drivers run them here: the Faust driver (production's default) and the selectable librdkafka driver (issue
#42). The cluster and its topics live for the whole session, so each scenario counts an area of its own per driver
(``AREAS`` in tests/reliability/test_processor_faults.py): a processor folds the sessions topic from its start,
earlier tests' sessions included."""

from __future__ import annotations

import pytest

from tests.kafka.kiosk_support import admin_key, kafka, kiosk_settings
from tests.reliability import test_processor_faults as scenarios

pytestmark = pytest.mark.slow

__all__ = ["admin_key", "kafka", "kiosk_settings"]

drivers = pytest.mark.parametrize("driver", ["faust", "librdkafka"])


@drivers
async def test_kiosk_kill9_on_apache_kafka(kafka, kiosk_settings, admin_key, tmp_path, driver):
    await scenarios.test_worker_killed_mid_batch_twice_recovers_without_double_counting(
        kafka, kiosk_settings, admin_key, tmp_path, driver
    )


@drivers
async def test_kiosk_slow_consumer_on_apache_kafka(kafka, kiosk_settings, admin_key, driver):
    await scenarios.test_slow_consumer_lags_then_catches_up_exactly(kafka, kiosk_settings, admin_key, driver)


@drivers
async def test_kiosk_duplicates_on_apache_kafka(kafka, kiosk_settings, admin_key, driver):
    await scenarios.test_duplicate_deliveries_count_once_even_across_a_worker_restart(
        kafka, kiosk_settings, admin_key, driver
    )


@drivers
async def test_kiosk_poison_on_apache_kafka(kafka, kiosk_settings, admin_key, driver):
    await scenarios.test_poison_messages_are_dead_lettered_and_do_not_stall_the_partition(
        kafka, kiosk_settings, admin_key, driver
    )
