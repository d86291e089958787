"""`make run` (`ioc up`) on this machine: the whole center starts, KPIs reach the city layer, Ctrl-C stops it
all and leaves no process behind. Ports are free ones, so it does not clash with a running center."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from shared.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.slow]
SERVICES = ("city", "meter", "traffic", "kiosk", "dossier", "archive")


def test_ioc_up_runs_the_whole_center_and_ctrl_c_leaves_no_orphan(tmp_path):
    ports = {s: free_port() for s in SERVICES}
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("IOC_")
    }  # embedded servers, not the tests'
    env.update({f"IOC_{s.upper()}_PORT": str(p) for s, p in ports.items()})
    env.update(
        IOC_STATE_DIR=str(tmp_path / "var"),
        IOC_EMBEDDED_KAFKA_PORT=str(free_port()),
        IOC_EMBEDDED_PG_PORT=str(free_port()),
        IOC_PROCESSOR_METRICS_BASE_PORT=str(free_port()),
        COLUMNS="200",
    )
    log = open(tmp_path / "ioc-up.log", "w")
    up = subprocess.Popen(
        [sys.executable, "-m", "ioc", "up", "--scale", "0.05"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    descendants: set[int] = set()
    try:
        key_file = tmp_path / "var" / "dev-admin.key"
        deadline = time.monotonic() + 150
        kpis: list = []
        while time.monotonic() < deadline and up.poll() is None:
            time.sleep(2)
            try:
                descendants |= {p.pid for p in psutil.Process(up.pid).children(recursive=True)}
            except psutil.NoSuchProcess:
                break
            if not key_file.exists():
                continue
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{ports['city']}/v1/kpis",
                    headers={"Authorization": f"Bearer {key_file.read_text().strip()}"},
                    timeout=5,
                )
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                kpis = r.json()["items"]
                domains = {k["kpi"].split(".")[0] for k in kpis}
                if {"meter", "kiosk"} <= domains:
                    break
        text = (tmp_path / "ioc-up.log").read_text()
        assert "IOC is running" in text, text[-3000:]
        assert {"meter", "kiosk"} <= {k["kpi"].split(".")[0] for k in kpis}, text[-3000:]
        # the console page and every service's probes answer
        assert httpx.get(f"http://127.0.0.1:{ports['city']}/", timeout=5).status_code == 200
        for s, p in ports.items():
            assert httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=5).status_code == 200, s
    finally:
        up.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            pytest.fail("ioc up did not stop within 60 s of Ctrl-C")
        log.close()
    time.sleep(1)
    alive = [
        p for p in descendants if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == [], f"orphans after Ctrl-C: {[psutil.Process(p).cmdline()[:4] for p in alive]}"
    assert "stopped" in (tmp_path / "ioc-up.log").read_text()
