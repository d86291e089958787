"""A bench worker's result reaches the parent whole (bench.worker.read_result): from its result file, whatever
happened to its RESULT line on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.worker import RESULT_FILE, read_result, result_file

ROOT = Path(__file__).resolve().parents[2]


def test_the_result_file_wins_over_a_stdout_line_cut_short():
    env, path = result_file()
    big = {"quarters": {str(i): [i, i * 0.25] for i in range(20_000)}}  # well over 128 KiB as JSON
    path.write_text(json.dumps(big))
    cut = "RESULT " + json.dumps(big)[:131_052]
    assert read_result(path, cut + "\nsomething else\n") == big
    assert not path.exists()  # read once, then removed
    assert env[RESULT_FILE] == str(path)


def test_without_a_file_the_stdout_line_counts_and_a_cut_one_is_no_result():
    _, path = result_file()
    assert read_result(path, 'noise\nRESULT {"events": 3}\n') == {"events": 3}
    assert read_result(path, 'RESULT {"events": ') is None


def test_a_worker_process_writes_its_result_file():
    env, path = result_file()
    code = (
        "import asyncio, sys; import bench.worker as w;"
        "w.PATHS['echo'] = lambda kafka, **a: asyncio.sleep(0, result={'echo': a});"
        "sys.argv = ['w', 'echo', '{\"bootstrap\": \"127.0.0.1:1\", \"x\": 1}']; w.main()"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert read_result(path, "") == {"echo": {"x": 1}}
