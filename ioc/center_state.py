"""Where the running center listens: ``ioc up`` writes it, every other ``ioc`` command reads it.

The file (``<state dir>/run/center.json``, mode 0600) holds addresses only: the broker's bootstrap servers,
the database URL without any password, each service's base URL and each stream processor's metrics URL, and
the pid of ``ioc up`` (a file left by a center that is gone is ignored). Environment variables still win.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

FILE = Path("run") / "center.json"
#: what a command tells the user instead of a traceback when nothing answers
HINT = "no IOC center answers here: start one with `make run` (or `ioc up`) in another terminal"


def path(state_dir: Path) -> Path:
    return state_dir / FILE


def without_password(url: str) -> str:
    """``url`` with any password removed (the state file holds addresses, not secrets)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def write(state_dir: Path, center: dict[str, Any]) -> Path:
    """Write the file readable by its owner only (created 0600, never world-readable for a moment)."""
    target = path(state_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(center, pid=os.getpid())
    if doc.get("database_url"):
        doc["database_url"] = without_password(doc["database_url"])
    tmp = target.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2)
    os.replace(tmp, target)
    return target


def remove(state_dir: Path) -> None:
    try:
        data = json.loads(path(state_dir).read_text())
    except (OSError, ValueError):
        return
    if data.get("pid") == os.getpid():
        path(state_dir).unlink(missing_ok=True)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(state_dir: Path) -> dict[str, Any] | None:
    """The running center's addresses, or ``None`` (no file, unreadable, or its ``ioc up`` is gone)."""
    try:
        data = json.loads(path(state_dir).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and _alive(data.get("pid")) else None


def apply_to_env(state_dir: Path, environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """Set ``IOC_KAFKA_BOOTSTRAP_SERVERS``, ``IOC_DATABASE_URL`` and each service's ``IOC_<S>_PORT`` from the
    running center unless already set (environment variables override the file). Returns the center."""
    env = os.environ if environ is None else environ
    center = read(state_dir)
    if center is None:
        return None
    if center.get("kafka_bootstrap_servers"):
        env.setdefault("IOC_KAFKA_BOOTSTRAP_SERVERS", center["kafka_bootstrap_servers"])
        if center.get("kafka_idempotence") is not None:
            env.setdefault("IOC_KAFKA_IDEMPOTENCE", str(center["kafka_idempotence"]).lower())
    if center.get("database_url"):
        env.setdefault("IOC_DATABASE_URL", center["database_url"])
    return center


def service_url(state_dir: Path, service: str, default: str) -> str:
    center = read(state_dir)
    if center is None:
        return default
    return center.get("services", {}).get(service, default)
