"""Architecture rules that keep the platform one system: import boundaries, lint, clean tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_services_never_import_each_other_and_shared_never_imports_services():
    # import-linter contracts in pyproject.toml: independence of services, shared → services forbidden
    r = subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_is_clean():
    r = subprocess.run([str(BIN / "ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_formatter_has_nothing_to_change():
    r = subprocess.run(
        [str(BIN / "ruff"), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow  # about 10 s of CPU without mypy's cache (a fresh checkout); under a second with it
def test_mypy_is_clean():
    # [tool.mypy] in pyproject.toml: shared, services, ioc and bench; shared.* also checks unannotated bodies.
    r = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_service_has_the_same_shape():
    for service in ("meter", "traffic", "kiosk", "dossier", "city"):
        pkg = ROOT / "services" / service
        if not pkg.exists():
            continue
        for module in ("settings.py", "domain.py", "repository.py", "api.py", "app.py", "processors.py"):
            assert (pkg / module).is_file(), f"services/{service}/{module} is missing"


def test_no_generated_files_are_tracked():
    r = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        return  # not a git checkout (e.g. an sdist)
    bad = [
        p
        for p in r.stdout.splitlines()
        if any(part in p.split("/") for part in (".venv", "__pycache__", ".pytest_cache", "var", "pgdata"))
    ]
    assert not bad, bad


def test_nothing_connects_at_import_time():
    # Importing every service's app module must not need a broker or a database.
    code = (
        "import importlib, ioc.registry as r\n"
        "for e in r.present_services():\n"
        "    importlib.import_module(e.app_factory.split(':')[0])\n"
        "    importlib.import_module(e.settings.split(':')[0])\n"
        "print('ok')\n"
    )
    env = {
        "IOC_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "IOC_DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
        "PATH": "/usr/bin:/bin",
    }
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_every_dependency_is_pinned_in_the_constraints_the_installs_use():
    """``make`` and the image install with ``-c constraints.txt``: every dependency of pyproject.toml (dev extras
    included) must have an exact version there, or a fresh machine could get code nobody tested."""
    import re
    import tomllib

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"]) + [
        d for ds in project["optional-dependencies"].values() for d in ds
    ]
    pinned = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[re.sub(r"[-_.]+", "-", name).lower()] = version
    missing = [
        d
        for d in wanted
        if re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]).lower() not in pinned
    ]
    assert not missing, f"not pinned in constraints.txt: {missing}"
    assert "-c constraints.txt" in (root / "Makefile").read_text()
    assert "-c constraints.txt" in (root / "deploy" / "docker" / "Dockerfile").read_text()
