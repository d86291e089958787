"""``/livez`` of a stream worker fails when its event loop is stuck; ``/metrics`` is still served beside it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.error
import urllib.request

from shared.stream.health import LoopHeartbeat, start_worker_http_server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def test_livez_fails_while_the_event_loop_is_blocked_and_recovers_after():
    port = _free_port()
    # its own heartbeat: the process-wide one may be beating for a runtime another test left running
    heartbeat = LoopHeartbeat()
    server = start_worker_http_server(port, max_stall_seconds=0.5, heartbeat=heartbeat)
    base = f"http://127.0.0.1:{port}"
    try:
        assert (await asyncio.to_thread(_get, f"{base}/livez"))[0] == 503  # no loop beating yet
        heartbeat.start()
        try:
            await asyncio.sleep(0.05)
            assert await asyncio.to_thread(_get, f"{base}/livez") == (200, b"ok\n")
            status, body = await asyncio.to_thread(_get, f"{base}/metrics")
            assert status == 200 and b"ioc_consumer_lag_records" in body

            seen: list[tuple[int, bytes]] = []
            probe = threading.Thread(target=lambda: (time.sleep(1.2), seen.append(_get(f"{base}/livez"))))
            probe.start()
            time.sleep(
                2.0
            )  # the loop is stuck: a blocking call on the loop thread, as a runaway fold would be
            probe.join()
            assert seen[0][0] == 503 and b"stalled" in seen[0][1]

            await asyncio.sleep(1.1)  # the loop runs again: the next beat makes it live
            assert (await asyncio.to_thread(_get, f"{base}/livez"))[0] == 200
        finally:
            await heartbeat.stop()
    finally:
        server.shutdown()
