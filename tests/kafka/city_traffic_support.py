"""``city-kpi`` and ``traffic-signals`` on Apache Kafka: workers, their inputs as published events, a ledger of
what was published, and a ``read_committed`` reader of their outputs.

The inputs are published straight to the processors' source topics (as the domain processors and the traffic
ingest publish them), with ids unique to the test, so that the outputs of the test's own inputs are told apart
from the rest of the session's on the shared topics:

- ``city-kpi``: partial KPI observations of a KPI id of the test's own (``kiosk.scale_<uid>``, no definition:
  partials are summed) for several districts, one partial per (district, source partition) and round, each
  replacing the previous one of its source partition. The city's merged numerator of a district must equal the
  sum of the last partial published per source partition.
- ``traffic-signals``: per controller of the test, its registry entry, then one chunk of hi-res events per
  15-minute bin. A bin's ``IntersectionMeasuresComputed.events`` must equal the events sent for it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.config import KafkaSettings
from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import EncodedEvent, EventDecodeError, ReceivedEvent, decode, encode
from shared.contracts.common import kpi_observed_payload
from shared.contracts.kiosk import KPI_EVENT as KIOSK_KPI_EVENT
from shared.contracts.traffic import HiResEventsLogged, IntersectionConfigured
from shared.kafka import EventPublisher
from tests.reliability.harness import Worker, uid

WORKER_SCRIPT = str(Path(__file__).with_name("stream_worker.py"))
CITY_KPIS_TOPIC = "ioc.city.kpis"
MEASURES_TOPIC = "ioc.traffic.measures"
#: the source partitions a domain's partials come from (the city sums one partial per source partition)
SOURCE_PARTITIONS = 3


def worker(kafka: KafkaSettings, processor: str, name: str, log_path: Path, driver: str = "faust") -> Worker:
    """A ``city`` or ``traffic`` worker process (not started) of the processor named ``name``."""
    w = Worker(kafka.bootstrap_servers, name, "", max_records=500, log_path=log_path, driver=driver)
    w.args[1] = WORKER_SCRIPT
    w.args[w.args.index("--processor") + 1] = processor
    return w


async def read_committed(
    kafka: KafkaSettings, topic: str, where: Callable[[ReceivedEvent], bool], timeout: float = 30.0
) -> list[ReceivedEvent]:
    """The events of ``topic`` matching ``where`` up to its last stable offset, as ``read_committed`` readers
    (every consumer of a processor's outputs) see them: records of aborted transactions left out."""
    consumer = AIOKafkaConsumer(
        **kafka.client_kwargs(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=100,
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        found: list[ReceivedEvent] = []
        idle = 0
        async with asyncio.timeout(timeout):
            # (a transactional log may end in a control record no fetch returns: a few idle fetches end it too)
            while idle < 10 and [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                batch = await consumer.getmany(timeout_ms=200)
                idle = 0 if batch else idle + 1
                for tp, records in batch.items():
                    for r in records:
                        if r.offset >= end[tp]:
                            continue
                        try:
                            event = decode(r)
                        except EventDecodeError:
                            continue
                        if where(event):
                            found.append(event)
        return found
    finally:
        await consumer.stop()


async def wait_for(
    read: Callable[[], object], expected: object, *, timeout: float = 120.0, settle_s: float = 1.5
) -> object:
    """Read until the result equals ``expected`` and still does ``settle_s`` later (an output published after
    it, e.g. a double count, would change it); the last result otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout
    got: object = None
    while asyncio.get_running_loop().time() < deadline:
        got = await read()  # type: ignore[misc]
        if got == expected:
            await asyncio.sleep(settle_s)
            return await read()  # type: ignore[misc]
        await asyncio.sleep(0.5)
    return got


# city-kpi -----------------------------------------------------------------------------------------------------
@dataclass
class CityLedger:
    """Partials published: the last numerator per (district, source partition), and how many were sent."""

    kpi: str = field(default_factory=lambda: f"kiosk.scale_{uid()}")
    window_start: str = field(
        default_factory=lambda: (
            (datetime.now(UTC) - timedelta(hours=1))
            .replace(minute=0, second=0, microsecond=0)
            .isoformat()
            .replace("+00:00", "Z")
        )
    )
    last: dict[tuple[str, int], float] = field(default_factory=dict)
    sent: int = 0
    rounds: int = 0

    def expected(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for (district, _), n in self.last.items():
            out[district] += n
        return dict(out)


async def publish_city_round(publisher: EventPublisher, ledger: CityLedger, districts: list[str]) -> None:
    """One partial per (district, source partition), numerators growing with the round (a window filling)."""
    ledger.rounds += 1
    observed = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    events: list[EncodedEvent] = []
    for i, district in enumerate(districts):
        for sp in range(SOURCE_PARTITIONS):
            n = float(ledger.rounds * 10 + i + sp)
            payload = kpi_observed_payload(
                ledger.kpi,
                "district",
                district,
                ledger.window_start,
                3600,
                None,
                n,
                None,
                "sessions",
                sp,
                observed,
            )
            events.append(encode(KIOSK_KPI_EVENT, payload, source="/ioc/test/kiosk-partials"))
            ledger.last[(district, sp)] = n
    await publisher.publish(events)
    ledger.sent += len(events)


async def city_totals(kafka: KafkaSettings, ledger: CityLedger) -> dict[str, float]:
    """The city's merged numerator per district for the ledger's KPI: the last one published per district."""
    events = await read_committed(
        kafka,
        CITY_KPIS_TOPIC,
        lambda e: e.data.get("kpi") == ledger.kpi and e.data.get("scope_level") == "district",
    )
    return {e.data["scope_code"]: float(e.data["numerator"]) for e in events}


# traffic-signals ----------------------------------------------------------------------------------------------
REGISTRY = {
    "phases": [2, 4],
    "detectors": [{"channel": 9, "phase": 4, "function": "count"}],
}
BIN = timedelta(minutes=15)
EVENTS_PER_BIN = 6


@dataclass
class TrafficLedger:
    """Hi-res events sent per (intersection, bin start); bins closed by a later chunk are the ones expected."""

    t0: datetime = field(
        default_factory=lambda: (datetime.now(UTC) - timedelta(days=3)).replace(
            minute=0, second=0, microsecond=0
        )
    )
    prefix: str = field(default_factory=uid)
    sent: dict[tuple[str, str], int] = field(default_factory=dict)
    bins: int = 0

    def controllers(self, n: int) -> list[tuple[str, str]]:
        return [(f"TC-{self.prefix}-{i}", f"TI-{self.prefix}-{i}") for i in range(n)]

    def expected(self, closed_bins: int) -> dict[tuple[str, str], int]:
        starts = {_bin_start(self.t0 + b * BIN) for b in range(closed_bins)}
        return {k: v for k, v in self.sent.items() if k[1] in starts}


def _bin_start(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


_REGISTRY_TYPE = event_type_of(IntersectionConfigured)
_HIRES_TYPE = event_type_of(HiResEventsLogged)


async def publish_registry(
    publisher: EventPublisher, controllers: list[tuple[str, str]], district: str
) -> None:
    await publisher.publish(
        [
            encode(
                _REGISTRY_TYPE,
                {
                    "intersection_id": iid,
                    "controller_id": cid,
                    "name": "Ngã tư thử nghiệm",
                    "district": district,
                    "lat": 21.03,
                    "lon": 105.82,
                    "revision": 1,
                    **REGISTRY,
                },
                source="/ioc/test/traffic-registry",
            )
            for cid, iid in controllers
        ]
    )


def _chunk(cid: str, iid: str, district: str, start: datetime, n: int) -> EncodedEvent:
    """``n`` events from ``start`` + 1 s: detector 9 on and off, alternately (each one event of the bin)."""
    events = [
        {
            "t": (start + timedelta(seconds=1 + 2 * i)).isoformat(),
            "code": 82 if i % 2 == 0 else 81,
            "param": 9,
        }
        for i in range(n)
    ]
    payload = {"controller_id": cid, "intersection_id": iid, "district": district, "events": events}
    return encode(_HIRES_TYPE, payload, source="/ioc/test/traffic-hires")


async def publish_traffic_bin(
    publisher: EventPublisher, ledger: TrafficLedger, controllers: list[tuple[str, str]], district: str
) -> None:
    """The next bin's chunk for every controller (its arrival closes the bin two before it)."""
    start = ledger.t0 + ledger.bins * BIN
    await publisher.publish([_chunk(cid, iid, district, start, EVENTS_PER_BIN) for cid, iid in controllers])
    for _, iid in controllers:
        ledger.sent[(iid, _bin_start(start))] = EVENTS_PER_BIN
    ledger.bins += 1


async def close_traffic_bins(
    publisher: EventPublisher, ledger: TrafficLedger, controllers: list[tuple[str, str]], district: str
) -> int:
    """A chunk well past the last bin's end plus grace: it closes every bin sent (its events span more than
    the reorder hold, so its first ones are folded at once); the bins closed."""
    start = ledger.t0 + (ledger.bins + 1) * BIN
    await publisher.publish([_chunk(cid, iid, district, start, EVENTS_PER_BIN) for cid, iid in controllers])
    return ledger.bins


async def traffic_measures(kafka: KafkaSettings, ledger: TrafficLedger) -> dict[tuple[str, str], int]:
    """``events`` of each intersection measure of the ledger's intersections (the last one per bin)."""
    events = await read_committed(
        kafka,
        MEASURES_TOPIC,
        lambda e: (
            e.type.endswith("intersection_measures.computed.v1")
            and str(e.data.get("intersection_id", "")).startswith(f"TI-{ledger.prefix}-")
        ),
    )
    out: dict[tuple[str, str], int] = {}
    for e in events:
        start = datetime.fromisoformat(e.data["bin_start"].replace("Z", "+00:00")).astimezone(UTC)
        out[(e.data["intersection_id"], _bin_start(start))] = e.data["events"]
    return out
