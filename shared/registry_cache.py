"""An in-memory copy of a service's registry table (meters, intersections, kiosks) for the ingest paths.

Ingest judges every item against the registry (known entity? whose gateway? which district?) and must not make a
database round trip per item, so each service keeps the registry in memory in a :class:`RegistryCache`:

- loaded at start-up from a repository function (:meth:`RegistryCache.reload`);
- refreshed every ``refresh_seconds`` by a background task (:meth:`RegistryCache.run_forever`): other replicas
  write too. A loader that returns a version (e.g. the newest ``updated_at`` it read) is asked only for what
  changed since; one that returns ``None`` is read whole each time (a few thousand rows);
- refreshed after this replica's own writes (:meth:`RegistryCache.reload`, or :meth:`RegistryCache.apply` with
  the entries just written), and on demand when ingest meets an id it does not know
  (:meth:`RegistryCache.refresh_if_older`: another replica may have just registered it).

Lookups are typed (``RegistryCache[MeterInfo]``); hot paths that take a mapping get :attr:`RegistryCache.entries`
(a plain ``dict``: no indirection per item). A subclass may keep its own indexes or share field values between
entries by overriding :meth:`RegistryCache.put` and :meth:`RegistryCache.clear`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, ValuesView
from typing import Any, TypeVar, overload

log = logging.getLogger(__name__)

V = TypeVar("V")
T = TypeVar("T")

#: ``load(since)`` → ``(entries, version)``: the entries changed after ``since`` (all of them when ``since`` is
#: None) and the version to ask from next time (None: the loader cannot tell; the next refresh reads everything).
Loader = Callable[[Any], Awaitable[tuple[Iterable[V], Any]]]


def whole_table(load_all: Callable[[], Awaitable[Iterable[V]]]) -> Loader[V]:
    """A loader for a repository function that reads the whole registry (every refresh reads it whole)."""

    async def load(_since: Any) -> tuple[Iterable[V], Any]:
        return await load_all(), None

    return load


class RegistryCache(Mapping[str, V]):
    """Entity id → registry entry, in memory (see the module's docstring); a read-only mapping."""

    def __init__(self, name: str, load: Loader[V], key: Callable[[V], str]):
        self.name = name
        self.entries: dict[str, V] = {}
        self._load = load
        self._key = key
        self._version: Any = None
        #: ``time.monotonic()`` of the last load (None: never loaded)
        self.loaded_at: float | None = None

    # ------------------------------------------------------------------------------------------- lookups
    @overload
    def get(self, key: str, /) -> V | None: ...
    @overload
    def get(self, key: str, /, default: V | T) -> V | T: ...
    def get(self, key: str, /, default: Any = None) -> Any:
        return self.entries.get(key, default)

    def __getitem__(self, key: str) -> V:
        return self.entries[key]

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def values(self) -> ValuesView[V]:
        return self.entries.values()

    # ------------------------------------------------------------------------------------------- changes
    def put(self, entry: V) -> None:
        """Store one entry (new or changed); a subclass may index it or share its field values."""
        self.entries[self._key(entry)] = entry

    def clear(self) -> None:
        """Forget every entry (before a whole reload)."""
        self.entries = {}

    def apply(self, entries: Iterable[V]) -> None:
        """Store entries this replica has just written (no reload needed for them)."""
        for entry in entries:
            self.put(entry)

    async def reload(self) -> None:
        """Read the whole registry again (start-up, and after a write whose stored rows the caller lacks)."""
        entries, version = await self._load(None)
        # Nothing is awaited between the clear and the last put: a request never sees a half-loaded registry.
        self.clear()
        self.apply(entries)
        self._version = version
        self.loaded_at = time.monotonic()

    async def refresh(self) -> None:
        """Pick up changes written by others: what changed since the last load, or everything again."""
        if self._version is None:
            await self.reload()
            return
        entries, version = await self._load(self._version)
        self.apply(entries)
        if version is not None:
            self._version = version
        self.loaded_at = time.monotonic()

    async def refresh_if_older(self, seconds: float) -> bool:
        """Refresh unless the last load is at most ``seconds`` old (ingest meeting an unknown id asks this, so a
        flood of unknown ids costs at most one load per ``seconds``); whether it refreshed."""
        if self.loaded_at is not None and time.monotonic() - self.loaded_at <= seconds:
            return False
        await self.refresh()
        return True

    async def run_forever(self, refresh_seconds: float) -> None:
        """Refresh every ``refresh_seconds`` (a background task); a failed refresh keeps the last good copy."""
        while True:
            await asyncio.sleep(refresh_seconds)
            try:
                await self.refresh()
            except Exception as exc:  # the database may be back next round
                log.warning("%s registry refresh failed: %s", self.name, type(exc).__name__)
