"""The image's health check: healthy only on a 2xx answer from IOC_HEALTHCHECK_URL."""

from __future__ import annotations

import http.server
import threading

import pytest

from shared.embedded import free_port
from tests.deploy.conftest import DEPLOY, load_script

healthcheck = load_script(DEPLOY / "docker" / "healthcheck.py")


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # http.server dispatches on this name
        self.send_response({"/healthz": 200, "/readyz": 503}.get(self.path, 404))
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server_port():
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()


def test_ok_answer_is_healthy(server_port, monkeypatch):
    monkeypatch.setenv("IOC_HEALTHCHECK_URL", f"http://127.0.0.1:{server_port}/healthz")
    assert healthcheck.main() == 0


def test_error_answer_missing_path_and_closed_port_are_unhealthy(server_port, monkeypatch):
    assert healthcheck.check(f"http://127.0.0.1:{server_port}/readyz") is False
    assert healthcheck.check(f"http://127.0.0.1:{server_port}/nothing") is False
    monkeypatch.setenv("IOC_HEALTHCHECK_URL", f"http://127.0.0.1:{free_port()}/healthz")
    assert healthcheck.main() == 1
