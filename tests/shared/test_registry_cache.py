"""shared/registry_cache.py: the in-memory registry every service's ingest judges items against."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from shared.registry_cache import RegistryCache, whole_table
from shared.tasks import stop_tasks


@dataclass
class Entry:
    entity_id: str
    district: str


class Table:
    """A registry table with a change counter, as a repository function would read it."""

    def __init__(self) -> None:
        self.rows: dict[str, tuple[int, Entry]] = {}
        self.version = 0
        self.loads: list[Any] = []
        self.fail = False

    def write(self, entity_id: str, district: str) -> None:
        self.version += 1
        self.rows[entity_id] = (self.version, Entry(entity_id, district))

    async def changed_since(self, since: int | None) -> tuple[list[Entry], int | None]:
        self.loads.append(since)
        if self.fail:
            raise OSError("database unavailable")
        rows = [e for v, e in self.rows.values() if since is None or v > since]
        return rows, max((v for v, _ in self.rows.values()), default=since)

    async def everything(self) -> list[Entry]:
        self.loads.append("all")
        if self.fail:
            raise OSError("database unavailable")
        return [e for _, e in self.rows.values()]


def cache_of(load) -> RegistryCache[Entry]:
    return RegistryCache("test", load, key=lambda e: e.entity_id)


async def test_a_versioned_loader_is_asked_only_for_what_changed():
    table = Table()
    table.write("K-1", "HK")
    table.write("K-2", "BD")
    cache = cache_of(table.changed_since)
    await cache.reload()
    assert sorted(cache) == ["K-1", "K-2"] and cache["K-1"].district == "HK"
    table.write("K-2", "DD")
    table.write("K-3", "HK")
    await cache.refresh()
    assert table.loads == [None, 2]  # the start-up load, then only rows newer than version 2
    assert (cache["K-2"].district, cache.get("K-3") is not None, len(cache)) == ("DD", True, 3)
    await cache.refresh()
    assert table.loads[-1] == 4


async def test_a_whole_table_loader_is_read_whole_and_drops_what_is_gone():
    table = Table()
    table.write("K-1", "HK")
    table.write("K-2", "BD")
    cache = cache_of(whole_table(table.everything))
    await cache.reload()
    del table.rows["K-1"]
    await cache.refresh()
    assert table.loads == ["all", "all"] and list(cache) == ["K-2"]
    assert cache.get("K-1") is None and "K-1" not in cache


async def test_an_unknown_id_reloads_at_most_once_per_period():
    table = Table()
    cache = cache_of(whole_table(table.everything))
    await cache.reload()
    table.write("K-9", "HK")  # registered by another replica
    assert not await cache.refresh_if_older(60.0)  # just loaded: a flood of unknown ids costs no load
    assert "K-9" not in cache and table.loads == ["all"]
    assert await cache.refresh_if_older(0.0)
    assert "K-9" in cache


async def test_apply_stores_this_replicas_own_writes_without_a_load():
    table = Table()
    cache = cache_of(table.changed_since)
    await cache.reload()
    cache.apply([Entry("K-5", "BD")])
    assert cache["K-5"].district == "BD" and table.loads == [None]


async def test_the_background_refresh_keeps_the_last_good_copy_when_a_load_fails():
    table = Table()
    table.write("K-1", "HK")
    cache = cache_of(whole_table(table.everything))
    await cache.reload()
    table.fail = True
    task = asyncio.ensure_future(cache.run_forever(0.01))
    try:
        async with asyncio.timeout(5):
            while len(table.loads) < 3:  # several refreshes failed, the loop goes on
                await asyncio.sleep(0.01)
        assert cache["K-1"].district == "HK"
        table.fail = False
        table.write("K-1", "BD")
        async with asyncio.timeout(5):
            while cache["K-1"].district != "BD":
                await asyncio.sleep(0.01)
    finally:
        await stop_tasks([task], timeout=5)
    assert task.cancelled()


def test_lookups_are_those_of_a_read_only_mapping():
    cache = cache_of(whole_table(Table().everything))
    cache.apply([Entry("K-1", "HK")])
    assert dict(cache) == {"K-1": Entry("K-1", "HK")} and list(cache.values()) == [Entry("K-1", "HK")]
    assert cache.get("nope", Entry("x", "y")).entity_id == "x"
    with pytest.raises(KeyError):
        cache["nope"]
