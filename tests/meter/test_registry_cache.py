"""The meter service's registry cache: what it holds per registered meter (issue #42: at most 300 bytes a meter).

A city registers millions of meters that share a few thousand districts, communes, feeders, gateways and
installation dates; the cache must not hold a copy of those per meter.
"""

from __future__ import annotations

import gc
import tracemalloc
from datetime import date

import orjson

from services.meter.domain import MeterIn, MeterInfo
from services.meter.service import MeterService
from services.meter.settings import MeterSettings
from shared.ingest import validate_items


def service() -> MeterService:
    return MeterService(MeterSettings(), None, None, "/ioc/meter/test")  # type: ignore[arg-type]  # no I/O here


def fresh(text: str) -> str:
    # a new string object each call, as parsing a request or a database row gives
    return text.encode().decode()


def info(meter_id: str, feeder: str) -> MeterInfo:
    return MeterInfo(
        meter_id,
        1,
        fresh("HK"),
        fresh("HK-01"),
        fresh(feeder),
        None,
        date(2020, 1, 1),
        900,
        fresh("gw"),
    )


def test_meters_share_one_object_per_field_value_and_keep_their_values():
    svc = service()
    a, b = info("M-1", "F-HK-1"), info("M-2", "F-HK-1")
    assert a.district is not b.district  # distinct copies going in
    svc.registry.apply([a, b])
    x, y = svc.registry["M-1"], svc.registry["M-2"]
    assert (
        x.district is y.district
        and x.commune is y.commune
        and x.feeder is y.feeder
        and x.gateway is y.gateway
    )
    assert x.installed_on is y.installed_on
    assert (y.district, y.commune, y.feeder, y.gateway, y.installed_on, y.interval_seconds) == (
        "HK",
        "HK-01",
        "F-HK-1",
        "gw",
        date(2020, 1, 1),
        900,
    )
    assert y.installed_epoch == 1577836800  # 2020-01-01T00:00Z: 18,262 days × 86,400 s
    # Moving a meter to another feeder still keeps the feeder sizes right.
    svc.registry.apply([info("M-2", "F-HK-2")])
    assert svc.feeder_sizes == {"F-HK-1": 1, "F-HK-2": 1}
    assert svc.registry["M-2"].feeder == "F-HK-2"


def test_a_registered_meter_costs_the_cache_at_most_180_bytes():
    meters = 20_000
    body = orjson.dumps(
        [
            {
                "meter_id": f"U12345-{j:07d}",
                "district": "HK",
                "commune": "HK-01",
                "feeder": f"F-HK-{j % 4}",
                "installed_on": "2020-01-01",
                "interval_seconds": 900,
                "gateway": "head-end-1",
            }
            for j in range(meters)
        ]
    )
    svc = service()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        valid, errors = validate_items(MeterIn, orjson.loads(body), id_field="meter_id")  # as the API parses
        assert not errors
        svc.registry.apply(
            [
                MeterInfo(
                    m.meter_id,
                    m.customers,
                    m.district,
                    m.commune,
                    m.feeder,
                    m.transformer,
                    m.installed_on,
                    m.interval_seconds,
                    m.gateway,
                )
                for _, m in valid
            ]
        )
        del valid
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Per meter, in columns (MeterTable): its id (a 14-character str, 63 B), the dict slot (~40 B), the row
    # number (an int, 28 B), the id list's pointer (8 B) and 12 B of arrays: ~150 B. A slotted entry per meter
    # with shared field values was ~215 B; with its own strings, dates and ints ~500 B.
    assert held / meters <= 180, f"{held / meters:.0f} bytes per registered meter"


def test_a_refresh_re_reading_unchanged_meters_keeps_the_cached_entries_and_their_id_strings():
    svc = service()
    svc.registry.apply([info("M-1", "F-HK-1"), info("M-2", "F-HK-1")])
    cached = svc.registry["M-1"]
    table = svc.registry.entries
    rows, profiles = dict(table.rows), len(table.profiles)
    key = next(k for k in svc.registry if k == "M-2")
    # The refresh loads every meter written since its last pass, this replica's own registrations included.
    svc.registry.apply([info(fresh("M-1"), "F-HK-1"), info(fresh("M-2"), "F-HK-2")])
    # unchanged: the row stays as it was, the re-read copy is dropped
    assert svc.registry["M-1"] == cached and svc.registry["M-1"].meter_id is cached.meter_id
    assert table.rows == rows and len(table.ids) == 2 and len(table.profiles) == profiles + 1  # F-HK-2's
    moved = svc.registry["M-2"]
    assert moved.feeder == "F-HK-2" and moved.meter_id is key  # changed: new entry, the dict's own id string
    assert svc.feeder_sizes == {"F-HK-1": 1, "F-HK-2": 1}
