"""``ioc query`` and ``ioc replay-archive``: clear errors for bad input (in process, typer's runner)."""

from __future__ import annotations

from typer.testing import CliRunner

from ioc.cli import app
from services.archive.store import ArchiveStore
from services.archive.worker import write_records
from shared.contracts.cloudevents import encode
from tests.archive.helpers import READING, as_records


def test_replay_archive_refuses_a_bad_range(tmp_path, monkeypatch):
    monkeypatch.setenv("IOC_ARCHIVE_ROOT", str(tmp_path))
    runner = CliRunner()
    r = runner.invoke(
        app, ["replay-archive", "--topic", "ioc.meter.readings", "--from", "yesterday", "--to", "2026-11-02"]
    )
    assert r.exit_code == 2 and "--from: not an ISO 8601" in r.output
    r = runner.invoke(
        app, ["replay-archive", "--topic", "ioc.meter.readings", "--from", "2026-11-02", "--to", "2026-11-01"]
    )
    assert r.exit_code == 2 and "--to must be after --from" in r.output


def test_query_answers_and_says_what_is_wrong_with_bad_sql(tmp_path, monkeypatch):
    monkeypatch.setenv("IOC_ARCHIVE_ROOT", str(tmp_path))
    ev = encode(READING, READING.examples[0], source="/t", time="2026-11-01T00:15:00Z")
    write_records(ArchiveStore(str(tmp_path)), "t", "e1", as_records([ev]))
    runner = CliRunner()
    r = runner.invoke(app, ["query", "--format", "json", "SELECT meter_id, value FROM meter_readings"])
    assert r.exit_code == 0 and '"meter_id":"MTR-000001"' in r.output
    r = runner.invoke(app, ["query", "SELECT * FROM no_such_view"])
    assert r.exit_code == 1 and "no_such_view" in r.output and "views: meter_readings" in r.output
