"""Browser hardening (finding 5 of issue #40): no page of any service can be framed, sniffed or leak a URL.

Another origin framed the console and its "Clear" buttons worked with the key in localStorage; the key also
travelled in URLs that the compose nginx logged with its default format.
"""

from __future__ import annotations

import re

import pytest

from tests.security.conftest import endpoints, present_service_names

pytestmark = pytest.mark.integration
SERVICES = present_service_names()
REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def assert_hardened(r) -> None:
    csp = r.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, (r.request.url, csp)
    assert "object-src 'none'" in csp and "base-uri 'none'" in csp
    assert r.headers.get("x-frame-options") == "DENY"
    assert r.headers.get("x-content-type-options") == "nosniff"
    assert r.headers.get("referrer-policy") == "no-referrer"


@pytest.mark.parametrize("service", SERVICES)
async def test_every_answer_of_every_service_carries_the_hardening_headers(service, farm):
    svc = await farm.get(service)
    protected = next(e.concrete_path() for e in endpoints(svc.app) if e.method == "GET" and e.scope)
    for method, path, status in (
        ("GET", "/healthz", 200),
        ("GET", "/docs", 200),
        ("GET", "/openapi.json", 200),
        ("GET", protected, 401),
        ("GET", "/no-such-page", 404),
        ("POST", "/healthz", 405),
    ):
        r = await svc.client.request(method, path)
        assert r.status_code == status, (method, path, r.status_code)
        assert_hardened(r)
    if service == "city":
        console = await svc.client.get("/")
        assert console.status_code == 200
        assert_hardened(console)
        # The console runs only its own scripts: no inline script, no other origin.
        csp = console.headers["content-security-policy"]
        assert "script-src 'self';" in csp


def test_the_compose_gateway_logs_no_query_strings_or_credentials():
    conf = (REPO / "deploy" / "compose" / "nginx.conf").read_text()
    formats = dict(re.findall(r"log_format\s+(\S+)\s+((?:'[^']*'\s*)+);", conf))
    assert formats, "the gateway defines its own log format"
    leaky = re.compile(
        r"\$(request\b|request_uri|args|query_string|arg_\w+|http_authorization|http_x_api_key|http_cookie)"
    )
    for name, fmt in formats.items():
        assert not leaky.search(fmt), (name, leaky.search(fmt).group(0))
    access_logs = re.findall(r"access_log\s+([^;]+);", conf)
    assert access_logs, "nginx's default format logs $request, query string included"
    for line in access_logs:
        parts = line.split()
        assert parts[0] == "off" or (len(parts) >= 2 and parts[1] in formats), line
