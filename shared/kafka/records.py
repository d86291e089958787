"""Fetched records without aiokafka's per-record ``ConsumerRecord``, for consumers that opt in.

aiokafka's fetcher turns every record of a fetched batch into a ``ConsumerRecord`` dataclass through Python
code that runs per record: a generator step, a ``__next__`` method, deserializer checks, a header tuple and an
eleven-field constructor. For a meter reading as IOC publishes it (eight headers), that is ~1.35 µs of the
~4.4 µs a record costs from fetched bytes to a Python object; the rest is aiokafka's C record parser
(``python -m bench.record_unpack_cpu``; ``docs/stream-design.md``, step 11).

A consumer created with ``key_deserializer=bare_records`` instead gets the parser's own record objects
(``offset``, ``timestamp``, ``key``, ``value``, ``headers``; no ``topic`` or ``partition``, which the caller
knows from the batch's ``TopicPartition``). :func:`install` routes such consumers' fetches there; every other
consumer in the process is untouched. Without :func:`install` (or if aiokafka's internals change so that it
no longer applies), ``bare_records`` is an identity key deserializer and the consumer gets ordinary
``ConsumerRecord`` objects: slower, never wrong.
"""

from __future__ import annotations

from typing import Any

from aiokafka.consumer import fetcher as _fetcher

__all__ = ["BareRecords", "bare_records", "install", "installed"]


def bare_records(key: bytes | None) -> bytes | None:
    """Key deserializer that marks a consumer as taking bare records (an identity function)."""
    return key


class BareRecords(_fetcher.PartitionRecords):
    """A partition's fetched records as the C parser yields them; same offset bookkeeping as aiokafka's.

    Only for ``read_uncommitted`` consumers (the default): control batches are skipped as aiokafka skips them,
    and there are no aborted transactions to filter.
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
    # aiokafka 0.14 calls PartitionRecords(tp, records, aborted_transactions, fetch_offset, key_deserializer,
    # value_deserializer, check_crcs, isolation_level); any other call shape goes to aiokafka's own class.
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


def install() -> None:
    """Route fetches of consumers created with ``key_deserializer=bare_records`` to :class:`BareRecords`
    (idempotent; other consumers keep aiokafka's own path)."""
    _fetcher.PartitionRecords = _partition_records


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _fetcher.PartitionRecords is _partition_records
