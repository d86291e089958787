"""Bare fetched records (kept for importers of this module): the implementation, like every other reach into
aiokafka's internals, is :mod:`shared.kafka.aiokafka_adapter`."""

from __future__ import annotations

from shared.kafka.aiokafka_adapter import BareRecords, bare_records
from shared.kafka.aiokafka_adapter import bare_records_routed as installed
from shared.kafka.aiokafka_adapter import route_bare_records_fetches as install

__all__ = ["BareRecords", "bare_records", "install", "installed"]
