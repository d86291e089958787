"""aiokafka's internals that IOC relies on, pinned: an aiokafka upgrade fails here, in one place, naming what
moved. Every private name :mod:`shared.kafka.aiokafka_adapter` touches is checked, and no other module may
touch one (behaviour of the override against a real broker: ``tests/shared/test_kafka_records.py``)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import aiokafka
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer import fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator, NoGroupCoordinator

from shared.kafka import aiokafka_adapter
from shared.kafka.aiokafka_adapter import PINNED_AIOKAFKA_VERSION

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_aiokafka_is_the_one_the_adapter_was_written_against():
    # On an upgrade: re-check every test below against the new aiokafka source, then move the pin (here,
    # constraints.txt and pyproject.toml together).
    assert aiokafka.__version__ == PINNED_AIOKAFKA_VERSION == "0.14.0"
    assert f"aiokafka=={PINNED_AIOKAFKA_VERSION}" in (ROOT / "constraints.txt").read_text()


def _init_assigns(cls: type) -> set[str]:
    """The ``self.<name>`` attributes ``cls.__init__`` assigns (read from its source)."""
    return set(re.findall(r"self\.(\w+)\s*=", inspect.getsource(cls.__init__)))


def test_partition_records_still_has_the_shape_bare_records_overrides():
    # route_bare_records_fetches: the fetcher module looks the class up as a module global at every fetch and
    # calls it with eight positional arguments in this order. (aiokafka's own class: once a runtime has started
    # in this process, the module global is the adapter's factory.)
    aiokafka_class = aiokafka_adapter._aiokafka_partition_records
    assert fetcher.PartitionRecords in (aiokafka_class, aiokafka_adapter._partition_records)
    params = list(inspect.signature(aiokafka_class.__init__).parameters)
    assert params == [
        "self",
        "tp",
        "records",
        "aborted_transactions",
        "fetch_offset",
        "key_deserializer",
        "value_deserializer",
        "check_crcs",
        "isolation_level",
    ]
    fetcher_source = inspect.getsource(fetcher.Fetcher)
    assert re.search(
        r"PartitionRecords\(\s*tp,\s*records,\s*aborted_transactions,\s*fetch_offset,\s*self\._key_deserializer,"
        r"\s*self\._value_deserializer,\s*self\._check_crcs,\s*self\._isolation_level,\s*\)",
        fetcher_source,
    ), "aiokafka's Fetcher no longer builds PartitionRecords the way _partition_records expects"
    # BareRecords reads these attributes and overrides these methods.
    assert {"_tp", "_records", "_check_crcs", "_records_iterator", "next_fetch_offset"} <= _init_assigns(
        aiokafka_class
    )
    assert "self._records_iterator = self._unpack_records()" in inspect.getsource(aiokafka_class)
    assert list(inspect.signature(aiokafka_class._unpack_records).parameters) == ["self"]
    assert inspect.isgeneratorfunction(aiokafka_class._unpack_records)
    # FetchResult.getall iterates the partition records (``iter()``: BareRecords hands it the generator).
    assert "for msg in self._partition_records:" in inspect.getsource(fetcher.FetchResult.getall)
    assert fetcher.READ_UNCOMMITTED == 0
    assert issubclass(fetcher.Errors.CorruptRecordException, Exception)


def test_route_bare_records_fetches_is_the_one_override_and_is_idempotent():
    own = aiokafka_adapter._aiokafka_partition_records
    assert own.__module__ == "aiokafka.consumer.fetcher" and own.__name__ == "PartitionRecords"
    before = fetcher.PartitionRecords
    try:
        aiokafka_adapter.route_bare_records_fetches()
        aiokafka_adapter.route_bare_records_fetches()
        assert aiokafka_adapter.bare_records_routed()
        # A consumer that did not opt in gets aiokafka's own class.
        plain = fetcher.PartitionRecords("tp", None, [], 0, None, None, False, fetcher.READ_UNCOMMITTED)
        assert type(plain) is own
    finally:
        fetcher.PartitionRecords = before


def test_the_consumer_internals_the_adapter_reads_exist():
    # group_generation: consumer._coordinator (None before start) .generation
    assigned = _init_assigns(AIOKafkaConsumer)
    assert "_coordinator" in assigned and "_client" in assigned
    assert "generation" in _init_assigns(GroupCoordinator)
    consumer_source = inspect.getsource(AIOKafkaConsumer)
    assert "self._coordinator = GroupCoordinator(" in consumer_source
    assert "self._coordinator = NoGroupCoordinator(" in consumer_source
    # (a consumer without a group has a NoGroupCoordinator, without a generation: group_generation says None)
    assert "generation" not in _init_assigns(NoGroupCoordinator)
    # refresh_metadata: consumer._client.force_metadata_update() is a coroutine function taking nothing.
    assert list(inspect.signature(AIOKafkaClient.force_metadata_update).parameters) == ["self"]
    assert "self._client = AIOKafkaClient(" in consumer_source


async def test_group_generation_of_a_consumer_not_started_is_none():
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
    assert aiokafka_adapter.group_generation(consumer) is None


# Modules that still reach aiokafka internals themselves, each owned elsewhere this round: shrink this list.
KNOWN_OUTSIDE_THE_ADAPTER = {
    # Faust's consumer is aiokafka's: the Faust adapter sets its key deserializer and reads its coordinator's
    # generation, each override named and pinned in tests/shared/test_faust_adapter.py
    "shared/stream/faust_adapter.py",
}
# aiokafka's private attributes of consumers, producers and their parts, as IOC has used them
_PRIVATE_ATTRIBUTES = {
    "_client",
    "_coordinator",
    "_fetcher",
    "_key_deserializer",
    "_value_deserializer",
    "_subscription",
    "_txn_manager",
    "_sender",
}


def _reaches_in(path: Path) -> bool:
    """Whether ``path`` reads one of those attributes of another object, or touches aiokafka's fetcher."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in _PRIVATE_ATTRIBUTES:
            if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                return True
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aiokafka.consumer"):
            if node.module.endswith("fetcher") or any(a.name == "fetcher" for a in node.names):
                return True
        if isinstance(node, ast.Name | ast.Attribute) and getattr(node, "id", getattr(node, "attr", "")) == (
            "PartitionRecords"
        ):
            return True
    return False


def test_no_module_but_the_adapter_reaches_into_aiokafka():
    found = {
        str(p.relative_to(ROOT))
        for top in ("shared", "services", "ioc")
        for p in (ROOT / top).rglob("*.py")
        if p.name != "aiokafka_adapter.py" and _reaches_in(p)
    }
    new = found - KNOWN_OUTSIDE_THE_ADAPTER
    assert not new, f"aiokafka internals outside shared/kafka/aiokafka_adapter.py: {sorted(new)}"


def test_the_offset_reset_path_still_retries_a_moved_leader_without_refreshing_metadata():
    # Why the override exists (aiokafka 0.14): the reset path catches the error, logs it and sleeps, with no
    # metadata refresh; _proc_offset_request(node_id, topic_data) is a coroutine method it awaits.
    source = inspect.getsource(fetcher.Fetcher)
    reset = source[source.index("offsets = await self._proc_offset_request(node_id, topic_data)") :][:400]
    assert 'log.error("Failed fetch offsets from %s: %s", node_id, err)' in reset
    assert "force_metadata_update" not in reset
    own = aiokafka_adapter._aiokafka_proc_offset_request
    assert own.__qualname__ == "Fetcher._proc_offset_request" and inspect.iscoroutinefunction(own)
    assert list(inspect.signature(own).parameters) == ["self", "node_id", "topic_data"]
    assert "_client" in _init_assigns(fetcher.Fetcher)
    assert fetcher.Errors.NotLeaderForPartitionError.invalid_metadata is True


async def test_a_not_leader_answer_to_an_offset_reset_asks_for_fresh_metadata(monkeypatch):
    refreshed = []

    class Client:
        def force_metadata_update(self):
            refreshed.append(True)

    class FetcherLike:
        _client = Client()

    outcomes = iter(
        [fetcher.Errors.NotLeaderForPartitionError("moved"), fetcher.Errors.KafkaTimeoutError("x")]
    )

    async def aiokafka_own(self, node_id, topic_data):
        raise next(outcomes)

    monkeypatch.setattr(aiokafka_adapter, "_aiokafka_proc_offset_request", aiokafka_own)
    before = fetcher.Fetcher._proc_offset_request
    try:
        aiokafka_adapter.refresh_metadata_when_an_offset_reset_meets_a_moved_leader()
        aiokafka_adapter.refresh_metadata_when_an_offset_reset_meets_a_moved_leader()
        assert aiokafka_adapter.moved_leader_refresh_applied()
        with pytest.raises(fetcher.Errors.NotLeaderForPartitionError):
            await fetcher.Fetcher._proc_offset_request(FetcherLike(), 3, {"t": [(0, -2)]})
        assert refreshed == [True]
        # an error that does not say the metadata is stale: no refresh, the same error
        with pytest.raises(fetcher.Errors.KafkaTimeoutError):
            await fetcher.Fetcher._proc_offset_request(FetcherLike(), 3, {"t": [(0, -2)]})
        assert refreshed == [True]
    finally:
        fetcher.Fetcher._proc_offset_request = before
