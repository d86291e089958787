"""The stream-processor contract every domain's KPI processor implements.

A processor is pure logic: ``apply`` folds one event into the state of the partition it came from; ``emit``
turns that state into output events (KPI observations, alarms) and prunes what is no longer needed. The
runtime (:mod:`shared.stream.runtime`) does everything else: consumer group, batching, decoding, dead letters,
deduplication on CloudEvents ``source`` + ``id``, atomic per-batch state changelog, recovery, commits, ticks.

Because state is per source partition, a processor sees only the entities whose keys hash to that partition.
KPI observations therefore carry ``partition``; the city layer merges partitions (see
:mod:`shared.contracts.common`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator
from datetime import datetime
from typing import Any, ClassVar, TypeVar

from shared.contracts.cloudevents import EncodedEvent, ReceivedEvent
from shared.metrics import LATE_INPUTS_IGNORED


def _head(key: str) -> str:
    i = key.find(":")
    return key[: i + 1] if i >= 0 else ""


class State:
    """The state of one source partition: string keys to JSON-serialisable values, with change tracking.

    Keys are indexed by their head (the text up to and including the first ``:``), so ``items("meter:")`` and
    ``keys("meter:")`` touch only the keys of that head instead of scanning the whole state.
    """

    __slots__ = ("_data", "_dirty", "_heads", "partition")

    def __init__(self, partition: int, data: dict[str, Any] | None = None):
        self.partition = partition
        self._data: dict[str, Any] = data if data is not None else {}
        self._dirty: set[str] = set()
        self._heads: dict[str, dict[str, None]] = {}  # head → keys, in insertion order
        for k in self._data:
            self._heads.setdefault(_head(k), {})[k] = None

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def put(self, key: str, value: Any) -> None:
        """Set ``key``. Values must be JSON-serialisable (they go to the changelog)."""
        data = self._data
        if key not in data:
            self._heads.setdefault(_head(key), {})[key] = None
        data[key] = value
        self._dirty.add(key)

    __setitem__ = put

    def pop(self, key: str, default: Any = None) -> Any:
        if key in self._data:
            self._dirty.add(key)
            self._heads.get(_head(key), {}).pop(key, None)
            return self._data.pop(key)
        return default

    def _matching(self, prefix: str) -> list[str]:
        head = _head(prefix)
        if head and head == prefix:
            return list(self._heads.get(head, ()))
        candidates = self._heads.get(head, ()) if head else self._data
        return [k for k in candidates if k.startswith(prefix)]

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Items whose key starts with ``prefix`` (a snapshot: safe to modify state while iterating)."""
        if not prefix:
            return iter(list(self._data.items()))
        data = self._data
        return iter([(k, data[k]) for k in self._matching(prefix)])

    def keys(self, prefix: str = "") -> list[str]:
        if not prefix:
            return list(self._data)
        return self._matching(prefix)

    # Runtime side -----------------------------------------------------------------------------------------
    def mark_changed(self, key: str) -> None:
        """Have the next batch write ``key`` (its value, or a tombstone when absent) to the changelog."""
        self._dirty.add(key)

    def take_changes(self) -> dict[str, Any]:
        """Changed keys since the last call: value, or ``None`` for a deleted key."""
        data = self._data
        changes = {k: data.get(k) for k in self._dirty}
        self._dirty = set()
        return changes

    def apply_changes(self, changes: dict[str, Any]) -> None:
        for k, v in changes.items():
            if v is None:
                self.pop(k)
            else:
                self.put(k, v)
        self._dirty = set()

    def snapshot(self) -> dict[str, Any]:
        return dict(self._data)


T = TypeVar("T")
_MISSING = object()
#: per partition: how many output idents one generation of ``changed_since_emitted``'s memory holds (it keeps
#: two: at most twice this many idents a partition)
EMITTED_GENERATION = 10_000


class StreamProcessor(ABC):
    """Base of every KPI processor. Subclasses set ``name`` and ``topics`` and implement ``apply``/``emit``."""

    #: consumer group id and changelog prefix, e.g. ``meter-kpi``
    name: ClassVar[str]
    #: source topics; co-partitioned (same partition count) and keyed by entity id
    topics: ClassVar[tuple[str, ...]]
    #: how often ``emit`` runs when no events arrive (silence detection, window closing)
    tick_seconds: ClassVar[float] = 1.0
    #: after a batch, ``emit`` runs only if this long has passed since the last emit (ticks run it anyway):
    #: under load, outputs then scale with time, not with how many small batches the consumer fetched
    emit_interval_seconds: ClassVar[float] = 0.5
    #: per source partition, how many recent CloudEvents ids (``source`` + ``id``) the runtime remembers to drop
    #: copies of an event re-delivered at a new offset (a producer retry). 0 turns it off: only for processors
    #: whose ``apply`` is idempotent (applying an event again changes nothing), which then save its memory and
    #: CPU (~10 MiB per partition when full)
    dedup_window: ClassVar[int] = 50_000
    #: inputs this processor ignored as too late for any window it still keeps (see :meth:`ignored_late`)
    late_ignored: int = 0

    @abstractmethod
    def apply(self, event: ReceivedEvent, state: State) -> None:
        """Fold one event into ``state``. Pure: no I/O, no clock (use the event's own times)."""

    @abstractmethod
    def emit(self, state: State, now: datetime) -> Iterable[EncodedEvent]:
        """Output events from ``state`` at ``now`` (after a batch and on every tick); prune old state here."""

    def apply_batch(self, events: list[ReceivedEvent], state: State) -> None:
        """Fold a batch; override to aggregate a batch at once when that is faster."""
        apply = self.apply
        for ev in events:
            apply(ev, state)

    def ignored_late(self, n: int = 1) -> None:
        """Count ``n`` inputs ignored because no window they belong to is kept any more (past the horizon late
        data may still revise): in ``late_ignored`` and in ``ioc_late_inputs_ignored_total``."""
        self.late_ignored += n
        LATE_INPUTS_IGNORED.labels(self.name).inc(n)

    def changed_since_emitted(self, partition: int, ident: Hashable, fingerprint: Hashable) -> bool:
        """True when ``fingerprint`` differs from what ``emit`` last published for ``ident`` from ``partition``
        (and remember it as published). Lets ``emit`` skip re-publishing outputs whose content did not change,
        e.g. a KPI of a dirty window whose numerator and denominator are the same as last time.

        The memory is per worker process, not part of the state: the runtime forgets a partition's memory
        whenever it (re)loads or drops the partition's state (restart, rebalance, failed batch), so after any of
        those every output is published once again and subscribers can never miss the latest value.

        It is bounded by what is still being emitted, not by how many idents ever were: two generations of
        ``EMITTED_GENERATION`` idents per partition. An ident asked about again moves to the current generation;
        when that is full it becomes the previous one and the idents left in the old previous one (windows past
        their retention, which no emit asks about any more) are forgotten. Forgetting only ever re-publishes.
        Without it, idents of windows long pruned from the state piled up as event time advanced: a soak of five
        days of meter event time grew a meter worker by ~10,000 idents per partition per day.
        """
        memory = self.__dict__.setdefault("_emitted", {})
        generations = memory.get(partition)
        if generations is None:
            generations = memory[partition] = [{}, {}]  # current, previous
        current = generations[0]
        last = current.get(ident, _MISSING)
        if last is _MISSING:
            last = generations[1].pop(ident, _MISSING)
            if len(current) >= EMITTED_GENERATION:
                generations[1], generations[0] = current, {}
                current = generations[0]
            current[ident] = fingerprint
            return last != fingerprint
        if last == fingerprint:
            return False
        current[ident] = fingerprint
        return True

    def derived(self, state: State, build: Callable[[State], T]) -> T:
        """In-memory data derived from ``state`` alone (an index, a set of changed keys...): ``build(state)``
        the first time it is asked for, and again for a state object it has not seen, i.e. after the runtime
        (re)loaded the partition; :meth:`forget_emitted` drops it too. Nothing in it has to survive a restart."""
        memory = self.__dict__.setdefault("_derived", {})
        entry = memory.get(state.partition)
        if entry is None or entry[0] is not state:
            entry = memory[state.partition] = (state, build(state))
        return entry[1]

    def forget_emitted(self, partitions: Iterable[int]) -> None:
        """Drop what :meth:`changed_since_emitted` remembers and what :meth:`derived` built for ``partitions``
        (called by the runtime whenever it loads or drops a partition's state)."""
        for name in ("_emitted", "_derived"):
            memory = self.__dict__.get(name)
            if memory:
                for p in partitions:
                    memory.pop(p, None)


def run_in_memory(
    processor: StreamProcessor, events: Iterable[ReceivedEvent], now: datetime, partitions: int | None = None
) -> tuple[dict[int, State], list[EncodedEvent]]:
    """Reference semantics (tests): apply events per partition in order, then emit once per partition."""
    states: dict[int, State] = {}
    for ev in events:
        st = states.setdefault(ev.partition, State(ev.partition))
        processor.apply(ev, st)
    out: list[EncodedEvent] = []
    for p in sorted(states):
        out.extend(processor.emit(states[p], now))
    return states, out
