"""Architecture rules that keep the platform one system: import boundaries, lint, clean tree."""

from __future__ import annotations

import ast
import functools
import re
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


# The shape of a service, checked in the code (DEVELOPERS.md, "The shape of a service") -----------------------------
# Inside services/<d>/: api*.py (the HTTP adapter) → service*.py (the use cases, one *Service class) →
# repository*.py (every SQL statement) / publishing.py; domain.py and processors.py are pure (no I/O, no clock).
# ``shape_violations`` reads the modules' syntax trees (imports, calls, string literals), not file names.

#: libraries that do I/O: never imported by a pure module (domain.py, processors.py)
IO_LIBRARIES = frozenset(
    {
        "aiokafka",
        "asyncpg",
        "boto3",
        "confluent_kafka",
        "duckdb",
        "fastapi",
        "faust",
        "httpx",
        "psycopg",
        "psycopg2",
        "requests",
        "socket",
        "sqlalchemy",
        "starlette",
        "subprocess",
        "urllib.request",
        "uvicorn",
    }
)
#: calls that read the clock: a pure module is given ``now`` instead
CLOCK_CALLS = frozenset(
    {
        ("time", "time"),
        ("time", "time_ns"),
        ("time", "monotonic"),
        ("datetime", "now"),
        ("datetime", "utcnow"),
        ("datetime", "today"),
        ("date", "today"),
    }
)
# An SQL statement in a string literal (upper-case keywords, as the repositories write them; docstrings and
# prose in lower case do not match).
SQL = re.compile(
    r"\bSELECT\s[^;]*?\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+[\w.\"]+\s+SET\b|\bDELETE\s+FROM\b"
    r"|\bCREATE\s+(?:TABLE|INDEX|SCHEMA)\b|\bALTER\s+TABLE\b|\bON\s+CONFLICT\b",
    re.S,
)
PURE_MODULES = ("domain", "processors")


def _role(module: str) -> str:
    """The role a module name says it has: ``api_alarms`` is an api module, ``repository_archive`` a repository."""
    for role in ("api", "service", "repository"):
        if module == role or module.startswith(role + "_"):
            return role
    return module


def _imported_modules(tree: ast.AST, package: str) -> set[str]:
    """Every module ``tree`` imports (also inside functions), absolute, relative ones resolved in ``package``."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # ``from services.x import repository``
    return found


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _strings(tree: ast.AST) -> list[str]:
    """String literals of ``tree`` (f-strings with their placeholders as ``?``), docstrings left out."""
    skip = _docstrings(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            out.append("".join(v.value if isinstance(v, ast.Constant) else "?" for v in node.values))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            out.append(node.value)
    return out


def _clock_calls(tree: ast.AST) -> list[str]:
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = (
                owner.id
                if isinstance(owner, ast.Name)
                else owner.attr
                if isinstance(owner, ast.Attribute)
                else ""
            )
            if (name, node.func.attr) in CLOCK_CALLS:
                calls.append(f"{name}.{node.func.attr}()")
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            calls += [f"time.{a.name}" for a in node.names if ("time", a.name) in CLOCK_CALLS]
    return calls


@functools.cache
def shape_violations(root: Path) -> frozenset[tuple[str, str, str]]:
    """(service, module file, rule) for every place a service under ``root/services`` leaves the shape.

    Rules: ``api-reaches-repository`` (an api module imports a repository module), ``io-in-pure-module`` and
    ``clock-in-pure-module`` (domain.py / processors.py import an I/O library or read the clock),
    ``sql-outside-repository`` (an SQL statement in any module but a repository), ``use-cases-outside-service``
    (a module other than service*.py or app.py imports a repository: a second place for use cases, e.g. a
    store.py next to service.py), ``no-service-class`` / ``several-service-classes`` (service.py must define
    exactly one ``*Service`` class; a service without service.py has none)."""
    found: set[tuple[str, str, str]] = set()
    for pkg in sorted((root / "services").iterdir()):
        if not (pkg / "__init__.py").is_file():
            continue
        service = pkg.name
        package = f"services.{service}"
        repositories = {f"{package}.{p.stem}" for p in pkg.glob("*.py") if _role(p.stem) == "repository"}
        for path in sorted(pkg.glob("*.py")):
            module, role = path.stem, _role(path.stem)
            tree = ast.parse(path.read_text(), str(path))
            imports = _imported_modules(tree, package)
            reaches_repository = bool(imports & repositories)
            if role == "api" and reaches_repository:
                found.add((service, path.name, "api-reaches-repository"))
            elif reaches_repository and role not in ("service", "repository", "app"):
                found.add((service, path.name, "use-cases-outside-service"))
            if module in PURE_MODULES:
                if any(m == lib or m.startswith(lib + ".") for m in imports for lib in IO_LIBRARIES):
                    found.add((service, path.name, "io-in-pure-module"))
                if _clock_calls(tree):
                    found.add((service, path.name, "clock-in-pure-module"))
            if role != "repository" and any(SQL.search(s) for s in _strings(tree)):
                found.add((service, path.name, "sql-outside-repository"))
        service_module = pkg / "service.py"
        if (pkg / "api.py").is_file():  # a service with an HTTP API has its use cases in one class
            classes = []
            if service_module.is_file():
                tree = ast.parse(service_module.read_text())
                classes = [
                    n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Service")
                ]
            if not classes:
                found.add((service, "service.py", "no-service-class"))
            elif len(classes) > 1:
                found.add((service, "service.py", "several-service-classes"))
    return frozenset(found)


# Today's violations, each known and owned (meter, traffic, kiosk, dossier and city are in the shape). To shrink
# after a merge: run this file, delete the lines ``test_the_known_violations_are_still_there`` lists, commit.
# Never add a line to let new code in.
KNOWN_SHAPE_VIOLATIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        # archive: a worker with a query API over its own files (DuckDB SQL over Parquet/Iceberg, no PostgreSQL);
        # not one of the five domain services issue #34 reshapes
        ("archive", "query.py", "sql-outside-repository"),
        ("archive", "replay.py", "sql-outside-repository"),
        ("archive", "service.py", "no-service-class"),
        # dossier: the calendar watcher writes its alarm through the outbox itself
        ("dossier", "watcher.py", "use-cases-outside-service"),
    }
)


def test_no_service_leaves_the_shape_in_a_new_way():
    new = shape_violations(ROOT) - KNOWN_SHAPE_VIOLATIONS
    assert not new, "new shape violations (DEVELOPERS.md, 'The shape of a service'):\n" + "\n".join(
        f"  services/{s}/{m}: {rule}" for s, m, rule in sorted(new)
    )


def test_the_known_violations_are_still_there():
    # The allow-list only shrinks: an entry fixed since must go, or the same violation could come back unseen.
    gone = KNOWN_SHAPE_VIOLATIONS - shape_violations(ROOT)
    assert not gone, "fixed: delete these lines from KNOWN_SHAPE_VIOLATIONS:\n" + "\n".join(
        f"        {entry!r}," for entry in sorted(gone)
    )


def _service_package(root: Path, name: str, modules: dict[str, str]) -> Path:
    pkg = root / "services" / name
    pkg.mkdir(parents=True)
    (root / "services" / "__init__.py").touch()
    (pkg / "__init__.py").touch()
    for module, text in modules.items():
        (pkg / module).write_text(text)
    return pkg


IN_SHAPE = {
    "api.py": "from fastapi import APIRouter\nfrom services.shop.service import ShopService\nrouter = APIRouter()\n",
    "service.py": (
        "from services.shop import repository\n\n\nclass ShopService:\n"
        "    async def order(self, pool, now):\n        return await repository.insert_order(pool, now)\n"
    ),
    "repository.py": (
        "async def insert_order(pool, now):\n"
        "    return await pool.execute('INSERT INTO orders (at) VALUES ($1)', now)\n"
    ),
    "domain.py": "def total(prices):\n    return sum(prices)\n",
    "processors.py": "from datetime import datetime\n\n\ndef emit(state, now: datetime):\n    return [now]\n",
    "app.py": "from services.shop.api import router\n",
}


def test_a_service_in_the_shape_passes(tmp_path):
    _service_package(tmp_path, "shop", IN_SHAPE)
    assert shape_violations(tmp_path) == set()


@pytest.mark.parametrize(
    ("module", "text", "rule"),
    [
        # the api reaching past the service, absolute, relative or lazily inside a handler
        ("api.py", "from services.shop.repository import insert_order\n", "api-reaches-repository"),
        ("api.py", "from . import repository\n", "api-reaches-repository"),
        ("api.py", "def handler():\n    from .repository import insert_order\n", "api-reaches-repository"),
        ("api_admin.py", "import services.shop.repository as repo\n", "api-reaches-repository"),
        # a second shape: use cases in a store next to the service
        (
            "store.py",
            "from services.shop import repository\n\n\nclass ShopStore: ...\n",
            "use-cases-outside-service",
        ),
        # I/O or the clock in a pure module
        ("domain.py", "import httpx\n", "io-in-pure-module"),
        ("processors.py", "from aiokafka import AIOKafkaConsumer\n", "io-in-pure-module"),
        (
            "domain.py",
            "import datetime\n\n\ndef f():\n    return datetime.datetime.now()\n",
            "clock-in-pure-module",
        ),
        ("processors.py", "import time\n\n\ndef f():\n    return time.time()\n", "clock-in-pure-module"),
        ("domain.py", "from time import monotonic\n", "clock-in-pure-module"),
        # SQL outside the repository (an f-string too)
        ("service.py", IN_SHAPE["service.py"] + "Q = f'SELECT * FROM {1}'\n", "sql-outside-repository"),
        ("api.py", "Q = 'DELETE FROM orders WHERE id = $1'\n", "sql-outside-repository"),
        # the service class
        ("service.py", "class Helper: ...\n", "no-service-class"),
        ("service.py", IN_SHAPE["service.py"] + "\n\nclass OtherService: ...\n", "several-service-classes"),
    ],
)
def test_a_new_violation_fails_the_test(tmp_path, module, text, rule):
    _service_package(tmp_path, "shop", {**IN_SHAPE, module: text})
    violations = shape_violations(tmp_path)
    assert ("shop", module, rule) in violations, violations
    # and the allow-list of the real tree does not let it through
    assert ("shop", module, rule) not in KNOWN_SHAPE_VIOLATIONS


def test_prose_about_sql_in_a_docstring_is_not_sql():
    text = '"""Orders: SELECT the rows FROM the repository (it does the INSERT INTO orders)."""\n'
    assert SQL.search(text)  # as a literal it would count
    assert not any(SQL.search(s) for s in _strings(ast.parse(text)))
