"""Waiting and stopping background tasks for sure.

On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives just after the awaitable it waits
on has finished (CPython gh-86296; 3.12 rewrote it on ``asyncio.timeout``): the task goes on as if never
cancelled. IOC's own code waits with ``asyncio.timeout`` instead (:func:`wait_event`; ruff bans
``asyncio.wait_for`` outside tests), but faust-streaming and mode, which run the processors' workers, still use
``wait_for``. A shutdown that cancels a loop once and then waits for it can wait for ever if the cancel was
swallowed: a fresh-clone CI run hung in a service's shutdown that way, waiting on its outbox relay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

__all__ = ["stop_tasks", "wait_event"]

log = logging.getLogger(__name__)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds have passed; whether it is set. A cancellation always
    propagates (this is what ``asyncio.wait_for(event.wait(), timeout)`` fails to do on Python 3.11)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        pass
    return event.is_set()


async def stop_tasks(
    tasks: Iterable[asyncio.Task], *, timeout: float = 10.0, every: float = 0.25
) -> set[asyncio.Task]:
    """Cancel ``tasks`` and wait until they have ended, cancelling again every ``every`` seconds those still
    running (a cancellation can be swallowed, see the module), for ``timeout`` seconds at the most.

    Returns the tasks still running then (logged as an error; empty when all stopped). Their results and
    exceptions are retrieved, so none is reported as never retrieved. A repeated cancel also interrupts what a
    task does on cancellation: cleanup that must finish belongs in the service's ``on_stop`` (which runs
    before), or under ``asyncio.shield``.
    """
    tasks = list(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = {t for t in tasks if not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        _, pending = await asyncio.wait(pending, timeout=min(every, left))
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: an exception at shutdown is not news
    if pending:
        log.error(
            "tasks did not stop within %.1f s: %s", timeout, ", ".join(sorted(t.get_name() for t in pending))
        )
    return pending
