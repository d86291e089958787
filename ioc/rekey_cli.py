"""``ioc rekey PROCESSOR``: re-key a processor's sources after their partition count was raised.

The procedure and why: docs/operations.md, "Adding partitions"; the mechanics: ``shared/kafka/rekey.py``.
Run it with the processor's workers stopped; then start them again: they rebuild their state from the earliest
retained offsets, each key's history in the partition its key hashes to now.
"""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console

console = Console(stderr=True)


def rekey(
    name: str = typer.Argument(..., help="the processor (its consumer group), e.g. meter-kpi"),
    settle_seconds: float = typer.Option(
        -1.0, help="wait before reading the sources' ends (default: IOC_KAFKA_METADATA_MAX_AGE_MS + 1 s)"
    ),
) -> None:
    """Re-key PROCESSOR's sources after a partition increase; drop its state; rewind its group."""
    from ioc import registry
    from ioc.cli import _kafka, _processor_factories
    from shared.kafka.rekey import RekeyRefused
    from shared.kafka.rekey import rekey as run

    factories = _processor_factories()
    if name not in factories:
        console.print(f"[red]no processor {name}[/red]; known: {', '.join(sorted(factories))}")
        raise typer.Exit(2)
    entry, factory = factories[name]
    topics = list(factory(registry.load(entry.settings)()).topics)
    try:
        copied = asyncio.run(
            run(_kafka(), name, topics, settle_s=None if settle_seconds < 0 else settle_seconds)
        )
    except RekeyRefused as exc:
        console.print(f"[red]refused:[/red] {exc}")
        raise typer.Exit(1) from exc
    for topic, n in copied.items():
        console.print(f"{topic}: {n} records copied to their key's partition")
    console.print(f"{name}: state dropped and group rewound; start its workers to rebuild it")
