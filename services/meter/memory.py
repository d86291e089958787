"""Giving the C heap's freed memory back to the operating system (glibc; elsewhere these are no-ops).

The meter service keeps millions of meters' state in a few large buffers, while every request allocates and
frees megabytes of short-lived buffers (bodies, batches, encoded events). glibc raises its mmap threshold to the
size of the largest buffer freed so far, so those buffers then come from the heap, and what they free stays in
the process between the long-lived blocks (docs/performance-targets.md, meter service memory). A fixed threshold
keeps large buffers in their own mappings (returned on free); a periodic ``malloc_trim`` returns the free pages
left inside the heap.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from functools import cache

log = logging.getLogger(__name__)
_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, made fixed


@cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt, libc.malloc_trim  # noqa: B018  # glibc's, not every C library's
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def fix_mmap_threshold() -> bool:
    """Keep buffers of ``MMAP_THRESHOLD`` bytes and more in their own mappings; whether the C library took it."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release_free_heap() -> bool:
    """Return the heap's free pages to the operating system; whether any were."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


async def release_forever(interval: float, work_done: Callable[[], int]) -> None:
    """Every ``interval`` seconds, release the free heap if ``work_done()`` moved since the last pass (the
    service's background task: a trim holds the allocator for a few milliseconds, so not per request)."""
    last = work_done()
    while True:
        await asyncio.sleep(interval)
        now = work_done()
        if now != last:
            last = now
            release_free_heap()
