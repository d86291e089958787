"""CPU driver of the city KPI processor (not a test): generated domain KPI partials in, apply_batch + emit.

    python -m bench.city_processor_cpu [--cycles 400] [--per-cycle 650] [--repeat 0.5] [--profile out.prof]

Simulates the city mix in 0.5 s cycles: every cycle the domains publish ``--per-cycle`` ``KpiObserved``
partials (meter, traffic, kiosk, dossier KPIs for the 30 districts, the city and a few communes, from 4 source
partitions each), a ``--repeat`` share of them with the same numerator/denominator/value as that source
partition's previous one. Each of the 3 city input partitions gets its cycle's records as one batch, then
``emit`` runs (as the runtime does at most every 0.5 s). The changelog is simulated the way the core writes it
(``take_changes`` + ``orjson.dumps`` per changed key). Pure CPU: no broker. Prints CPU seconds per million
observations for apply+emit and for the changelog, records written and outputs; ``--digest FILE`` writes the
last published value of every city KPI and every alarm change (to compare implementations).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import random
import time
import zlib
from datetime import UTC, datetime, timedelta

import orjson

from shared.contracts import EVENT_TYPES
from shared.contracts.common import kpi_key
from shared.kpis import all_definitions
from shared.stream import State
from shared.testing import received

START = datetime(2024, 5, 1, 10, 0, 3, tzinfo=UTC)
SOURCE_PARTITIONS = 4
CITY_PARTITIONS = 3
DISTRICTS = [f"D{i:02d}" for i in range(1, 31)]
COMMUNES = [f"D{i:02d}-{j:02d}" for i in range(1, 31) for j in range(1, 6)]
SHARE = {"meter": 0.6, "traffic": 0.25, "kiosk": 0.1, "dossier": 0.05}


def _iso_z(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def generate(
    cycles: int, per_cycle: int, repeat: float, seed: int = 7
) -> list[tuple[datetime, dict[int, list]]]:
    """[(cycle time, {city partition: [ReceivedEvent, ...]})] of the simulated domains."""
    rnd = random.Random(seed)
    defs = all_definitions()
    events_of = {d: EVENT_TYPES[f"ioc.{d}.kpi.observed.v1"] for d in SHARE}
    universe: dict[str, list[tuple]] = {d: [] for d in SHARE}
    for d in defs.values():
        if d.domain not in SHARE:
            continue
        for w in d.windows:
            for code in DISTRICTS:
                universe[d.domain].append((d.id, "district", code, w, d.combine))
            universe[d.domain].append((d.id, "city", "HN", w, d.combine))
            if d.domain == "dossier":
                universe[d.domain] += [(d.id, "commune", c, w, d.combine) for c in COMMUNES[::10]]
    last: dict[tuple, tuple] = {}
    out = []
    for c in range(cycles):
        now = START + timedelta(seconds=0.5 * c)
        batches: dict[int, list] = {p: [] for p in range(CITY_PARTITIONS)}
        for domain, share in SHARE.items():
            # meter stamps with Z, the others with +00:00: the city must take both
            observed = _iso_z(now) if domain == "meter" else now.isoformat()
            for _ in range(max(1, int(per_cycle * share))):
                kpi, level, code, w, combine = rnd.choice(universe[domain])
                ws = int(now.timestamp()) // w * w if w <= 86400 else int(START.timestamp()) // 86400 * 86400
                start = datetime.fromtimestamp(ws, UTC)
                part = rnd.randrange(SOURCE_PARTITIONS)
                ident = (kpi, level, code, w, ws, part)
                prev = last.get(ident)
                if prev is not None and rnd.random() < repeat:
                    n, den = prev
                else:
                    n = (prev[0] if prev else 0.0) + rnd.randint(1, 50)
                    den = (
                        ((prev[1] or 0.0) if prev else 0.0) + rnd.randint(50, 60)
                        if combine == "ratio"
                        else None
                    )
                    last[ident] = (n, den)
                value = (n / den if den else None) if combine == "ratio" else n
                payload = {
                    "kpi": kpi,
                    "scope_level": level,
                    "scope_code": code,
                    "window_start": _iso_z(start) if domain == "meter" else start.isoformat(),
                    "window_seconds": w,
                    "value": value,
                    "numerator": n,
                    "denominator": den,
                    "unit": "x",
                    "partition": part,
                    "observed_at": observed,
                    "key": kpi_key(kpi, level, code),
                }
                cp = zlib.crc32(payload["key"].encode()) % CITY_PARTITIONS
                batches[cp].append(received(events_of[domain], payload, partition=cp, time_=observed))
        out.append((now, batches))
    return out


def run(module: str, workload, digest: dict | None = None) -> dict:
    from services.city.domain import load_definitions

    mod = importlib.import_module(module)
    processor = mod.CityKpiProcessor(load_definitions(), topics=("x",))
    states = {p: State(p) for p in range(CITY_PARTITIONS)}
    n_events = sum(len(b) for _, batches in workload for b in batches.values())
    outputs = alarms = records = 0
    cpu_proc = cpu_log = 0.0
    published: list = []
    for now, batches in workload:
        emit_at = now + timedelta(seconds=0.2)
        for p, events in batches.items():
            t0 = time.process_time()
            processor.apply_batch(events, states[p])
            out = list(processor.emit(states[p], emit_at))
            t1 = time.process_time()
            for v in states[p].take_changes().values():  # what the core does per batch
                None if v is None else orjson.dumps(v)
                records += 1
            cpu_log += time.process_time() - t1
            cpu_proc += t1 - t0
            outputs += len(out)
            if digest is not None:
                published.extend(out)
    for e in published:
        assert digest is not None  # published is only filled when a digest is asked for
        data = orjson.loads(e.value)
        if e.topic == "ioc.city.kpis":
            digest[
                f"{data['kpi']}|{data['scope_level']}|{data['scope_code']}|{data['window_seconds']}|"
                f"{data['window_start']}"
            ] = [data["value"], data["numerator"], data["denominator"], data["status"], data["partitions"]]
        else:
            alarms += 1
            digest.setdefault("alarms", []).append([data["alarm_id"], data["state"], data["severity"]])
    return {
        "events": n_events,
        "apply_emit_cpu_s_per_million": round(cpu_proc / n_events * 1e6, 2),
        "changelog_cpu_s_per_million": round(cpu_log / n_events * 1e6, 2),
        "changelog_records": records,
        "outputs": outputs,
        "alarm_changes": alarms,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", default="services.city.processors")
    ap.add_argument("--cycles", type=int, default=400)
    ap.add_argument("--per-cycle", type=int, default=650)
    ap.add_argument("--repeat", type=float, default=0.5)
    ap.add_argument("--profile")
    ap.add_argument("--digest")
    opts = ap.parse_args()
    workload = generate(opts.cycles, opts.per_cycle, opts.repeat)
    digest: dict | None = {} if opts.digest else None
    if opts.profile:
        prof = cProfile.Profile()
        prof.enable()
        result = run(opts.module, workload, digest)
        prof.disable()
        prof.dump_stats(opts.profile)
    else:
        result = run(opts.module, workload, digest)
    print(result)
    if opts.digest:
        with open(opts.digest, "wb") as f:
            f.write(orjson.dumps(digest, option=orjson.OPT_SORT_KEYS))


if __name__ == "__main__":
    main()
