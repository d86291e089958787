"""Per-domain KPI processor paths: a domain's processor (from ``services/<d>/processors.py`` PROCESSORS) under
``ProcessorRuntime`` (Faust driver) over what its source topics hold, measured like ``bench.worker.ioc_stream``.

The workload is what the domain's ingest path published through the real service just before (validated,
enriched events, as in production), plus, where the ingest path gives too few events (dossiers), generated
events of the domain's contract.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from bench.stage_profile import StageProfile
from bench.worker import Meter, naive_app
from shared.config import KafkaSettings


def build_processor(domain: str, index: int, kafka: KafkaSettings):
    """The ``index``-th processor of ``domain``, with a fresh consumer group (reads its topics from the start)."""
    from ioc import registry

    entry = registry.service(domain)
    assert entry.processors is not None, f"{domain} has no processors"
    settings = registry.load(entry.settings)(kafka=kafka)
    proc = registry.load(entry.processors)[index](settings)
    proc.name = f"{proc.name}-bench-{uuid.uuid4().hex[:6]}"
    return proc


async def processor(
    kafka: KafkaSettings,
    domain: str,
    index: int = 0,
    idle_s: float = 3.0,
    timeout: float = 180.0,
    totals: bool = False,
    group: str | None = None,
    barrier: dict | None = None,
    start_timeout: float = 60.0,
    driver: str = "faust",
    ownership: bool = False,
) -> dict:
    """Process everything in the processor's source topics; events/s between the first and the last batch.

    ``totals``: add the 15-minute totals of the meter processor's state (``bench.meter_totals``), per partition
    it owns at the end. ``group``: a fixed processor name (consumer group), for several workers of one group;
    ``barrier`` (``{"dir": ..., "workers": n}``): the workers of the group start their runtimes together, and once
    idle, a worker waits until every worker is idle before it reads its state and stops, so no partition moves
    while the totals are read. ``driver``: the runtime's consumer driver (``shared.stream.runtime``). ``ownership``:
    the partitions it owns at the end and its span (scale-out rows of processors without totals)."""
    from shared.gc_tuning import tune_gc
    from shared.stream.runtime import ProcessorRuntime

    tune_gc()
    proc = build_processor(domain, index, kafka)
    if group:
        proc.name = group
    rt = ProcessorRuntime(proc, kafka, driver=driver)
    m = Meter()
    if barrier:  # every worker of the group starts together, so they join in one generation
        await _wait_barrier(barrier, timeout, "ready")
    await rt.start()
    # The clock and CPU start when the first fetched batch reaches the core (not after it was applied: with a
    # small workload the first batch can be most of it), so group joins and recovery are excluded.
    profile = StageProfile()
    profile.attach(rt.core)
    process = profile.timed_async("batch", rt.core.process)

    async def timed_process(records, **kwargs):
        if m.t0 is None:
            m.first()
            profile.first()
        return await process(records, **kwargs)

    rt.core.process = timed_process  # type: ignore[method-assign,assignment]  # timing wrapper
    started = time.perf_counter()
    try:
        last, idle_since = 0, time.perf_counter()
        while time.perf_counter() - started < timeout:
            await asyncio.sleep(0.01)
            p = rt.core.processed
            if p != last:
                last, idle_since = p, time.perf_counter()
                m.last()
                profile.last()
            elif p and time.perf_counter() - idle_since > idle_s:
                break
            elif not p and time.perf_counter() - started > start_timeout:
                break
        if barrier:
            await _wait_barrier(barrier, timeout, "idle")
        extra: dict = {}
        if ownership:  # which partitions this worker folded, and its span, for a scale-out row
            extra["partitions"] = sorted(rt.core.partitions)
            extra["t0"], extra["t1"] = m.t0, m.t1
        if totals:
            from bench.meter_totals import ioc_quarters

            extra["partitions"] = sorted(rt.core.partitions)
            extra["t0"], extra["t1"] = m.t0, m.t1  # perf_counter is system-wide: workers' spans combine
            extra["quarters_by_partition"] = {
                str(p): ioc_quarters([dict(pr.state.items("agg:"))]) for p, pr in rt.core.partitions.items()
            }
    finally:
        await rt.stop()
    return m.result(
        rt.core.processed,
        processor=proc.name.rsplit("-bench-", 1)[0],
        topics=list(proc.topics),
        dead_lettered=getattr(rt.core, "dead_lettered", None),
        driver=driver,
        late_ignored=proc.late_ignored,
        cpu_profile_us_per_event=profile.result(rt.core.processed),
        **extra,
    )


async def _wait_barrier(barrier: dict, timeout: float, stage: str) -> None:
    """Marks this worker at ``stage`` in ``barrier["dir"]`` and waits for ``barrier["workers"]`` such marks (or
    ``timeout``)."""
    import os
    from pathlib import Path

    d = Path(barrier["dir"])
    (d / f"{os.getpid()}.{stage}").touch()
    deadline = time.perf_counter() + timeout
    while len(list(d.glob(f"*.{stage}"))) < barrier["workers"] and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)


async def naive_processor(
    kafka: KafkaSettings, domain: str, index: int = 0, limit_s: float = 25.0, idle_s: float = 3.0
) -> dict:
    """What a newcomer writes for the same processor: a Faust agent over its topics that decodes and validates
    each record on its own, folds it with the processor's ``apply``, writes every state key the event changed
    to a Faust table (one changelog record per write) and, every 0.5 s of a partition, emits and sends each
    output as IOC's runtime does (``emit`` also resets what the processor tracks as changed). No
    de-duplication: leaving it out only makes this baseline faster. Time-boxed to ``limit_s`` seconds."""
    import shutil
    from datetime import UTC, datetime

    from aiokafka import AIOKafkaConsumer

    from shared.contracts.cloudevents import EventDecodeError, decode
    from shared.stream import State

    proc = build_processor(domain, index, kafka)
    probe = AIOKafkaConsumer(**kafka.client_kwargs())
    await probe.start()
    try:  # a table must have its source topics' partition count
        await probe.topics()  # loads the cluster's metadata
        partitions = max(len(probe.partitions_for_topic(t) or ()) for t in proc.topics)
    finally:
        await probe.stop()
    app = naive_app(kafka, f"bench-naive-{domain}")
    source = app.topic(*proc.topics, key_serializer="raw", value_serializer="raw")
    table = app.Table("state", partitions=partitions, key_type=str)  # values: the app default, JSON
    states: dict[int, State] = {}
    emitted: dict[int, float] = {}  # partition → when it last emitted (monotonic)
    m = Meter()
    seen = {"n": 0, "bad": 0, "at": time.perf_counter()}

    @app.agent(source)
    async def fold(stream):
        async for event in stream.events():
            m.first()
            message = event.message
            try:
                received = decode(message)
            except EventDecodeError:
                seen["bad"] += 1
                continue
            state = states.setdefault(message.partition, State(message.partition))
            proc.apply(received, state)
            outputs = []
            tick = time.monotonic()
            if tick - emitted.get(message.partition, 0.0) >= 0.5:
                emitted[message.partition] = tick
                outputs = list(proc.emit(state, datetime.now(UTC)))
            for key, value in state.take_changes().items():
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value
            for out in outputs:
                await app.producer.send(out.topic, out.key, out.value, None, None, list(out.headers))
            seen["n"] += 1
            seen["at"] = time.perf_counter()
            m.last()

    await app.start()
    started = time.perf_counter()
    try:
        while True:
            await asyncio.sleep(0.05)
            now = time.perf_counter()
            if m.t0 is not None and (now - m.t0 > limit_s or now - seen["at"] > idle_s):
                break
            if m.t0 is None and now - started > 60:
                break
    finally:
        await app.stop()
        shutil.rmtree(app.conf.datadir, ignore_errors=True)
    return m.result(
        int(seen["n"]), dead_lettered=seen["bad"], note="time-boxed" if now - seen["at"] <= idle_s else ""
    )


async def raw_sources(
    kafka: KafkaSettings, domain: str, index: int = 0, idle_s: float = 3.0, timeout: float = 180.0
) -> dict:
    """The ceiling on the processor's own workload: a plain aiokafka consumer over the same source topics,
    ``getmany`` + orjson decode + a count per record key (what ``bench.worker.raw_aiokafka`` does on the small
    generated events), until the topics are drained."""
    import orjson
    from aiokafka import AIOKafkaConsumer

    proc = build_processor(domain, index, kafka)
    c = AIOKafkaConsumer(
        *proc.topics,
        **kafka.client_kwargs(),
        group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        session_timeout_ms=10000,
        heartbeat_interval_ms=3000,
    )
    await c.start()
    m, got, agg = Meter(), 0, dict[str, int]()
    started = time.perf_counter()
    try:
        idle_since = time.perf_counter()
        while time.perf_counter() - started < timeout:
            batch = await c.getmany(timeout_ms=200, max_records=20000)
            if not batch:
                if got and time.perf_counter() - idle_since > idle_s:
                    break
                if not got and time.perf_counter() - started > 60:
                    break
                continue
            m.first()
            for recs in batch.values():
                for r in recs:
                    orjson.loads(r.value)
                    agg[r.key] = agg.get(r.key, 0) + 1
                got += len(recs)
            m.last()
            idle_since = time.perf_counter()
    finally:
        await c.stop()
    return m.result(got, topics=list(proc.topics))


def dossier_lifecycle_payloads(n: int, *, prefix: str | None = None) -> list[dict]:
    """``n`` generated dossier status changes (received, then in processing, then resolved on time or late) for
    ``n // 3`` dossiers over the districts, from the contract's example, in publishing order."""
    from datetime import UTC, datetime, timedelta

    from bench.domain_meter import district_codes
    from shared.contracts.base import event_type_of
    from shared.contracts.dossier import STATUS_NAMES, DossierStatusChanged

    template = dict(event_type_of(DossierStatusChanged).examples[0])
    districts = district_codes()
    t0 = datetime.now(UTC) - timedelta(days=20)
    payloads = []
    prefix = prefix or uuid.uuid4().hex[:5]
    for d in range(max(1, n // 3)):
        received = t0 + timedelta(minutes=d)
        base = {
            **template,
            "dossier_id": f"{template['agency_code']}:B{prefix}-{d:07d}",  # the record key (issue #40)
            "dossier_code": f"B{prefix}-{d:07d}",
            "district": districts[d % len(districts)],
            "admin_unit": districts[d % len(districts)],
            "received_at": _iso(received),
            "due_date": (received + timedelta(days=5)).date().isoformat(),
        }
        done = received + timedelta(days=3 if d % 5 else 8)
        payloads += [
            {
                **base,
                "status": 2,
                "previous_status": None,
                "action": "receive",
                "status_name": STATUS_NAMES[2],
                "at": _iso(received),
            },
            {
                **base,
                "status": 4,
                "previous_status": 2,
                "action": "start_processing",
                "status_name": STATUS_NAMES[4],
                "at": _iso(received + timedelta(hours=2)),
            },
            {
                **base,
                "status": 9,
                "previous_status": 4,
                "action": "resolve",
                "status_name": STATUS_NAMES[9],
                "at": _iso(done),
            },
        ]
    for p in payloads:
        DossierStatusChanged.model_validate(p)  # the generator must produce valid events
    return payloads


async def produce_dossier_events(kafka: KafkaSettings, n: int) -> dict:
    """:func:`dossier_lifecycle_payloads` on the lifecycle topic, keyed by dossier code."""
    from shared.contracts.base import event_type_of
    from shared.contracts.cloudevents import encode_many
    from shared.contracts.dossier import DossierStatusChanged
    from shared.kafka import EventPublisher

    etype = event_type_of(DossierStatusChanged)
    payloads = dossier_lifecycle_payloads(n)
    pub = EventPublisher(kafka, client_id="bench-dossier-producer")
    try:
        for i in range(0, len(payloads), 20000):
            chunk = payloads[i : i + 20000]
            await pub.publish(encode_many(etype, chunk, source="/ioc/bench"))
    finally:
        await pub.stop()
    return {"produced": len(payloads)}


async def produce_feeder_supply_events(kafka: KafkaSettings, n: int, meters_per_feeder: int = 200) -> dict:
    """``n`` generated feeder supply changes for the feeder-outage processor: outages that take out two feeders
    at a time, 4 feeders a district, every meter of both losing supply and regaining it ten minutes later
    (each outage raises and clears two feeder alarms), keyed by feeder."""
    from datetime import UTC, datetime, timedelta

    from bench.domain_meter import district_codes
    from shared.contracts.base import event_type_of
    from shared.contracts.cloudevents import encode_many
    from shared.contracts.meter import FeederSupplyChanged
    from shared.kafka import EventPublisher

    etype = event_type_of(FeederSupplyChanged)
    feeders = [(f"F-{d}-{j}", d) for d in district_codes() for j in range(4)]
    t0 = datetime.now(UTC) - timedelta(days=2)
    prefix = uuid.uuid4().hex[:5]
    payloads: list[dict] = []
    outage = 0
    while len(payloads) < n:
        lost_at = t0 + timedelta(minutes=15 * outage)
        hit = [feeders[(2 * outage + k) % len(feeders)] for k in range(2)]
        for supply, at in (("lost", lost_at), ("restored", lost_at + timedelta(minutes=10))):
            payloads += [
                {
                    "feeder": feeder,
                    "meter_id": f"M{prefix}-{feeder}-{m:04d}",
                    "supply": supply,
                    "at": _iso(at + timedelta(seconds=m % 60)),
                    "district": district,
                    "feeder_meters": meters_per_feeder,
                }
                for feeder, district in hit
                for m in range(meters_per_feeder)
            ]
        outage += 1
    payloads = payloads[:n]
    for p in payloads[:1000]:
        FeederSupplyChanged.model_validate(p)  # the generator must produce valid events
    pub = EventPublisher(kafka, client_id="bench-feeder-producer")
    try:
        for i in range(0, len(payloads), 20000):
            await pub.publish(encode_many(etype, payloads[i : i + 20000], source="/ioc/bench"))
    finally:
        await pub.stop()
    return {"produced": len(payloads)}


def _iso(t) -> str:
    return t.isoformat().replace("+00:00", "Z")
