"""The readings hot path's pieces: one-pass batch parsing with per-item errors, the fast CloudEvents encoder
(same records as the platform encoder), and the coalescing register writer (ordering by batch)."""

from __future__ import annotations

import orjson
import pytest
from fastapi.exceptions import RequestValidationError

from services.meter.publishing import READING, reading_events
from services.meter.service import READINGS, RegisterWriter
from shared.auth import ApiError
from shared.contracts.cloudevents import encode
from tests.areas import area, unit

GOOD = {
    "meter_id": "M1",
    "obis": "1-0:1.8.0",
    "interval_end": "2024-05-01T10:15:00Z",
    "value": 1.5,
    "unit": "kWh",
}


def test_valid_batch_parses_in_one_pass_to_dicts():
    valid, errors = READINGS.parse(
        orjson.dumps({"items": [GOOD, {**GOOD, "meter_id": "M2", "quality": "missing", "value": None}]})
    )
    assert errors == []
    assert [(i, d["meter_id"], d.get("quality")) for i, d in valid] == [(0, "M1", None), (1, "M2", "missing")]


def test_bad_items_are_reported_one_by_one_and_the_rest_kept():
    items = [
        GOOD,
        {**GOOD, "value": "7"},
        {**GOOD, "extra": 1},
        {**GOOD, "meter_id": "bad id!"},
        "x",
        {k: v for k, v in GOOD.items() if k != "unit"},
    ]
    valid, errors = READINGS.parse(orjson.dumps({"items": items}))
    assert [i for i, _ in valid] == [0]
    assert [(e.index, e.id, e.field, e.code) for e in errors] == [
        (1, "M1", "value", "invalid"),
        (2, "M1", "extra", "invalid"),
        (3, "bad id!", "meter_id", "invalid"),
        (4, None, None, "invalid"),
        (5, "M1", "unit", "invalid"),
    ]
    # reasons never echo the offending value
    assert all("7" not in e.reason and e.reason for e in errors)


def test_not_json_is_400_and_not_a_batch_is_422():
    with pytest.raises(ApiError) as exc:
        READINGS.parse(b'{"items": [')
    assert exc.value.status == 400 and exc.value.code == "malformed_json"
    for body in ({"items": []}, {"items": [GOOD], "more": 1}, [GOOD], {"items": [GOOD] * 10_001}):
        with pytest.raises(RequestValidationError) as verr:
            READINGS.parse(orjson.dumps(body))
        assert verr.value.errors()[0]["loc"][0] == "body"


def test_fast_encoder_gives_the_platform_encoders_records():
    payload = {
        "meter_id": "M1",
        "obis": "1-0:1.8.0",
        "interval_end": "2024-05-01T10:15:00Z",
        "interval_seconds": 900,
        "value": 1.5,
        "unit": "kWh",
        "quality": "measured",
        "flags": [],
        "delta": 0.5,
        "district": area("BD"),
        "commune": unit("BD-01"),
        "feeder": "F1",
        "customers": 1,
    }
    [fast] = reading_events([payload], "/ioc/meter")
    ref = encode(
        READING,
        payload,
        source="/ioc/meter",
        id="r:M1:1-0:1.8.0:2024-05-01T10:15:00Z",
        time="2024-05-01T10:15:00Z",
        subject="1-0:1.8.0",
    )
    assert (fast.topic, fast.key, fast.value, fast.id, fast.type) == (
        ref.topic,
        ref.key,
        ref.value,
        ref.id,
        ref.type,
    )
    assert sorted(fast.headers) == sorted(ref.headers)


class FakePool:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.calls: list[tuple] = []

    async def execute(self, sql, *args):
        if self.fail:
            raise OSError("database down")
        self.calls.append(args)


async def test_register_writer_keeps_the_latest_batch_and_retries_after_a_failure():
    pool = FakePool(fail=True)
    writer = RegisterWriter(pool)  # type: ignore[arg-type]
    k1, k2 = ("M1", "1-0:1.8.0"), ("M2", "1-0:1.8.0")
    writer.mark(2, {k1: (200, 1, 20.0, 200)})
    writer.mark(1, {k1: (100, 1, 10.0, 100), k2: (100, 1, 5.0, 100)})  # acknowledged after batch 2
    with pytest.raises(OSError):
        await writer.flush()
    assert writer.pending == 3  # kept for the next flush
    pool.fail = False
    assert await writer.flush() == 2
    (rows,) = pool.calls[0]
    assert {r["m"]: (r["e"], r["v"]) for r in rows} == {"M1": (200, 20.0), "M2": (100, 5.0)}
    assert await writer.flush() == 0


async def test_register_writer_forgets_replaced_meters():
    pool = FakePool()
    writer = RegisterWriter(pool)  # type: ignore[arg-type]
    writer.mark(1, {("M1", "1-0:1.8.0"): (100, 1, 10.0, 100), ("M2", "1-0:1.8.0"): (100, 1, 5.0, 100)})
    await writer.forget(["M1"])
    assert pool.calls == [(["M1"],)]  # the DELETE of its written registers
    await writer.flush()
    assert [r["m"] for r in pool.calls[1][0]] == ["M2"]
