"""Giving the C heap's free memory back to the system (services/meter/memory.py): on glibc both calls take
effect; a freed large buffer no longer counts in the process's resident memory after a release."""

from __future__ import annotations

import ctypes.util
import platform

import psutil
import pytest

from services.meter import memory

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or not ctypes.util.find_library("c"),
    reason="glibc's mallopt/malloc_trim",
)


@glibc
def test_the_mmap_threshold_is_fixed_and_free_heap_pages_are_released():
    assert memory.fix_mmap_threshold()
    # 64 MiB in 100-KiB blocks (under the threshold: from the heap), touched, then every other one freed: the
    # free half stays in the heap between the live blocks until released.
    blocks = [bytearray(b"x" * 100_000) for _ in range(640)]
    del blocks[::2]
    rss = psutil.Process().memory_info().rss
    memory.release_free_heap()
    released = rss - psutil.Process().memory_info().rss
    assert released > 16 * 2**20, f"{released / 2**20:.1f} MiB released"
    del blocks
