"""Issue #42's targets judged from one run's results: each met, or the measured distance and what explains it.

``make bench`` prints these rows after its table and ``python -m bench.report`` writes them into
docs/performance.md. Every row comes from figures of the same run (``bench-results/bench.json``); a target whose
rows did not run says "not measured" rather than borrowing a figure from elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.stage_profile import LABELS as STAGE_LABELS

#: a Hanoi quarter hour of readings (~3 M meters), the time it must take from first POST to the city KPI, and
#: the machine's cores the budget is counted on
QUARTER_HOUR_READINGS = 3_000_000
QUARTER_HOUR_SECONDS = 60.0
METER_SERVICE_BYTES_PER_METER = 300
TOPIC_BYTES_PER_READING = 40
X_LIBRDKAFKA_CPU = 2.5
#: the burst's processes that are IOC's (the bench driver stands in for a head-end system: not counted)
NOT_IOC = ("bench driver",)


@dataclass(frozen=True)
class Target:
    target: str
    measured: str
    status: str  # "met" | "not met" | "not measured"
    distance: str = ""
    explanation: str = ""

    def as_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


def _f(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


def burst(results: dict[str, Any], cores: int) -> list[Target]:
    name = f"{QUARTER_HOUR_READINGS:,} readings, first POST → city KPI, ≤ {QUARTER_HOUR_SECONDS:.0f} s"
    r = results.get("burst") or {}
    if not r.get("extrapolated_city_quarter_hour_s"):
        return [Target(name, str(r.get("error", ""))[:120], "not measured")]
    seconds = r["extrapolated_city_quarter_hour_s"]
    exact = bool(r.get("exact"))
    measured = (
        f"{r['events']:,} readings in {r['seconds']} s ({'exact' if exact else 'city value NOT exact'}) → "
        f"{_f(seconds)} s for {QUARTER_HOUR_READINGS:,}"
    )
    procs = {k: v for k, v in (r.get("processes") or {}).items() if k not in NOT_IOC}
    per_reading = sum(p.get("cpu_us_per_reading") or 0 for p in procs.values())
    busy = per_reading * r["events"] / 1e6 / r["seconds"] if r["seconds"] else 0.0
    budget = cores * QUARTER_HOUR_SECONDS / QUARTER_HOUR_READINGS * 1e6
    parts = ", ".join(
        f"{k} {_f(v.get('cpu_us_per_reading') or 0)}"
        for k, v in sorted(procs.items(), key=lambda kv: -(kv[1].get("cpu_us_per_reading") or 0))
    )
    why = (
        f"CPU per reading {_f(per_reading)} µs ({parts}); the budget on {cores} cores is {_f(budget)} µs; "
        f"{_f(busy, 2)} of {cores} cores busy on average"
    )
    if per_reading > budget:
        why += f": CPU-bound, {_f(per_reading - budget)} µs per reading over the budget"
    elif busy < cores * 0.9:
        why += ": the CPU would fit, the processes do not keep the cores busy (the ingest path is serial)"
    met = exact and seconds <= QUARTER_HOUR_SECONDS
    return [
        Target(
            name,
            measured,
            "met" if met else "not met",
            "" if met else f"{_f(seconds / QUARTER_HOUR_SECONDS, 2)}× the time",
            why,
        )
    ]


def meter_memory(results: dict[str, Any]) -> list[Target]:
    name = f"meter service ≤ {METER_SERVICE_BYTES_PER_METER} bytes per registered meter"
    r = results.get("burst") or {}
    registered = r.get("meter_service_bytes_per_meter")
    if not registered:
        return [Target(name, "", "not measured")]
    after = r.get("meter_service_bytes_per_meter_after_burst")
    measured = f"{registered:,} B/meter registered" + (
        f", {after:,} B/meter after a quarter hour's readings" if after else ""
    )
    worst = max(registered, after or 0)
    held = results.get("meter_memory") or {}
    why = ""
    if held.get("total_bytes_per_meter"):
        why = (
            f"Python objects held per meter (tracemalloc, {held.get('meters', 0):,} meters): registry "
            f"{held['registry_bytes_per_meter']} B + register state {held['registers_bytes_per_meter']} B = "
            f"{held['total_bytes_per_meter']} B; the rest of the process's growth is the allocator's "
            "fragmentation and the request buffers it keeps"
        )
    met = worst <= METER_SERVICE_BYTES_PER_METER
    return [
        Target(
            name,
            measured,
            "met" if met else "not met",
            ""
            if met
            else f"{_f(worst / METER_SERVICE_BYTES_PER_METER, 2)}× ({worst - METER_SERVICE_BYTES_PER_METER:,} B over)",
            why,
        )
    ]


def topic_bytes(results: dict[str, Any]) -> list[Target]:
    name = f"bytes per reading on the topic ≤ {TOPIC_BYTES_PER_READING} (producer compression)"
    r = results.get("meter_topic_bytes") or {}
    rows = {row.get("codec"): row for row in r.get("codecs", [])}
    used = rows.get(r.get("default_codec"))
    if not used or not used.get("disk_bytes_per_reading_one_replica"):
        return [Target(name, str(r.get("error", ""))[:120], "not measured")]
    b = used["disk_bytes_per_reading_one_replica"]
    plain = (rows.get("none") or {}).get("disk_bytes_per_reading_one_replica")
    measured = f"{b} B/reading with {r['default_codec']} (IOC's default)" + (
        f"; {plain} B uncompressed" if plain else ""
    )
    why = (
        f"producer {used.get('producer_cpu_us_per_reading')} µs, consumer {used.get('consumer_cpu_us_per_reading')}"
        f" µs per reading; log segment bytes of one replica on Apache Kafka, {r.get('readings', 0):,} readings"
    )
    met = b <= TOPIC_BYTES_PER_READING
    return [
        Target(
            name,
            measured,
            "met" if met else "not met",
            "" if met else f"{b - TOPIC_BYTES_PER_READING} B over",
            why,
        )
    ]


def profile_text(row: dict[str, Any]) -> str:
    """The processor's CPU per event by part, largest first."""
    prof = row.get("cpu_profile_us_per_event") or {}
    if not prof:
        return ""
    parts = sorted(prof.items(), key=lambda kv: -kv[1])
    text = "; ".join(f"{STAGE_LABELS.get(k, k)} {v}" for k, v in parts if v >= 0.05)
    return f"µs per event: {text}"


def _rows(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The result rows (``_run`` and other metadata left out)."""
    return [(k, r) for k, r in results.items() if not k.startswith("_") and isinstance(r, dict)]


def processors(results: dict[str, Any]) -> list[Target]:
    out = []
    for key, r in _rows(results):
        if "x_librdkafka_cpu" not in r:
            continue
        x = r["x_librdkafka_cpu"]
        loop = r.get("librdkafka_cpu_s_per_million") or 0
        cpu = r.get("cpu_s_per_million") or 0
        budget = X_LIBRDKAFKA_CPU * loop
        measured = f"{x}× ({_f(cpu, 2)} vs the loop's {_f(loop, 2)} µs per event)"
        met = x <= X_LIBRDKAFKA_CPU
        why = profile_text(r)
        if r.get("cpu_s_per_million_hires_events"):  # traffic: the loop reads records, each a chunk of events
            why += (
                f"; a record is a chunk of hi-res events: {r['cpu_s_per_million_hires_events']} µs of CPU per "
                "hi-res event"
            )
        out.append(
            Target(
                f"{r.get('label', key)}: CPU per event ≤ {X_LIBRDKAFKA_CPU}× a plain librdkafka loop",
                measured,
                "met" if met else "not met",
                "" if met else f"{_f(cpu - budget, 2)} µs per event over ({_f(x / X_LIBRDKAFKA_CPU, 2)}×)",
                why,
            )
        )
    return out


def peers(results: dict[str, Any]) -> list[Target]:
    out = []
    for key, r in _rows(results):
        if not key.startswith(("meter_quix", "meter_kstreams")):
            continue
        name = f"ahead of {r.get('label', key).removeprefix('peer: ')}"
        x = r.get("x_ioc_cpu")
        if not x:
            out.append(Target(name, str(r.get("error", ""))[:120], "not measured"))
            continue
        exact = (r.get("totals") or {}).get("exact")
        measured = f"the peer uses {x}× IOC's CPU per event" + (
            f", {r['x_ioc_events_per_s']}× its events/s" if r.get("x_ioc_events_per_s") else ""
        )
        if exact is False:
            measured += "; the peer's totals are not exact"
        met = x > 1
        out.append(Target(name, measured, "met" if met else "not met", "" if met else f"{x}×"))
    return out


def scale_out(results: dict[str, Any]) -> list[Target]:
    out = []
    for key, r in _rows(results):
        if not ("exact_by_workers" in r or "scaleout" in key):
            continue
        exact = r.get("exact_by_workers") or {}
        speed = r.get("x_one_worker_by_workers") or {}
        measured = ", ".join(
            f"{n} workers {speed.get(n)}× ({ok if ok == 'reference' else 'exact' if ok else 'NOT exact'})"
            for n, ok in exact.items()
        )
        met = set(exact) >= {"1", "2", "3"} and all(exact.values())
        if r.get("error"):
            out.append(Target(f"{r.get('label', key)}: exact", str(r["error"])[:120], "not measured"))
            continue
        out.append(
            Target(
                f"{r.get('label', key)}: exact",
                measured,
                "met" if met else "not met",
                "" if met else "not exact with every worker count",
                "meter-kpi: its 15-minute totals against the readings topic's; the others: every record folded "
                "once (the one-worker run's events, each partition owned by one worker)",
            )
        )
    return out


def evaluate(results: dict[str, Any], cores: int = 2) -> list[Target]:
    """Every target of the issue that this run measured, in the issue's order."""
    return [
        *burst(results, cores),
        *meter_memory(results),
        *topic_bytes(results),
        *processors(results),
        *peers(results),
        *scale_out(results),
    ]
