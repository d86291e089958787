"""Register states are loaded at start-up in pages, straight into the register table: every state written comes
back, across page boundaries, for registered meters and for states whose meter the registry does not hold."""

from __future__ import annotations

import uuid

import pytest

from services.meter import repository
from services.meter.service import MeterService
from shared.testing import auth
from tests.areas import BA_DINH, BA_DINH_UNIT

pytestmark = pytest.mark.integration


async def test_a_paged_start_up_load_restores_every_register_state(app, client, keys):
    prefix = f"RP{uuid.uuid4().hex[:6]}-"
    meters = [
        {
            "meter_id": f"{prefix}{j:02d}",
            "customers": 1,
            "district": BA_DINH,
            "commune": BA_DINH_UNIT,
            "feeder": f"F-{prefix}",
            "installed_on": "2020-01-01",
            "interval_seconds": 900,
        }
        for j in range(5)
    ]
    r = await client.post("/v1/meters", json={"items": meters}, headers=auth(keys["admin"]))
    assert r.status_code == 200, r.text
    t = 1_714_557_600
    states = {
        (f"{prefix}{j:02d}", obis): (
            t + j * 900,
            0b101,
            None if obis == "1-0:1.7.0" else 10.5 + j,
            t,
            j,
            0,
            0.0,
            0,
            0.0,
        )
        for j in range(5)
        for obis in ("1-0:1.8.0", "1-0:2.8.0", "1-0:1.7.0")
    }
    states[(f"{prefix}00", "1-0:1.8.0")] = (
        t + 1800,
        (1 << 63) - 1,
        999_999.5,
        t + 1800,
        3,
        t,
        999_998.5,
        t + 900,
        999_999.0,
    )
    states[(f"{prefix}unregistered", "1-0:1.8.0")] = (t, 1, 1.0, t, 0, 0, 0.0, 0, 0.0)
    ctx = app.state.ctx
    await repository.save_registers(ctx.pool, states.items())

    fresh = MeterService(ctx.settings, ctx.pool, ctx.publisher, ctx.source)
    fresh.register_page = (
        4  # 16 states here (and the module's others): several pages, a boundary inside a meter
    )
    await fresh.load()
    loaded = {k: v for k, v in fresh.registers.items() if k[0].startswith(prefix)}
    assert loaded == states
    assert (f"{prefix}unregistered", "1-0:1.8.0") in fresh.registers.other
