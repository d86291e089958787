"""How every IOC HTTP service is served (``ioc serve``): uvicorn with timeouts a slow client cannot outlast.

- Request headers: a connection that has not sent a complete request head within
  ``IOC_HEADER_TIMEOUT_SECONDS`` (default 10 s) of connecting is closed (slow-loris: 200 sockets trickling
  headers used to be held 40-60 s each). Uvicorn has no such timeout of its own; :class:`HeaderTimeoutProtocol`
  adds it to its h11 protocol. Heads are limited to 16 KiB (``h11_max_incomplete_event_size``).
- Request bodies: :class:`shared.http.BodyLimitMiddleware` gives a write's body ``IOC_BODY_TIMEOUT_SECONDS``
  (default 30 s) to arrive, else 408.
- Idle keep-alive connections close after 5 s; at shutdown, requests in flight (live streams included) get
  ``IOC_GRACEFUL_SHUTDOWN_SECONDS`` (default 5 s) before they are cancelled, so a stream never holds a stop.
"""

from __future__ import annotations

import asyncio
import os

from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD_BYTES = 16 * 1024


def _seconds(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


class HeaderTimeoutProtocol(H11Protocol):
    """Uvicorn's h11 protocol, closing a connection whose first request head is not complete in time."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _head_too_slow(self) -> None:
        if self.cycle is None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_deadline.cancel()
        super().connection_lost(exc)


def uvicorn_options() -> dict:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` with IOC's limits."""
    protocol = type(
        "IocHttpProtocol",
        (HeaderTimeoutProtocol,),
        {"header_timeout": _seconds("IOC_HEADER_TIMEOUT_SECONDS", 10.0)},
    )
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "timeout_keep_alive": 5,
        "timeout_graceful_shutdown": int(_seconds("IOC_GRACEFUL_SHUTDOWN_SECONDS", 5.0)),
    }
