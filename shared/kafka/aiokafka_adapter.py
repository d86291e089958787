"""Every place IOC reaches into aiokafka's internals, named, in one module.

aiokafka has no public API for four things IOC needs; each is done here and nowhere else (a test,
``tests/shared/test_aiokafka_adapter.py``, pins aiokafka's version and the shape of every private name used, so
an upgrade fails loudly in one place instead of somewhere at run time):

- :func:`route_bare_records_fetches` (applied explicitly by the stream runtime's start):
  replaces the fetcher module's ``PartitionRecords`` factory so that consumers created with
  ``key_deserializer=bare_records`` get :class:`BareRecords`, the C parser's record objects, instead of one
  ``ConsumerRecord`` dataclass per record. aiokafka turns every record of a fetched batch into a
  ``ConsumerRecord`` through Python code that runs per record (a generator step, ``__next__``, deserializer
  checks, a header tuple, an eleven-field constructor): for a meter reading that is about a third of what a
  record costs from fetched bytes to a Python object (``python -m bench.record_unpack_cpu``;
  ``docs/stream-design.md``, step 11). Bare records have ``offset``, ``timestamp``, ``key``, ``value``,
  ``headers``, no ``topic`` or ``partition`` (the caller knows them from the batch's ``TopicPartition``).
  Every other consumer in the process keeps aiokafka's path; without the override (or if aiokafka's call
  shape changes so that it no longer applies) ``bare_records`` is an identity key deserializer and consumers
  get ordinary ``ConsumerRecord`` objects: slower, never wrong.
- :func:`group_generation`: the consumer group generation of a consumer's current assignment (read from its
  group coordinator), which the stream runtime checks before it writes a partition.
- :func:`refresh_metadata`: ask the broker for fresh cluster metadata now (a topic created a moment ago).
- :func:`refresh_metadata_when_an_offset_reset_meets_a_moved_leader` (applied with the first override): when a
  consumer resets a partition's position (a partition without a committed offset) and the broker it believes
  leads the partition answers "not leader", aiokafka 0.14 logs the error and retries the same broker every
  ``retry_backoff_ms`` without refreshing its metadata, so the partition is not read until the next scheduled
  refresh (``metadata_max_age_ms``, 5 minutes by default). Seen on the Apache Kafka tier after a preferred-leader
  election moved leaders: a worker did not read one partition for over two minutes. The override asks for fresh
  metadata on such an error, as aiokafka's other offset path (``_retrieve_offsets``) already does.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.consumer import fetcher as _fetcher

__all__ = [
    "PINNED_AIOKAFKA_VERSION",
    "BareRecords",
    "bare_records",
    "bare_records_routed",
    "group_generation",
    "refresh_metadata",
    "refresh_metadata_when_an_offset_reset_meets_a_moved_leader",
    "route_bare_records_fetches",
]

#: the aiokafka version whose internals this module was written against (``constraints.txt`` pins it too)
PINNED_AIOKAFKA_VERSION = "0.14.0"


def bare_records(key: bytes | None) -> bytes | None:
    """Key deserializer that marks a consumer as taking bare records (an identity function)."""
    return key


class BareRecords(_fetcher.PartitionRecords):
    """A partition's fetched records as the C parser yields them; same offset bookkeeping as aiokafka's.

    Only for ``read_uncommitted`` consumers (the default): control batches are skipped as aiokafka skips them,
    and there are no aborted transactions to filter. Relies on ``PartitionRecords``' private ``_records``,
    ``_check_crcs``, ``_tp``, ``_records_iterator`` and public ``next_fetch_offset``.
    """

    def __iter__(self):
        # The generator itself: ``FetchResult.getall`` then steps it from C, not through ``__next__``.
        return self._records_iterator if self._records_iterator is not None else iter(())

    def _unpack_records(self):
        records = self._records
        while records.has_next():
            batch = records.next_batch()
            if self._check_crcs and not batch.validate_crc():
                raise _fetcher.Errors.CorruptRecordException(f"Invalid CRC - {self._tp}")
            if batch.is_control_batch:
                self.next_fetch_offset = batch.next_offset
                continue
            for record in batch:
                offset = record.offset
                if offset < self.next_fetch_offset:
                    continue  # the start of a compressed batch fetched from its middle
                self.next_fetch_offset = offset + 1
                yield record
            # v2 batches keep their last offset through compaction: resume after it (as aiokafka does)
            self.next_fetch_offset = batch.next_offset


_aiokafka_partition_records = _fetcher.PartitionRecords


def _partition_records(*args: Any, **kwargs: Any) -> Any:
    # aiokafka 0.14's Fetcher calls PartitionRecords(tp, records, aborted_transactions, fetch_offset,
    # key_deserializer, value_deserializer, check_crcs, isolation_level) positionally; any other call shape
    # goes to aiokafka's own class.
    if (
        len(args) == 8
        and not kwargs
        and args[4] is bare_records
        and args[5] is None
        and args[7] == _fetcher.READ_UNCOMMITTED
    ):
        tp, records, aborted, fetch_offset, _, _, check_crcs, isolation_level = args
        return BareRecords(tp, records, aborted, fetch_offset, None, None, check_crcs, isolation_level)
    return _aiokafka_partition_records(*args, **kwargs)


def route_bare_records_fetches() -> None:
    """Override ``aiokafka.consumer.fetcher.PartitionRecords`` for the process (idempotent): fetches of
    consumers created with ``key_deserializer=bare_records`` become :class:`BareRecords`; other consumers keep
    aiokafka's own class. Also applies :func:`refresh_metadata_when_an_offset_reset_meets_a_moved_leader`."""
    _fetcher.PartitionRecords = _partition_records
    refresh_metadata_when_an_offset_reset_meets_a_moved_leader()


_aiokafka_proc_offset_request = _fetcher.Fetcher._proc_offset_request


async def _proc_offset_request(self: Any, node_id: int, topic_data: Any) -> Any:
    try:
        return await _aiokafka_proc_offset_request(self, node_id, topic_data)
    except _fetcher.Errors.KafkaError as err:
        if getattr(err, "invalid_metadata", False):
            self._client.force_metadata_update()  # in the background; the caller retries after its backoff
        raise


def refresh_metadata_when_an_offset_reset_meets_a_moved_leader() -> None:
    """Override ``Fetcher._proc_offset_request`` (idempotent): an error that says the client's metadata is out
    of date (``invalid_metadata``: not leader, unknown partition, leader not available) schedules a metadata
    refresh before it propagates; everything else is aiokafka's own."""
    _fetcher.Fetcher._proc_offset_request = _proc_offset_request  # type: ignore[method-assign]


def moved_leader_refresh_applied() -> bool:
    """Whether :func:`refresh_metadata_when_an_offset_reset_meets_a_moved_leader` is in effect."""
    return _fetcher.Fetcher._proc_offset_request is _proc_offset_request


def bare_records_routed() -> bool:
    """Whether :func:`route_bare_records_fetches` is in effect."""
    return _fetcher.PartitionRecords is _partition_records


def group_generation(consumer: AIOKafkaConsumer) -> int | None:
    """The group generation of ``consumer``'s current assignment (``None`` before ``start`` and for a consumer
    without a group, whose ``NoGroupCoordinator`` has none). aiokafka keeps it on the private coordinator only."""
    return getattr(consumer._coordinator, "generation", None)


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Fetch cluster metadata now (aiokafka only refreshes it on its own schedule or on an error)."""
    await consumer._client.force_metadata_update()
