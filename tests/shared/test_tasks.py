"""Stopping background tasks: ``shared.tasks.stop_tasks`` against tasks that swallow or ignore cancellation."""

from __future__ import annotations

import asyncio
import logging

from shared.tasks import stop_tasks


async def _loop_waiting_with_wait_for(wake: asyncio.Event, woke: list[int]) -> None:
    """A background loop as the outbox relay was written: wait for a nudge or a poll interval with
    ``asyncio.wait_for``, then work."""
    while True:
        try:
            await asyncio.wait_for(wake.wait(), 10)  # Python 3.11 may swallow a cancellation here
        except TimeoutError:
            pass
        wake.clear()
        woke.append(1)


async def test_a_cancellation_swallowed_by_wait_for_does_not_keep_the_task_running():
    # The race that hung a fresh-clone CI run: the nudge arrives, then the shutdown's cancel, before the task
    # resumes. Over a few interleavings at least one swallows the first cancel on 3.11; none may survive.
    for yields in range(6):
        wake, woke = asyncio.Event(), []
        task = asyncio.create_task(_loop_waiting_with_wait_for(wake, woke))
        await asyncio.sleep(0)
        wake.set()
        for _ in range(yields):
            await asyncio.sleep(0)
        assert await stop_tasks([task], timeout=5, every=0.05) == set()
        assert task.done()


async def test_a_task_that_swallows_cancellations_is_cancelled_again_until_it_ends():
    swallowed = []

    async def stubborn() -> None:
        while len(swallowed) < 3:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed.append(1)  # as a buggy dependency would: carry on
        await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await stop_tasks([task], timeout=5, every=0.01) == set()
    assert task.cancelled()
    assert len(swallowed) == 3


async def test_a_task_that_never_stops_is_given_up_on_after_the_timeout_and_named(caplog):
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(deaf(), name="deaf-loop")
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.ERROR, logger="shared.tasks"):
        pending = await stop_tasks([task], timeout=0.3, every=0.05)
    assert pending == {task}
    assert 0.3 <= loop.time() - started < 2
    assert "deaf-loop" in caplog.text
    release.set()
    task.cancel()  # the next cancel lands after release: it ends
    await asyncio.wait([task], timeout=2)
    assert task.done()


async def test_finished_and_failed_tasks_are_collected_without_noise():
    async def fails() -> None:
        raise RuntimeError("boom")

    done = asyncio.create_task(asyncio.sleep(0))
    failed = asyncio.create_task(fails())
    await asyncio.sleep(0.01)
    assert await stop_tasks(iter([done, failed]), timeout=1) == set()
    assert failed.done() and not failed.cancelled()
