"""``ioc up``: the whole center on one machine, supervised.

Starts (unless external ones are configured) the embedded broker and PostgreSQL, creates the topics and a
development admin key, then every present service, every stream processor and the simulators as child
processes, restarts a child that dies, and on Ctrl-C / SIGTERM stops them all (children first, then the
servers), leaving no orphan.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from rich.console import Console
from rich.table import Table

from ioc import registry

if TYPE_CHECKING:
    from shared.embedded import EmbeddedBroker, EmbeddedPostgres


@dataclass
class Child:
    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        out = open(self.log, "ab")
        # Own process group: the terminal's Ctrl-C reaches only `ioc up`, which stops children in order.
        self.proc = subprocess.Popen(
            self.argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Center:
    def __init__(self, *, state_dir: Path, simulators: bool, scale: float, fresh: bool, console: Console):
        self.state_dir = state_dir
        self.simulators = simulators
        self.scale = scale
        self.fresh = fresh
        self.console = console
        self.broker: EmbeddedBroker | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.children: list[Child] = []
        self._stopping = False

    # Infrastructure ----------------------------------------------------------------------------------------
    def _start_infrastructure(self) -> None:
        from shared.embedded import EmbeddedBroker, EmbeddedPostgres, free_port

        self.state_dir.mkdir(parents=True, exist_ok=True)
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        if not os.environ.get("IOC_KAFKA_BOOTSTRAP_SERVERS"):
            port = int(os.environ.get("IOC_EMBEDDED_KAFKA_PORT", "0")) or _port_or_free(9092)
            broker = self.broker = EmbeddedBroker(port=port, log_file=logs / "broker.log").start()
            os.environ["IOC_KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
            os.environ.setdefault("IOC_KAFKA_IDEMPOTENCE", "false")
            self.console.print(
                f"[green]●[/green] embedded Kafka-protocol broker (Tansu) on {broker.bootstrap_servers}"
            )
        else:
            self.console.print(
                f"[green]●[/green] external Kafka at {os.environ['IOC_KAFKA_BOOTSTRAP_SERVERS']}"
            )
        if not os.environ.get("IOC_DATABASE_URL"):
            data = self.state_dir / "pgdata"
            if self.fresh and data.exists():
                import shutil

                shutil.rmtree(data)
            port = int(os.environ.get("IOC_EMBEDDED_PG_PORT", "0")) or _port_or_free(5433)
            postgres = self.postgres = EmbeddedPostgres(data, port=port).start()
            postgres.create_database("ioc")
            os.environ["IOC_DATABASE_URL"] = postgres.url("ioc")
            self.console.print(
                f"[green]●[/green] embedded PostgreSQL 18 on 127.0.0.1:{postgres.port} (data in {data})"
            )
        else:
            self.console.print("[green]●[/green] external PostgreSQL (IOC_DATABASE_URL)")
        self._event_keys()
        _ = free_port

    def _event_keys(self) -> None:
        """Authenticated event sources: every child signs and checks events with the keys of this center
        (generated once, mode 0600), unless keys are configured already."""
        if os.environ.get("IOC_EVENT_KEYS") or os.environ.get("IOC_EVENT_KEYS_FILE"):
            return
        import json

        from shared.contracts import TOPICS  # noqa: F401 - fills the catalogue
        from shared.contracts.provenance import generate_keys, producing_principals

        path = self.state_dir / "event-keys.json"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(generate_keys(producing_principals()), f)
        os.environ["IOC_EVENT_KEYS_FILE"] = str(path)

    def supervise_infrastructure(self) -> None:
        """Restart the embedded PostgreSQL if it died (its start handles the stale lock a kill leaves)."""
        if self._stopping or self.postgres is None or self.postgres.running:
            return
        self.console.print("[yellow]●[/yellow] embedded PostgreSQL exited; restarting")
        try:
            self.postgres.start()
        except Exception as exc:  # retried at the next supervision round
            self.console.print(f"[red]●[/red] embedded PostgreSQL did not restart: {exc}")

    async def _prepare(self) -> str:
        """Topics, and the development admin principal with a key (reused while it is valid)."""
        from shared.auth import PLATFORM_SCHEMA, KeyStore
        from shared.config import DatabaseSettings, KafkaSettings
        from shared.db import apply_migrations, create_pool
        from shared.http import PLATFORM_MIGRATIONS
        from shared.kafka.admin import ensure_topics

        await ensure_topics(KafkaSettings())
        pool = await create_pool(DatabaseSettings(url=os.environ["IOC_DATABASE_URL"], pool_min=1, pool_max=2))
        try:
            await apply_migrations(pool, PLATFORM_SCHEMA, PLATFORM_MIGRATIONS)
            from ioc.operators_cli import ensure_dev_operator  # the console's sign-in (docs/console.md)

            self.console_login = await ensure_dev_operator(pool, self.state_dir)
            store = KeyStore(pool, cache_seconds=0)
            key_file = self.state_dir / "dev-admin.key"
            if key_file.exists() and await store.authenticate(key_file.read_text().strip()):
                return key_file.read_text().strip()
            await store.upsert_principal(
                "dev-admin", "admin", "Development administrator", ["*"], {"role": "administrator"}
            )
            key = await store.issue_key("dev-admin")
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
            return key
        finally:
            await pool.close()

    # Children ----------------------------------------------------------------------------------------------
    def _spawn(self, name: str, *args: str, env: dict[str, str] | None = None) -> Child:
        child = Child(
            name, [sys.executable, "-m", "ioc", *args], self.state_dir / "logs" / f"{name}.log", env=env or {}
        )
        child.start()
        self.children.append(child)
        return child

    def _processor_names(self) -> list[str]:
        names = []
        for entry in registry.present_services():
            if registry.available(entry.processors):
                for factory in registry.load(entry.processors):
                    names.append(factory(registry.load(entry.settings)()).name)
        return names

    def start(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        self._start_infrastructure()
        key = asyncio.run(self._prepare())
        from ioc import archive_cli

        if self.broker is not None:  # an embedded broker starts empty: the day comes back from the archive
            archive_cli.restore_before_processors(self.console)
        if archive_cli.archive_enabled():  # the archiver and its extracts API (port 8105)
            self._spawn("archiver", "archive", "run")
            self._spawn("service-archive", "archive", "serve")
        services = registry.present_services()
        for entry in services:
            self._spawn(f"service-{entry.name}", "serve", entry.name)
        metrics_base = int(os.environ.get("IOC_PROCESSOR_METRICS_BASE_PORT", "9101"))
        self.processor_metrics: dict[str, int] = {}
        for i, name in enumerate(self._processor_names()):
            self.processor_metrics[name] = metrics_base + i
            self._spawn(f"processor-{name}", "process", name, "--metrics-port", str(metrics_base + i))
        self._wait_ready(services)
        self._write_center_state(services)
        if self.simulators:
            incidents = _scripted_incidents()
            if incidents != "none":
                self.console.print(
                    f"[yellow]●[/yellow] scripted incident for the simulators: {incidents} (district@start/minutes: "
                    "a feeder outage darkening its meters, kiosks and signals; IOC_SIM_INCIDENTS=none turns it off)"
                )
            for entry in services:
                if registry.available(entry.simulator):
                    self._spawn(
                        f"simulator-{entry.name}",
                        "simulate",
                        entry.name,
                        "--scale",
                        str(self.scale),
                        "--url",
                        f"http://127.0.0.1:{_port(entry)}",
                        env={"IOC_API_KEY": key, "IOC_SIM_INCIDENTS": incidents},
                    )
        self._print_urls(services, key)

    def _write_center_state(self, services: list[registry.ServiceEntry]) -> None:
        """Where everything listens, for the other ``ioc`` commands (see ioc/center_state.py)."""
        from ioc import center_state

        self.state_file = center_state.write(
            self.state_dir,
            {
                "kafka_bootstrap_servers": os.environ["IOC_KAFKA_BOOTSTRAP_SERVERS"],
                "kafka_idempotence": os.environ.get("IOC_KAFKA_IDEMPOTENCE"),
                "database_url": os.environ["IOC_DATABASE_URL"],
                "services": {e.name: f"http://127.0.0.1:{_port(e)}" for e in services},
                "processor_metrics": {
                    n: f"http://127.0.0.1:{port}/metrics" for n, port in self.processor_metrics.items()
                },
                "state_dir": str(self.state_dir),
            },
        )

    def _wait_ready(self, services: list[registry.ServiceEntry], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        pending = {e.name: e for e in services}
        with self.console.status("starting services…"):
            while pending and time.monotonic() < deadline:
                for name, e in list(pending.items()):
                    try:
                        if httpx.get(f"http://127.0.0.1:{_port(e)}/readyz", timeout=1).status_code == 200:
                            pending.pop(name)
                            self.console.print(f"[green]●[/green] {name} service ready on :{_port(e)}")
                    except httpx.HTTPError:
                        pass
                time.sleep(0.3)
        for name in pending:
            self.console.print(f"[red]●[/red] {name} service not ready; see {self.state_dir / 'logs'}")

    def _print_urls(self, services: list[registry.ServiceEntry], key: str) -> None:
        table = Table(title="IOC is running", show_header=True)
        table.add_column("what")
        table.add_column("where")
        for e in services:
            if e.name == "city":
                table.add_row("operations console", f"http://127.0.0.1:{_port(e)}/")
        for e in services:
            table.add_row(f"{e.name} API (OpenAPI docs)", f"http://127.0.0.1:{_port(e)}/docs")
            table.add_row(f"{e.name} metrics", f"http://127.0.0.1:{_port(e)}/metrics")
        for name, port in getattr(self, "processor_metrics", {}).items():
            table.add_row(f"{name} processor metrics", f"http://127.0.0.1:{port}/metrics")
        table.add_row("Kafka bootstrap", os.environ["IOC_KAFKA_BOOTSTRAP_SERVERS"])
        if getattr(self, "state_file", None) is not None:
            table.add_row("addresses for `ioc` commands", str(self.state_file))
        table.add_row("logs", str(self.state_dir / "logs"))
        self.console.print(table)
        self.console.print(
            f"development admin key (also in {self.state_dir / 'dev-admin.key'}):\n  [bold]{key}[/bold]"
        )
        if getattr(self, "console_login", None):
            self.console.print(
                f"console sign-in (password also in {self.state_dir / 'dev-console.password'}): "
                f"[bold]{self.console_login[0]}[/bold] / [bold]{self.console_login[1]}[/bold]"
            )
        city_port = next((_port(e) for e in services if e.name == "city"), 8100)
        self.console.print(
            "try:  .venv/bin/ioc topics   ·   .venv/bin/ioc tail ioc.meter.kpis   ·   "
            f"curl -H 'Authorization: Bearer {key}' http://127.0.0.1:{city_port}/v1/kpis"
        )
        self.console.print("[dim]Ctrl-C stops everything.[/dim]")

    def wait(self) -> None:
        """Supervise: restart a child that exits (with a pause), until Ctrl-C or SIGTERM.

        From here a signal only sets a flag that the loop checks: a KeyboardInterrupt raised wherever the loop
        happens to be (inside a library's call) can be caught and dropped there, and `ioc up` then ran on after
        Ctrl-C (tests/test_make_run.py failed that way now and then)."""
        interrupted = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: interrupted.set())
        while not interrupted.wait(1):
            self.supervise_infrastructure()
            for child in self.children:
                if interrupted.is_set():
                    break
                if not child.alive() and not self._stopping:
                    code = child.proc.returncode if child.proc else None
                    if time.monotonic() - child.started_at < 5:
                        time.sleep(2)  # crash loop: back off
                    child.restarts += 1
                    self.console.print(
                        f"[yellow]●[/yellow] {child.name} exited ({code}); restarting (see {child.log})"
                    )
                    child.start()

    def stop(self) -> None:
        self._stopping = True
        self.console.print("stopping…")
        # simulators first, then services and processors
        for group in (lambda c: c.name.startswith("simulator-"), lambda c: True):
            chosen = [c for c in self.children if group(c)]
            for c in chosen:
                c.terminate()
            deadline = time.monotonic() + 10
            for c in chosen:
                while c.alive() and time.monotonic() < deadline:
                    time.sleep(0.1)
                c.kill()
        from ioc import center_state

        center_state.remove(self.state_dir)
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()
        self.console.print("[green]stopped[/green]")


def _scripted_incidents() -> str:
    """IOC_SIM_INCIDENTS, else one feeder outage in Hoàn Kiếm 5 minutes from now, for 15 minutes."""
    from datetime import UTC, datetime, timedelta

    spec = os.environ.get("IOC_SIM_INCIDENTS")
    if spec:
        return spec
    from shared.simulation import default_incident_area  # HK (2019) or 00070 (2025): the loaded hierarchy's

    start = (datetime.now(UTC) + timedelta(minutes=5)).replace(microsecond=0)
    return f"{default_incident_area()}@{start.isoformat().replace('+00:00', 'Z')}/15"


def _port(entry: registry.ServiceEntry) -> int:
    """The port a service listens on: its settings (IOC_<SERVICE>_PORT), else the registry default."""
    try:
        return int(registry.load(entry.settings)().port) or entry.port
    except Exception:
        return entry.port


def _port_or_free(preferred: int) -> int:
    import socket

    from shared.embedded import free_port

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()
