"""``ioc lag``: each stream processor's consumer lag per source partition, computed from its consumer group.

The lag is the partition's end (its high watermark) minus the offset the processor's group committed: what is
still to be folded. It is read from the group, not from the workers' ``ioc_consumer_lag_records`` gauges, so it
is right whichever worker owns a partition (or when none runs). The end is the high watermark of a fetch
answer, not ListOffsets alone: the embedded broker answers ListOffsets(LATEST) with the start of the last record
batch + 1 after batched produce.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass

import typer

from shared.config import KafkaSettings


@dataclass(frozen=True)
class PartitionLag:
    processor: str
    topic: str
    partition: int
    committed: int | None  # None: the group committed nothing yet for it (it starts from the beginning)
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - (self.committed or 0))


async def group_lag(
    kafka: KafkaSettings, group: str, topics: list[str], timeout: float = 10.0
) -> list[PartitionLag]:
    """Per source partition of ``topics``: what consumer group ``group`` committed and the partition's end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared.kafka.aiokafka_adapter import refresh_metadata

    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(), group_id=group, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    await consumer.start()
    try:
        tps = []
        for topic in topics:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                await refresh_metadata(consumer)
                parts = consumer.partitions_for_topic(topic) or set()
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        committed = {tp: await consumer.committed(tp) for tp in tps}
        consumer.assign(tps)  # manual assignment: never joins the group, so it cannot steal its partitions
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(0, ends.get(tp, 0) - 1))
        deadline = time.monotonic() + timeout
        while any(consumer.highwater(tp) is None for tp in tps) and time.monotonic() < deadline:
            await consumer.getmany(timeout_ms=200, max_records=1)
        return [
            PartitionLag(
                group,
                tp.topic,
                tp.partition,
                committed[tp],
                max(ends.get(tp, 0), consumer.highwater(tp) or 0),
            )
            for tp in tps
        ]
    finally:
        await consumer.stop()


def _processors(names: list[str]) -> dict[str, list[str]]:
    """Processor name → source topics, of every processor the present services define (or those named)."""
    from ioc import registry

    found: dict[str, list[str]] = {}
    for entry in registry.present_services():
        if not registry.available(entry.processors):
            continue
        settings = registry.load(entry.settings)()
        for factory in registry.load(entry.processors):
            processor = factory(settings)
            found[processor.name] = list(processor.topics)
    if names:
        unknown = sorted(set(names) - set(found))
        if unknown:
            raise typer.BadParameter(f"no processor {', '.join(unknown)}; known: {', '.join(sorted(found))}")
        found = {n: found[n] for n in names}
    return found


def lag(
    processor: list[str] = typer.Option([], "--processor", "-p", help="only this processor (repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Each stream processor's lag per source partition (end of the partition minus its group's commit)."""
    from rich.console import Console
    from rich.table import Table

    processors = _processors(processor)
    kafka = KafkaSettings()

    async def gather() -> list[PartitionLag]:
        rows: list[PartitionLag] = []
        for name, topics in sorted(processors.items()):
            rows += await group_lag(kafka, name, topics)
        return rows

    rows = asyncio.run(gather())
    if as_json:
        typer.echo(json.dumps([{**asdict(r), "lag": r.lag} for r in rows], indent=1))
        return
    table = Table(title="Consumer lag per partition")
    for col in ("processor", "topic", "partition", "committed", "end", "lag"):
        table.add_column(col, justify="right" if col in ("partition", "committed", "end", "lag") else "left")
    for r in rows:
        committed = "-" if r.committed is None else str(r.committed)
        table.add_row(r.processor, r.topic, str(r.partition), committed, str(r.end), str(r.lag))
    Console().print(table)
    total: dict[str, int] = {}
    for r in rows:
        total[r.processor] = total.get(r.processor, 0) + r.lag
    for name, n in sorted(total.items()):
        typer.echo(f"{name}: {n} records behind")
