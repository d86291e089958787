"""The meter service's register states in columns (``RegisterTable``): the same mapping, and the same validation
outcomes, as the dict of tuples it replaces; records reused after a meter's replacement; growth with the registry.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from datetime import UTC, date, datetime, timedelta

import pytest

from services.meter.domain import (
    Limits,
    MeterInfo,
    MeterTable,
    RegisterTable,
    as_table,
    undo_registers,
    validate_readings,
)

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
NOW = datetime(2024, 5, 3, 0, 0, tzinfo=UTC)
E = "1-0:1.8.0"


def meter(mid: str, step: int = 900) -> MeterInfo:
    return MeterInfo(mid, 1, "BD", "BD-01", "F1", None, date(2024, 1, 1), step)


def registry(n: int = 6) -> MeterTable:
    return MeterTable(meter(f"M{j}", 3600 if j % 3 == 2 else 900) for j in range(n))


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def test_a_table_is_the_mapping_of_tuples_it_replaces():
    table = registry()
    regs = RegisterTable(table)
    full = (1714557600, 5, 10.5, 1714557600, 3, 1714555800, 9.5, 1714556700, 10.0)
    regs[("M1", E)] = full
    regs[("M1", "1-0:1.7.0")] = (1714557600, 1, None, 0, 0, 0, 0.0, 0, 0.0)  # no value (quality 'missing')
    regs[("M2", E)] = (1714557600, 3, 7.25, 1714557600)  # a 4-field state of an older version
    assert regs[("M1", E)] == full
    assert regs[("M1", "1-0:1.7.0")][2] is None
    assert regs[("M2", E)] == (1714557600, 3, 7.25, 1714557600, 0, 0, 0.0, 0, 0.0)
    assert len(regs) == 3 and ("M2", E) in regs and ("M3", E) not in regs and regs.get(("M3", E)) is None
    assert sorted(regs) == [("M1", "1-0:1.7.0"), ("M1", E), ("M2", E)]
    # the largest seen-mask the de-duplication horizon makes (63 bits) and a register near a 6-digit rollover
    regs[("M1", E)] = (1714557600, (1 << 63) - 1, 999_999.75, 1714557600, 0, 0, 0.0, 0, 0.0)
    assert regs[("M1", E)][1] == (1 << 63) - 1 and regs[("M1", E)][2] == 999_999.75
    del regs[("M1", E)]
    assert ("M1", E) not in regs and len(regs) == 2
    with pytest.raises(KeyError):
        del regs[("M1", E)]
    with pytest.raises(KeyError):
        regs[("M9", E)]


def test_registers_of_meters_the_registry_does_not_hold_are_kept_and_move_to_columns_once_registered():
    table = registry(2)
    regs = RegisterTable(table)
    t = int((T0 - timedelta(minutes=15)).timestamp())
    regs[("NEW", E)] = (t, 1, 100.0, t, 0, 0, 0.0, 0, 0.0)  # loaded before its registry entry
    assert regs.other and regs[("NEW", E)][2] == 100.0 and list(regs) == [("NEW", E)]
    table.put(meter("NEW"))
    assert regs[("NEW", E)][2] == 100.0  # still found
    reading = {"meter_id": "NEW", "obis": E, "interval_end": iso(T0), "value": 101.0, "unit": "kWh"}
    out = validate_readings([(0, reading)], table, regs, NOW)
    assert out.accepted[0][1]["delta"] == 1.0  # the delta from the state kept outside the columns
    assert not regs.other and regs[("NEW", E)][:4] == (
        int(T0.timestamp()),
        1 | 1 << 1,
        101.0,
        int(T0.timestamp()),
    )


def test_a_replaced_meter_s_records_are_reused_and_other_meters_keep_theirs():
    table = registry(3)
    regs = RegisterTable(table)
    for j in range(3):
        regs[(f"M{j}", E)] = (1000 + j, 1, float(j), 1000 + j, 0, 0, 0.0, 0, 0.0)
    regs[("M1", "1-0:2.8.0")] = (1001, 1, 5.0, 1001, 0, 0, 0.0, 0, 0.0)
    size = len(regs.data)
    regs.drop_meter("M1")  # a replacement: the new meter's registers start afresh
    assert sorted(regs) == [("M0", E), ("M2", E)] and len(regs) == 2
    regs.drop_meter("M1")  # again: nothing left to drop
    regs.drop_meter("UNKNOWN")
    regs[("M1", E)] = (2000, 1, 0.5, 2000, 0, 0, 0.0, 0, 0.0)
    regs[("M1", "1-0:2.8.0")] = (2000, 1, 0.25, 2000, 0, 0, 0.0, 0, 0.0)
    assert len(regs.data) == size  # the two freed records were reused
    assert regs[("M0", E)][2] == 0.0 and regs[("M2", E)][2] == 2.0
    assert regs[("M1", E)][2] == 0.5 and regs[("M1", "1-0:2.8.0")][2] == 0.25


def test_the_table_grows_with_the_registry():
    table = MeterTable()
    regs = RegisterTable(table)
    for j in range(5000):
        table.put(meter(f"G{j}"))
        if j % 7 == 0:  # registers for some meters as they come, others later
            regs[(f"G{j}", E)] = (j, 1, float(j), j, 0, 0, 0.0, 0, 0.0)
    for j in range(0, 5000, 3):
        regs[(f"G{j}", E)] = (j + 1, 1, float(j), j + 1, 0, 0, 0.0, 0, 0.0)
    expected = {f"G{j}" for j in range(5000) if j % 7 == 0 or j % 3 == 0}
    assert {m for m, _ in regs} == expected and len(regs) == len(expected)
    assert regs[("G4998", E)][0] == 4999 and regs[("G7", E)][0] == 7
    assert len(regs.data) == 72 * len(expected)


def test_rebinding_to_a_reloaded_registry_keeps_every_state():
    old = registry(4)
    regs = RegisterTable(old)
    for j in range(4):
        regs[(f"M{j}", E)] = (1000 + j, 1, float(j), 1000 + j, 0, 0, 0.0, 0, 0.0)
    regs[("LOST", E)] = (1, 1, 1.0, 1, 0, 0, 0.0, 0, 0.0)
    before = dict(regs)
    new = MeterTable(meter(f"M{j}") for j in (3, 1, 0, 2))  # another row order
    new.put(meter("LOST"))
    regs.rebind(new)
    assert regs.meters is new and dict(regs) == before and not regs.other


def test_undo_with_a_table_restores_unless_moved_on():
    table = registry()
    regs = RegisterTable(table)
    r = {"meter_id": "M1", "obis": E, "unit": "kWh"}
    validate_readings([(0, {**r, "interval_end": iso(T0), "value": 10.0})], table, regs, NOW)
    before = regs[("M1", E)]
    batch = [
        (0, {**r, "interval_end": iso(T0 + timedelta(minutes=15)), "value": 11.0}),
        (1, {**r, "meter_id": "M0", "interval_end": iso(T0), "value": 5.0}),
    ]
    out = validate_readings(batch, table, regs, NOW)
    undo_registers(regs, out.previous, out.applied)
    assert dict(regs) == {("M1", E): before}
    # A later batch moved M1 on before the undo: its state stays.
    out = validate_readings(batch[:1], table, regs, NOW)
    validate_readings(
        [(0, {**r, "interval_end": iso(T0 + timedelta(minutes=30)), "value": 12.0})], table, regs, NOW
    )
    moved = regs[("M1", E)]
    undo_registers(regs, out.previous, out.applied)
    assert regs[("M1", E)] == moved


def _messy_batches(rng: random.Random, batches: int, size: int) -> list[list[tuple[int, dict]]]:
    """Readings as head-ends send them: out of order, late, repeated, conflicting, missing, going backwards,
    across gaps and a register rollover, on a quarter-hour and an hourly grid, several OBIS codes."""
    values: dict[tuple[str, str], float] = {}
    out = []
    for _ in range(batches):
        batch = []
        for i in range(size):
            j = rng.randrange(6)
            mid = f"M{j}"
            step = 3600 if j % 3 == 2 else 900
            obis, unit = rng.choice([(E, "kWh"), (E, "Wh"), ("1-0:2.8.0", "kWh"), ("1-0:1.7.0", "W")])
            k = rng.randrange(120)
            end = T0 + timedelta(seconds=step * k + (rng.random() < 0.03) * 60)  # some off the grid
            base = values.setdefault((mid, obis), rng.choice([100.0, 999_990.0]))
            value: float | None = base + k * rng.choice([0.25, 0.5, 1.0, 0.0])
            if rng.random() < 0.05:
                value = base - 5.0  # backwards
            if obis == E and base > 999_000 and k > 60:
                value = (base + k) % 1_000_000  # past the rollover
            quality = "measured"
            if rng.random() < 0.05:
                value, quality = None, "missing"
            elif rng.random() < 0.05:
                quality = "estimated"
            if unit == "Wh" and value is not None:
                value *= 1000
            batch.append(
                (
                    i,
                    {
                        "meter_id": mid if rng.random() > 0.02 else "UNREGISTERED",
                        "obis": obis,
                        "interval_end": iso(end),
                        "value": value,
                        "unit": unit,
                        "quality": quality,
                    },
                )
            )
        out.append(batch)
    return out


def test_validation_against_a_table_matches_validation_against_a_dict():
    seen: set[str] = set()
    for seed in range(1, 5):
        table = as_table({f"M{j}": meter(f"M{j}", 3600 if j % 3 == 2 else 900) for j in range(6)})
        columns, plain = RegisterTable(table), {}
        limits = Limits(frozen_intervals=4)
        for batch in _messy_batches(random.Random(seed), 40, 50):
            a = validate_readings(batch, table, columns, NOW, limits)
            b = validate_readings(batch, table, plain, NOW, limits)
            assert a.accepted == b.accepted
            assert a.errors == b.errors and a.duplicates == b.duplicates and a.estimates == b.estimates
            assert a.previous == b.previous and a.applied == b.applied
            assert dict(columns) == plain
            seen.update(e.code for e in a.errors)
            seen.update(f for _, p in a.accepted for f in p["flags"])
            seen.update("no value" for st in a.applied.values() if st[2] is None)
    # what the messy readings exercised
    assert {
        "rollover",
        "late",
        "gap",
        "first_read",
        "frozen_register",
        "no value",
        "conflict",
        "register_backwards",
        "misaligned",
        "unknown_entity",
        "too_late",
    } <= seen


def test_a_register_costs_the_table_under_100_bytes():
    meters = 20_000
    table = MeterTable(meter(f"U12345-{j:07d}") for j in range(meters))
    regs = RegisterTable(table)
    t = int(T0.timestamp())
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for mid in table.ids:
            regs[(mid, E)] = (t, 1, 1000.25, t, 0, 0, 0.0, 0, 0.0)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A 72-byte record (nine 8-byte fields), the row's 4-byte record number, the bytearray's spare capacity.
    # A dict of tuples held ~330 B: the key tuple, the nine-field tuple, its float and the id string per key.
    assert held / meters <= 100, f"{held / meters:.0f} bytes per register"
