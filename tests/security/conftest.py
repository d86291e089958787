"""Security suite fixtures: every present service running once on the session broker and PostgreSQL.

Services are discovered from ``ioc.registry`` (whatever subset exists), started lazily on first use and shared
by the whole package, so a new service or endpoint is covered without touching these tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from ioc import registry
from shared.testing import running_app

# Small enough that the 413 tests send little, large enough for every legitimate test body.
MAX_BODY_BYTES = 256 * 1024
OPS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def present_service_names() -> list[str]:
    """Services whose module exists in this checkout (the registry skips missing ones)."""
    return [s.name for s in registry.present_services()]


def build_app(name: str, kafka_settings, db_settings, **overrides: Any) -> FastAPI:
    """A service app on the test infrastructure (nothing connects until its lifespan runs)."""
    entry = registry.service(name)
    settings_cls = registry.load(entry.settings)
    kw: dict[str, Any] = {
        "kafka": kafka_settings,
        "database": db_settings,
        "max_body_bytes": MAX_BODY_BYTES,
        # These tests send thousands of bad keys from one address on purpose; the throttle has its own test.
        "auth_failure_limit": "1000000/minute",
    }
    if name == "city":
        # Its own consumer group, so it never steals partitions from the city tests' store.
        kw["consumer_group"] = f"sec-city-{uuid.uuid4().hex[:8]}"
    kw.update(overrides)
    return registry.load(entry.app_factory)(settings_cls(**kw))


@dataclass
class RunningService:
    name: str
    app: FastAPI
    client: httpx.AsyncClient

    @property
    def ctx(self):
        return self.app.state.ctx


class ServiceFarm:
    """Starts each service at most once (lazily) and stops them all at the end of the package."""

    def __init__(self, kafka_settings, db_settings):
        self.kafka_settings = kafka_settings
        self.db_settings = db_settings
        self.stack = AsyncExitStack()
        self.running: dict[str, RunningService] = {}

    async def get(self, name: str) -> RunningService:
        if name not in self.running:
            app = build_app(name, self.kafka_settings, self.db_settings)
            client = await self.stack.enter_async_context(running_app(app))
            # Revocation must bite at once in these tests (the default 2 s cache is tested separately).
            app.state.ctx.keys.cache_seconds = 0
            self.running[name] = RunningService(name, app, client)
        return self.running[name]


@pytest.fixture(scope="package")
async def farm(kafka_settings, db_settings, topics_ready, platform_pool) -> ServiceFarm:
    f = ServiceFarm(kafka_settings, db_settings)
    yield f
    await f.stack.aclose()


@pytest.fixture(scope="package")
def key_pool(platform_pool):
    """The platform pool (principals, keys, audit log), as these tests name it."""
    return platform_pool


@pytest.fixture
def issue(make_key):
    """``await issue(scopes, kind=..., attributes=...)`` → (principal_id, api_key)."""
    return make_key


# Route introspection ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    scope: str | None  # the scope its auth dependency demands; None: no auth dependency found
    streaming: bool
    scopes: tuple[str, ...] = ()  # every scope it accepts (require_scope with several: any one of them)

    @property
    def writes(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")

    def concrete_path(self) -> str:
        """The path with every parameter replaced by a fresh id (nobody owns it)."""
        out, rest = "", self.path
        while "{" in rest:
            head, _, tail = rest.partition("{")
            _, _, rest = tail.partition("}")
            out += head + f"sec-{uuid.uuid4().hex[:10]}"
        return out + rest


def _required_scopes(dependant) -> tuple[str, ...]:
    # shared.auth.require_scope (and the city's variant) name their dependency require_<domain>_<action> (after
    # the first scope) and list what they accept in ``scopes``.
    for dep in dependant.dependencies:
        name = getattr(dep.call, "__name__", "")
        if name.startswith("require_") and "_" in name[len("require_") :]:
            domain, _, action = name[len("require_") :].partition("_")
            return tuple(getattr(dep.call, "scopes", ())) or (f"{domain}:{action.replace('any', '*')}",)
        found = _required_scopes(dep)
        if found:
            return found
    return ()


def endpoints(app: FastAPI) -> Iterator[Endpoint]:
    """Every HTTP endpoint of ``app`` except the ops probes, with the scope it requires."""
    from fastapi.responses import StreamingResponse
    from fastapi.routing import iter_route_contexts

    # Routers are included lazily (FastAPI >= 0.16x): walk the effective routes, with their full paths.
    for rc in iter_route_contexts(app.routes):
        route = rc.route
        if not isinstance(route, APIRoute) or rc.path in OPS_PATHS:
            continue
        response_class = getattr(rc, "response_class", route.response_class)
        streaming = isinstance(response_class, type) and issubclass(response_class, StreamingResponse)
        for method in sorted((rc.methods or set()) - {"HEAD", "OPTIONS"}):
            scopes = _required_scopes(route.dependant)
            yield Endpoint(method, rc.path, scopes[0] if scopes else None, streaming, scopes)


def documented_operations(app: FastAPI) -> set[tuple[str, str]]:
    """(METHOD, path) of every operation in the app's OpenAPI document."""
    return {
        (m.upper(), path)
        for path, item in app.openapi()["paths"].items()
        if path not in OPS_PATHS
        for m in item
        if m in ("get", "post", "put", "patch", "delete")
    }
