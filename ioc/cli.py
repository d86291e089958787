"""``ioc``: run and inspect the Intelligent Operations Center.

ioc up                      the whole center on this machine (embedded broker + PostgreSQL unless
                            IOC_KAFKA_BOOTSTRAP_SERVERS / IOC_DATABASE_URL point elsewhere)
ioc topics                  the topic catalogue
ioc tail TOPIC [--grep X]   decoded events, live
ioc produce TYPE JSON       publish one event (validated)
ioc keys issue|revoke|list  API keys of principals
ioc serve SERVICE           one HTTP service
ioc process NAME            one stream-processor worker
ioc simulate DOMAIN         one domain's simulator
ioc contracts export|check  JSON Schemas + AsyncAPI under contracts/
ioc replay FILE             feed a traffic hi-res log through the traffic service
ioc alarms stats            alarm rates against the EEMUA 191 budget, chattering and most frequent alarms
ioc operators add|disable|list  console accounts (sign-in and roles)

Commands find the running center through the file `ioc up` writes (var/run/center.json); IOC_* environment
variables override it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from ioc import registry

if TYPE_CHECKING:
    from shared.stream.processor import StreamProcessor

app = typer.Typer(
    help="IOC: the event platform of Hanoi's Intelligent Operations Center.",
    no_args_is_help=True,
    add_completion=False,
)
keys_app = typer.Typer(help="Principals and their API keys.", no_args_is_help=True)
contracts_app = typer.Typer(help="Exported event contracts (JSON Schema, AsyncAPI).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(contracts_app, name="contracts")
app.add_typer(__import__("ioc.alarms_cli", fromlist=["app"]).app, name="alarms")
app.add_typer(__import__("ioc.operators_cli", fromlist=["app"]).app, name="operators")  # console accounts
app.command("lag")(__import__("ioc.lag", fromlist=["lag"]).lag)  # `ioc lag`: per-partition lag (ioc/lag.py)
app.command("rekey")(__import__("ioc.rekey_cli", fromlist=["rekey"]).rekey)  # after adding partitions
console = Console(stderr=True)
ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("IOC_STATE_DIR", ROOT / "var"))
DEV_KEY_FILE = STATE_DIR / "dev-admin.key"


def _kafka():
    from shared.config import KafkaSettings

    return KafkaSettings()


def _db():
    from shared.config import DatabaseSettings

    return DatabaseSettings()


# Catalogue -------------------------------------------------------------------------------------------------
@app.command()
def topics(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """The topic catalogue: partitions, key, retention, owner, event types."""
    from shared.contracts import EVENT_TYPES, TOPICS

    rows: list[dict[str, Any]] = []
    for t in sorted(TOPICS.values(), key=lambda t: t.name):
        types = sorted(et.type for et in EVENT_TYPES.values() if et.topic == t.name)
        retention = (
            "compacted"
            if t.compacted
            else (f"{t.retention_ms // 86_400_000} d" if t.retention_ms else "forever")
        )
        rows.append(
            {
                "topic": t.name,
                "partitions": t.partitions,
                "key": t.key,
                "retention": retention,
                "owner": t.owner,
                "types": types,
                "description": t.description,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table(title="IOC topics", show_lines=False)
    for col in ("topic", "partitions", "key", "retention", "owner", "event types"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            r["topic"], str(r["partitions"]), r["key"], r["retention"], r["owner"], "\n".join(r["types"])
        )
    Console().print(table)


@app.command()
def tail(
    topic: str,
    grep: str = typer.Option("", "--grep", "-g", help="only events whose JSON contains this text"),
    from_beginning: bool = typer.Option(False, "--from-beginning", help="start at the oldest event"),
    count: int = typer.Option(0, "--count", "-n", help="stop after this many events (0: follow)"),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
) -> None:
    """Decoded events of TOPIC, live (Ctrl-C stops)."""
    asyncio.run(_tail(topic, grep, from_beginning, count, as_json))


async def _tail(topic: str, grep: str, from_beginning: bool, count: int, as_json: bool) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared.contracts.cloudevents import EventDecodeError, decode
    from shared.kafka.aiokafka_adapter import refresh_metadata

    out = Console()
    consumer = AIOKafkaConsumer(
        **_kafka().client_kwargs(), group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()  # (a consumer that failed to start still holds its client)
        raise
    seen = 0
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await refresh_metadata(consumer)
            parts = consumer.partitions_for_topic(topic)
        if not parts:
            console.print(f"[red]no topic {topic!r}[/red] (see `ioc topics`)")
            raise typer.Exit(2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                for r in recs:
                    try:
                        ev = decode(r)
                        doc = {
                            "type": ev.type,
                            "time": ev.time,
                            "key": ev.key,
                            "source": ev.source,
                            "data": ev.data,
                        }
                    except EventDecodeError as exc:
                        doc = {
                            "undecodable": exc.reason,
                            "key": (r.key or b"").decode(errors="replace"),
                            "partition": r.partition,
                            "offset": r.offset,
                        }
                    line = json.dumps(doc, ensure_ascii=False, default=str)
                    if grep and grep not in line:
                        continue
                    if as_json:
                        print(line, flush=True)
                    else:
                        out.print(
                            f"[dim]{doc.get('time', '')}[/dim] [cyan]{doc.get('type', 'undecodable')}[/cyan] "
                            f"[bold]{doc.get('key')}[/bold] {json.dumps(doc.get('data', doc), ensure_ascii=False, default=str)}",
                            highlight=False,
                            soft_wrap=True,
                        )
                    seen += 1
                    if count and seen >= count:
                        return
    finally:
        await consumer.stop()


@app.command()
def produce(
    event_type: str,
    payload: str = typer.Argument(..., help="JSON payload, or @file.json"),
    source: str = typer.Option("/ioc/cli", help="CloudEvents source"),
) -> None:
    """Validate and publish one event of EVENT_TYPE (e.g. for testing a subscriber)."""
    from shared.contracts import EVENT_TYPES
    from shared.contracts.cloudevents import encode
    from shared.kafka import EventPublisher

    et = EVENT_TYPES.get(event_type)
    if et is None:
        console.print(f"[red]unknown event type {event_type}[/red]; known: {', '.join(sorted(EVENT_TYPES))}")
        raise typer.Exit(2)
    raw = Path(payload[1:]).read_text() if payload.startswith("@") else payload
    model = et.model.model_validate_json(raw)

    async def go():
        pub = EventPublisher(_kafka(), client_id="ioc-cli")
        try:
            await pub.publish([encode(et, model, source=source)])
        finally:
            await pub.stop()

    asyncio.run(go())
    console.print(f"[green]published[/green] {event_type} to {et.topic}")


# Keys ------------------------------------------------------------------------------------------------------
def _actor() -> str:
    """Who ran the command, for the audit trail (IOC_ACTOR overrides the OS user, e.g. behind sudo)."""
    import getpass

    return f"cli:{os.environ.get('IOC_ACTOR') or os.environ.get('SUDO_USER') or getpass.getuser()}"


async def _keystore():
    from shared.auth import PLATFORM_SCHEMA, KeyStore
    from shared.db import apply_migrations, create_pool
    from shared.http import PLATFORM_MIGRATIONS

    db = _db()
    db.pool_min, db.pool_max = 1, 2
    pool = await create_pool(db)
    await apply_migrations(pool, PLATFORM_SCHEMA, PLATFORM_MIGRATIONS)
    return pool, KeyStore(pool, cache_seconds=0)


@keys_app.command("issue")
def keys_issue(
    principal: str,
    scopes: str | None = typer.Option(
        None, help="comma-separated scopes, e.g. meter:ingest or '*' (required for a new principal)"
    ),
    kind: str | None = typer.Option(
        None, help="admin, agency, gateway, operator, service (a new principal: gateway by default)"
    ),
    attributes: str | None = typer.Option(
        None, help='JSON attributes, e.g. {"agency": "SOTP"} or {"kiosks": ["K1"]}'
    ),
    name: str = typer.Option("", help="display name"),
    change_principal: bool = typer.Option(
        False,
        "--change-principal",
        help="allow changing an existing principal's kind, scopes or attributes (audited with before/after)",
    ),
) -> None:
    """Print a new API key for a principal (shown once), creating the principal if it does not exist.

    An existing principal keeps its kind, scopes and attributes: options that would change them are refused
    unless --change-principal is given, and then the change is audited (``principal.changed``)."""

    async def go():
        pool, store = await _keystore()
        try:
            from shared.auth import record_audit

            existing = await store.get_principal(principal)
            wanted_scopes = (
                None if scopes is None else sorted({s.strip() for s in scopes.split(",") if s.strip()})
            )
            wanted_attrs = None if attributes is None else json.loads(attributes)
            if existing is None:
                if not wanted_scopes:
                    console.print("[red]a new principal needs --scopes[/red]")
                    raise typer.Exit(2)
                new_kind = kind or "gateway"
                await store.upsert_principal(
                    principal, new_kind, name or principal, wanted_scopes, wanted_attrs
                )
                detail = {"scopes": wanted_scopes, "kind": new_kind, "created": True}
            else:
                after = {
                    "kind": kind if kind is not None else existing["kind"],
                    "scopes": wanted_scopes if wanted_scopes is not None else existing["scopes"],
                    "attributes": wanted_attrs if wanted_attrs is not None else existing["attributes"],
                    "disabled": False,
                }
                before = {k: existing[k] for k in after}
                changed = sorted(k for k in after if after[k] != before[k])
                if changed and not change_principal:
                    console.print(
                        f"[red]{principal} exists as a {existing['kind']} with scopes "
                        f"{','.join(existing['scopes'])}; this would change its {', '.join(changed)}. "
                        "Issue without those options to keep it, or add --change-principal.[/red]"
                    )
                    raise typer.Exit(2)
                if changed:
                    await store.upsert_principal(
                        principal,
                        after["kind"],
                        name or existing["display_name"],
                        after["scopes"],
                        after["attributes"],
                    )
                    await record_audit(
                        pool,
                        principal=_actor(),
                        service="cli",
                        action="principal.changed",
                        target=principal,
                        detail={
                            "before": {k: before[k] for k in changed},
                            "after": {k: after[k] for k in changed},
                        },
                    )
                detail = {"scopes": after["scopes"], "kind": after["kind"], "created": False}
            key = await store.issue_key(principal)
            await record_audit(
                pool, principal=_actor(), service="cli", action="key.issued", target=principal, detail=detail
            )
            return key
        finally:
            await pool.close()

    print(asyncio.run(go()))


@keys_app.command("revoke")
def keys_revoke(
    key_id: str = typer.Argument(..., help="the key id (the part after ioc_ and before the next _)"),
) -> None:
    """Revoke an API key: it answers 401 from then on."""

    async def go():
        pool, store = await _keystore()
        try:
            ok = await store.revoke_key(key_id)
            if ok:
                from shared.auth import record_audit

                await record_audit(
                    pool, principal=_actor(), service="cli", action="key.revoked", target=key_id
                )
            return ok
        finally:
            await pool.close()

    if not asyncio.run(go()):
        console.print(f"[red]no active key {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"[green]revoked[/green] {key_id}")


@keys_app.command("list")
def keys_list() -> None:
    """Principals and their keys (ids only, never secrets)."""

    async def go():
        pool, _ = await _keystore()
        try:
            return await pool.fetch(
                "SELECT p.id, p.kind, p.scopes, k.key_id, k.created_at, k.revoked_at FROM platform.principals p "
                "LEFT JOIN platform.api_keys k ON k.principal_id = p.id ORDER BY p.id, k.created_at"
            )
        finally:
            await pool.close()

    table = Table(title="principals and keys")
    for col in ("principal", "kind", "scopes", "key id", "created", "revoked"):
        table.add_column(col)
    for r in asyncio.run(go()):
        table.add_row(
            r["id"],
            r["kind"],
            ",".join(r["scopes"]),
            r["key_id"] or "",
            str(r["created_at"] or ""),
            str(r["revoked_at"] or ""),
        )
    Console().print(table)


# Running pieces --------------------------------------------------------------------------------------------
@app.command()
def serve(
    service: str,
    port: int = typer.Option(0, help="port (default: the service's settings)"),
    host: str = typer.Option("", help="address (default: the service's settings, 127.0.0.1)"),
) -> None:
    """Run one HTTP service."""
    import uvicorn

    entry = registry.service(service)
    settings = registry.load(entry.settings)()
    settings.port = port or settings.port or entry.port
    settings.host = host or settings.host
    application = registry.load(entry.app_factory)(settings)
    from shared.server import uvicorn_options

    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        lifespan="on",
        **uvicorn_options(),  # header/body/keep-alive/shutdown timeouts (shared/server.py)
    )


def _processor_factories() -> dict[str, tuple[registry.ServiceEntry, Callable[[Any], StreamProcessor]]]:
    found = {}
    for entry in registry.present_services():
        if registry.available(entry.processors):
            for factory in registry.load(entry.processors):
                settings = registry.load(entry.settings)()
                processor = factory(settings)
                found[processor.name] = (entry, factory)
    return found


@app.command()
def process(
    name: str,
    driver: str = typer.Option("faust", help="faust, aiokafka or librdkafka"),
    metrics_port: int = typer.Option(
        int(os.environ.get("IOC_METRICS_PORT", "0")), help="serve /metrics on this port (0: none)"
    ),
) -> None:
    """Run one stream-processor worker (consumer group = NAME; run several to scale out)."""
    from shared.logging import configure_logging
    from shared.stream.runtime import ProcessorRuntime

    factories = _processor_factories()
    if name not in factories:
        console.print(f"[red]no processor {name}[/red]; known: {', '.join(sorted(factories))}")
        raise typer.Exit(2)
    entry, factory = factories[name]
    configure_logging(name, os.environ.get("IOC_LOG_LEVEL", "INFO"))
    if metrics_port:  # /metrics, and /livez from the event loop's heartbeat (shared.stream.health)
        from shared.stream.health import start_worker_http_server

        start_worker_http_server(
            metrics_port, addr="127.0.0.1" if os.environ.get("IOC_METRICS_LOCAL", "1") == "1" else "0.0.0.0"
        )
    processor = factory(registry.load(entry.settings)())

    async def go():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with ProcessorRuntime(processor, _kafka(), driver=driver).running():
            await stop.wait()

    asyncio.run(go())


@app.command()
def simulate(
    domain: str,
    url: str = typer.Option("", help="service base URL (default: local)"),
    key: str = typer.Option("", envvar="IOC_API_KEY", help="API key (default: the dev admin key)"),
    scale: float = typer.Option(1.0, help="fleet size multiplier"),
) -> None:
    """Run one domain's simulator against its service's HTTP API."""
    entry = registry.service(domain)
    simulator = entry.simulator
    if simulator is None or not registry.available(simulator):
        console.print(f"[red]no simulator for {domain}[/red]")
        raise typer.Exit(2)
    run = registry.load(simulator)
    api_key = key or (DEV_KEY_FILE.read_text().strip() if DEV_KEY_FILE.exists() else "")

    async def go():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(url or f"http://127.0.0.1:{entry.port}", api_key, stop=stop, scale=scale)

    asyncio.run(go())


@app.command()
def replay(
    path: Path,
    url: str = typer.Option("http://127.0.0.1:8102", help="traffic service URL"),
    key: str = typer.Option("", envvar="IOC_API_KEY", help="API key (default: the dev admin key)"),
    speed: float = typer.Option(
        0.0, help="1 = recorded speed, 10 = ten times faster, 0 = as fast as possible"
    ),
    tz: str = typer.Option("Asia/Ho_Chi_Minh", help="time zone of timestamps without a UTC offset"),
    backfill: bool = typer.Option(
        None, "--backfill/--live", help="send as history (default unless --speed is given)"
    ),
) -> None:
    """Feed a signal controller hi-res log (ATSPM CSV layouts) through the traffic service's ingest path.

    Prints the accepted and refused counts by reason; exits 1 when nothing was accepted."""
    if not registry.available("services.traffic.replay:replay_file"):
        console.print("[red]the traffic service is not installed[/red]")
        raise typer.Exit(2)
    replay_file = registry.load("services.traffic.replay:replay_file")
    api_key = key or (DEV_KEY_FILE.read_text().strip() if DEV_KEY_FILE.exists() else "")
    as_history = (not speed) if backfill is None else backfill
    result = replay_file(path, url, api_key, speed=speed or None, tz=tz, backfill=as_history)
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    console.print(f"[{'green' if result.accepted else 'red'}]replayed[/] {result.summary()}")
    if not result.accepted:
        raise typer.Exit(1)


# Contracts -------------------------------------------------------------------------------------------------
@contracts_app.command("export")
def contracts_export(root: Path = typer.Option(ROOT / "contracts")) -> None:
    """Write JSON Schemas and the AsyncAPI document under contracts/."""
    from shared.contracts.export import export

    changed = export(root)
    console.print(f"[green]{len(changed)} file(s) updated[/green]" if changed else "contracts up to date")
    for c in changed:
        console.print(f"  {c}")


@contracts_app.command("check")
def contracts_check(root: Path = typer.Option(ROOT / "contracts")) -> None:
    """Fail when committed contracts are stale or a schema change is not backward compatible."""
    from shared.contracts.compat import check_backward
    from shared.contracts.export import render_all

    problems = []
    for rel, content in render_all().items():
        path = root / rel
        if not path.exists():
            problems.append(f"{rel}: not exported (run `make contracts`)")
            continue
        if rel.endswith(".json"):
            old, new = json.loads(path.read_text()), json.loads(content)
            problems += [f"{rel}: {p}" for p in check_backward(old, new)]
        if path.read_bytes() != content:
            problems.append(f"{rel}: stale (run `make contracts`)")
    for p in problems:
        console.print(f"[red]{p}[/red]")
    if problems:
        raise typer.Exit(1)
    console.print("[green]contracts fresh and backward compatible[/green]")


# The whole center ------------------------------------------------------------------------------------------
@app.command()
def up(
    simulators: bool = typer.Option(True, help="start the domain simulators"),
    scale: float = typer.Option(0.2, help="simulator fleet size multiplier"),
    fresh: bool = typer.Option(False, help="start from an empty database"),
) -> None:
    """Start the whole center on this machine and print its URLs. Ctrl-C stops everything."""
    from ioc.runner import Center

    center = Center(state_dir=STATE_DIR, simulators=simulators, scale=scale, fresh=fresh, console=console)
    try:
        center.start()
        center.wait()
    except KeyboardInterrupt:
        pass
    finally:
        center.stop()


# The event archive (ioc archive, ioc query, ioc replay-archive): commands in their own module.
from ioc.archive_cli import register as _register_archive  # noqa: E402

_register_archive(app)


def main() -> None:
    # Every command but `up` finds the running center by itself (environment variables still override).
    from ioc import center_state

    if sys.argv[1:2] != ["up"]:
        center_state.apply_to_env(STATE_DIR)
    if sys.argv[1:2] in (["tail"], ["produce"]):
        import logging

        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the hint below says it in one line
    try:
        app()
    except Exception as exc:
        if not _nothing_listens(exc):
            raise
        console.print(f"[red]{center_state.HINT}[/red] ({type(exc).__name__})", soft_wrap=True)
        raise SystemExit(1) from None


def _nothing_listens(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) says the broker, database or a service is not there."""
    names = {"KafkaConnectionError", "ConnectError", "CannotConnectNowError"}
    seen: BaseException | None = exc
    while seen is not None:
        if (
            type(seen).__name__ in names
            or isinstance(seen, ConnectionError)
            or (isinstance(seen, OSError) and "Connect call failed" in str(seen))
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


if __name__ == "__main__":
    main()

_ = (subprocess, sys, time)
