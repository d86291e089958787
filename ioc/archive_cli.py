"""``ioc archive run|maintain``, ``ioc query`` and ``ioc replay-archive``: the event archive from the shell."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime

import typer
from rich.console import Console

archive_app = typer.Typer(help="The event archive (Parquet): archiver worker, compaction, retention.")
console = Console(stderr=True)


def _settings():
    from services.archive.settings import ArchiveSettings

    return ArchiveSettings()


def _store(settings):
    from services.archive.store import ArchiveStore

    return ArchiveStore(settings.root, settings.storage_options)


def _instant(text: str, option: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        console.print(f"[red]{option}: not an ISO 8601 date or date-time: {text!r}[/red]")
        raise typer.Exit(2) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@archive_app.command("run")
def archive_run(
    metrics_port: int = typer.Option(
        int(os.environ.get("IOC_METRICS_PORT", "0")), help="serve /metrics on this port (0: none)"
    ),
) -> None:
    """Run the archiver: every archived topic into Parquet, exactly once, until SIGTERM."""
    from services.archive.worker import run
    from shared.logging import configure_logging
    from shared.stream.health import HEARTBEAT, start_worker_http_server

    configure_logging("archiver", os.environ.get("IOC_LOG_LEVEL", "INFO"))
    if metrics_port:
        # /metrics and /livez; /livez fails when the loop stops beating (Parquet and S3 work runs in threads)
        local = os.environ.get("IOC_METRICS_LOCAL", "1") == "1"
        start_worker_http_server(metrics_port, addr="127.0.0.1" if local else "0.0.0.0")

    async def go():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        HEARTBEAT.start()
        try:
            await run(_settings(), stop)
        finally:
            await HEARTBEAT.stop()

    asyncio.run(go())


@archive_app.command("serve")
def archive_serve(port: int = typer.Option(0, help="port (default: IOC_ARCHIVE_PORT, 8105)")) -> None:
    """Run the archive's extracts API (authenticated, bounded CSV/Parquet extracts)."""
    import uvicorn

    from services.archive.app import create_app

    settings = _settings()
    settings.port = port or settings.port
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        lifespan="on",
    )


@archive_app.command("maintain")
def archive_maintain() -> None:
    """Compact small files and expire dates past retention once (the archiver also does it periodically;
    run this only while no archiver writes the same archive)."""
    from services.archive.worker import Archiver

    archiver = Archiver(_settings())
    archiver.state = archiver.store.recover(archiver.settings.name)
    console.print(archiver.maintain(datetime.now(UTC).date()))


def query(
    sql: str = typer.Argument(
        ..., help="SQL over the archive's views, e.g. SELECT count(*) FROM meter_readings"
    ),
    output: str = typer.Option("table", "--format", help="table, csv or json"),
) -> None:
    """Run SQL over the archive (DuckDB in process; one view per topic: ioc.meter.readings → meter_readings)."""
    from services.archive.query import connect, view_name

    store = _store(_settings())
    con = connect(store)
    try:
        table = con.sql(sql).to_arrow_table()
    except Exception as exc:  # duckdb's errors say what is wrong with the SQL
        views = ", ".join(view_name(t) for t in store.topics()) or "none yet"
        console.print(f"[red]{type(exc).__name__}: {exc}[/red]\nviews: {views}")
        raise typer.Exit(1) from None
    finally:
        con.close()
    if output == "csv":
        import sys

        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sys.stdout.buffer)
    elif output == "json":
        import orjson

        for row in table.to_pylist():
            print(orjson.dumps(row, default=str).decode())
    else:
        from rich.table import Table

        out = Table(show_header=True)
        for name in table.column_names:
            out.add_column(name)
        for row in table.to_pylist():
            out.add_row(*("" if v is None else str(v) for v in row.values()))
        Console().print(out)


def replay_archive(
    topic: str = typer.Option(..., "--topic", help="the topic to replay, e.g. ioc.meter.readings"),
    start: str = typer.Option(..., "--from", help="event time from (inclusive), ISO 8601, UTC if no offset"),
    end: str = typer.Option(..., "--to", help="event time to (exclusive)"),
) -> None:
    """Publish archived events of a topic in a time range to the topic again (marked, never re-archived)."""
    from services.archive.replay import replay

    settings = _settings()
    first, last = _instant(start, "--from"), _instant(end, "--to")
    if last <= first:
        console.print("[red]--to must be after --from[/red]")
        raise typer.Exit(2)
    sent = asyncio.run(replay(_store(settings), settings.kafka, topic, first, last))
    console.print(f"[green]replayed[/green] {sent} event(s) to {topic}")


def register(app: typer.Typer) -> None:
    """Add the archive's commands to the ``ioc`` CLI."""
    app.add_typer(archive_app, name="archive")
    app.command("query")(query)
    app.command("replay-archive")(replay_archive)


# ``ioc up`` ------------------------------------------------------------------------------------------------
def archive_enabled() -> bool:
    return _settings().enabled


def restore_before_processors(out: Console) -> None:
    """Replay the day from the archive into the (empty) embedded broker, before any processor starts, so the
    processors compute the day's windows again instead of starting them from nothing."""
    from ioc import registry
    from services.archive.replay import restore

    settings = _settings()
    if not settings.enabled:
        return
    topics: set[str] = set()
    for entry in registry.present_services():
        if entry.processors and registry.available(entry.processors):
            for factory in registry.load(entry.processors):
                topics.update(factory(registry.load(entry.settings)()).topics)
    try:
        counts = asyncio.run(restore(settings, settings.kafka, sorted(topics), datetime.now(UTC)))
    except Exception as exc:  # a center without its history still runs
        out.print(
            f"[yellow]●[/yellow] archive restore failed ({type(exc).__name__}: {exc}); starting without it"
        )
        return
    total = sum(counts.values())
    out.print(f"[green]●[/green] restored {total} event(s) of today from the archive ({settings.root})")
