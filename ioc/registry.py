"""What the center is made of: services (HTTP apps), stream processors and simulators, by import path.

This is the only place that knows every service; services never import each other. Entries whose module
does not exist yet are skipped, so the center runs with whatever subset of domains is there.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TypeGuard


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    port: int
    app_factory: str  # "module:function" taking settings
    settings: str  # "module:Class"
    processors: str | None = None  # "module:ATTR" → list of processor factories (settings → StreamProcessor)
    simulator: str | None = None  # "module:function" (async main(base_url, api_key, settings))
    # False: `ioc up` starts it by other means (the archive API starts with its archiver, under
    # IOC_ARCHIVE_ENABLED), so present_services() leaves it out; deployments (deploy/) still list it.
    started_by_up: bool = True


SERVICES: tuple[ServiceEntry, ...] = (
    ServiceEntry(
        "city",
        8100,
        "services.city.app:create_app",
        "services.city.settings:CitySettings",
        "services.city.processors:PROCESSORS",
        None,
    ),
    ServiceEntry(
        "meter",
        8101,
        "services.meter.app:create_app",
        "services.meter.settings:MeterSettings",
        "services.meter.processors:PROCESSORS",
        "services.meter.simulator:run",
    ),
    ServiceEntry(
        "traffic",
        8102,
        "services.traffic.app:create_app",
        "services.traffic.settings:TrafficSettings",
        "services.traffic.processors:PROCESSORS",
        "services.traffic.simulator:run",
    ),
    ServiceEntry(
        "kiosk",
        8103,
        "services.kiosk.app:create_app",
        "services.kiosk.settings:KioskSettings",
        "services.kiosk.processors:PROCESSORS",
        "services.kiosk.simulator:run",
    ),
    ServiceEntry(
        "dossier",
        8104,
        "services.dossier.app:create_app",
        "services.dossier.settings:DossierSettings",
        "services.dossier.processors:PROCESSORS",
        "services.dossier.simulator:run",
    ),
    # The archive's extracts API; its archiver runs as `ioc archive run` (a worker, not a stream processor).
    ServiceEntry(
        "archive",
        8105,
        "services.archive.app:create_app",
        "services.archive.settings:ArchiveSettings",
        started_by_up=False,
    ),
)


def load(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def available(path: str | None) -> TypeGuard[str]:
    """Whether ``path`` is set and its module can be imported."""
    if not path:
        return False
    module = path.partition(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def service(name: str) -> ServiceEntry:
    for s in SERVICES:
        if s.name == name:
            return s
    raise KeyError(name)


def present_services() -> list[ServiceEntry]:
    """The services `ioc up` starts and `ioc` commands look for, where their code is present."""
    return [s for s in SERVICES if s.started_by_up and available(s.app_factory)]
