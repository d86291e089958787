"""The `atspm` reference implementation in a venv of its own (its DuckDB/pandas/pyarrow stack stays out of IOC's).

The venv lives in ``IOC_ATSPM_VENV`` (default ``~/.cache/ioc/atspm-<version>``), is created on first use from the
pinned ``atspm-requirements.txt`` and reused afterwards; it is never committed.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
REQUIREMENTS = HERE / "atspm-requirements.txt"
VERSION = next(
    line.split("==")[1].strip()
    for line in REQUIREMENTS.read_text().splitlines()
    if line.startswith("atspm==")
)


def venv_dir() -> Path:
    default = Path.home() / ".cache" / "ioc" / f"atspm-{VERSION}"
    return Path(os.environ.get("IOC_ATSPM_VENV", default))


def atspm_python() -> Path:
    """The venv's python, with the pinned atspm installed (created once; a marker says it is complete)."""
    venv = venv_dir()
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    wanted = REQUIREMENTS.read_text()
    if marker.exists() and marker.read_text() == wanted:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        check=True,
    )
    marker.write_text(wanted)
    return python


def run_atspm(
    raw_csv: Path, config_csv: Path, out_dir: Path, mode: str = ""
) -> dict[str, list[dict[str, str]]]:
    """atspm's measure tables for a log and a configuration: {measure name: rows} (``mode`` see atspm_run.py)."""
    args = [str(raw_csv), str(config_csv), str(out_dir), *([mode] if mode else [])]
    subprocess.run(
        [str(atspm_python()), str(HERE / "atspm_run.py"), *args],
        check=True,
        timeout=300,
    )
    tables = {}
    for path in out_dir.glob("*.csv"):
        with path.open(newline="") as f:
            tables[path.stem] = list(csv.DictReader(f))
    return tables
