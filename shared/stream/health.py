"""Liveness of a stream worker that fails when its event loop is stuck.

``ioc process`` serves ``/metrics`` from a thread (prometheus_client's server), which answers whatever the
event loop does: a worker whose loop is blocked (a fold that never returns, a deadlock on the loop thread) kept
passing a liveness probe on ``/metrics``. Here a task on the loop stamps :data:`HEARTBEAT` every second, and
``/livez`` (served from the same thread as ``/metrics``) answers 503 when the last stamp is older than
``max_stall_seconds``: the probe then fails and the kubelet restarts the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

#: how long the loop may go without a beat before ``/livez`` fails (longer than any legitimate batch)
DEFAULT_MAX_STALL_SECONDS = 30.0


class LoopHeartbeat:
    """A timestamp the event loop refreshes every ``interval`` seconds while it runs."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.last_beat: float | None = None  # time.monotonic() of the last beat; None: no loop beating yet
        self._task: asyncio.Task | None = None
        self._users = 0

    async def _beat(self) -> None:
        while True:
            self.last_beat = time.monotonic()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        """Start beating on the running loop (idempotent: several runtimes in one process share it)."""
        self._users += 1
        if self._task is None or self._task.done():
            self.last_beat = time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._beat(), name="ioc:loop-heartbeat")

    async def stop(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users == 0 and self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.last_beat = None

    def stalled_for(self, now: float | None = None) -> float | None:
        """Seconds since the last beat (``None``: not beating)."""
        if self.last_beat is None:
            return None
        return (time.monotonic() if now is None else now) - self.last_beat


HEARTBEAT = LoopHeartbeat()


def liveness_app(heartbeat: LoopHeartbeat = HEARTBEAT, max_stall_seconds: float = DEFAULT_MAX_STALL_SECONDS):
    """A WSGI app: ``/livez`` from the loop heartbeat, everything else Prometheus' ``/metrics``."""
    metrics = make_wsgi_app()

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/livez":
            stalled = heartbeat.stalled_for()
            if stalled is not None and stalled <= max_stall_seconds:
                body, status = b"ok\n", "200 OK"
            elif stalled is None:
                body, status = b"event loop not running\n", "503 Service Unavailable"
            else:
                body = f"event loop stalled for {stalled:.0f} s\n".encode()
                status = "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics(environ, start_response)

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # probes every few seconds: no access log
        pass


def start_worker_http_server(
    port: int,
    addr: str = "127.0.0.1",
    max_stall_seconds: float = DEFAULT_MAX_STALL_SECONDS,
    heartbeat: LoopHeartbeat = HEARTBEAT,
) -> ThreadingWSGIServer:
    """Serve ``/metrics`` and ``/livez`` on ``addr:port`` from a daemon thread (what ``ioc process`` runs)."""
    server = make_server(
        addr,
        port,
        liveness_app(heartbeat, max_stall_seconds),
        ThreadingWSGIServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="ioc-worker-http", daemon=True).start()
    return server
