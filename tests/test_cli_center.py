"""The CLI finds the running center through the file `ioc up` writes, and says so in one line when none runs."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from ioc import center_state
from shared.embedded import free_port


def test_the_state_file_holds_addresses_only_for_its_owner(tmp_path):
    target = center_state.write(
        tmp_path,
        {
            "kafka_bootstrap_servers": "127.0.0.1:19092",
            "database_url": "postgresql://ioc:s3cret@db.example:5432/ioc",
            "services": {"city": "http://127.0.0.1:8100"},
            "processor_metrics": {"city-kpi": "http://127.0.0.1:9101/metrics"},
        },
    )
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    doc = json.loads(target.read_text())
    assert doc["database_url"] == "postgresql://ioc@db.example:5432/ioc"  # no password in the file
    assert "s3cret" not in target.read_text()
    env = {"IOC_DATABASE_URL": "postgresql://mine@elsewhere/ioc"}
    assert center_state.apply_to_env(tmp_path, env) is not None
    assert env["IOC_KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:19092"
    assert env["IOC_DATABASE_URL"] == "postgresql://mine@elsewhere/ioc"  # the environment overrides the file
    assert center_state.service_url(tmp_path, "city", "x") == "http://127.0.0.1:8100"
    center_state.remove(tmp_path)
    assert not target.exists()


def test_a_file_left_by_a_center_that_is_gone_is_ignored(tmp_path):
    target = center_state.write(tmp_path, {"kafka_bootstrap_servers": "127.0.0.1:1"})
    doc = json.loads(target.read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    doc["pid"] = dead.pid
    target.write_text(json.dumps(doc))
    env: dict[str, str] = {}
    assert center_state.apply_to_env(tmp_path, env) is None and env == {}


def test_a_command_with_nothing_running_prints_a_hint_not_a_traceback(tmp_path):
    env = {
        **os.environ,
        "IOC_STATE_DIR": str(tmp_path),
        "IOC_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/ioc",
    }
    r = subprocess.run(
        [sys.executable, "-m", "ioc", "keys", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert center_state.HINT in r.stderr.replace("\n", " ")
