"""The outbox relay's wait between polls, cancelled while a nudge wakes it (no broker or database needed)."""

from __future__ import annotations

import asyncio

from services.dossier.publishing import OutboxRelay


async def test_a_relay_cancelled_as_it_is_nudged_stops():
    # A nudge (a committed dossier) and the shutdown's cancel in the same moment: on Python 3.11,
    # asyncio.wait_for returned normally here and the relay ran on, so the service never stopped.
    for yields in range(6):
        relay = OutboxRelay(ctx=None, poll_seconds=10)  # type: ignore[arg-type]  # _sleep touches no context
        task = asyncio.create_task(relay._sleep(10))
        await asyncio.sleep(0)
        relay.notify()
        for _ in range(yields):
            await asyncio.sleep(0)
        if task.cancel():  # the cancel reached a task still running: it must end cancelled
            try:
                await task
            except asyncio.CancelledError:
                pass
            assert task.cancelled(), f"cancellation swallowed after {yields} yields"
        else:
            assert task.done() and not relay.wake.is_set()


async def test_a_relay_sleep_ends_at_its_interval_or_its_nudge():
    relay = OutboxRelay(ctx=None, poll_seconds=10)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    await relay._sleep(0.05)
    assert 0.04 <= loop.time() - started < 1
    relay.notify()
    started = loop.time()
    await relay._sleep(10)
    assert loop.time() - started < 1 and not relay.wake.is_set()
