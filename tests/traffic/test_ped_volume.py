"""Pedestrian volume estimates: atspm 2.6.1's model (``full_ped.sql`` with ``return_volumes``), worked by hand, and
compared with atspm on the generated messy log of test_atspm_reference.py.

The model (atspm ``full_ped.sql``, citing doi:10.1177/0361198121994126 for unique actuations): for a 15-minute bin
with U unique actuations (a press more than 15 s after the previous one on the phase) and R = U of the bin and the
next three (the hour starting with the bin), estimated hourly volume H = 0.7167·R + 0.0599·R², and the bin's
estimate = H · U / R + 1.1063 / 4 (the intercept spread over the hour's four bins; H · 0 when R = 0)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.traffic.measures import MeasureParams, MeasuresEngine, config_from_registry

from .test_atspm_reference import START, atspm_tables, bin_key, generate, ioc_measures

BASE = round(datetime(2024, 5, 1, 8, 0, tzinfo=UTC).timestamp() * 1000)
BIN = 900_000


def test_hand_worked_hour():
    presses = [
        10,  # bin 0: unique (the phase's first press)
        20,  # 10 s after the previous: the same person
        40,  # 20 s after: unique → U0 = 2
        1000,  # bin 1: U1 = 1
        2800,  # bin 3: unique
        2900,  # unique → U3 = 2 (bin 2: U2 = 0)
    ]
    events = sorted([(p, 90, 4) for p in presses] + [(5, 1, 2), (3700, 1, 2)])  # phase 2: no pedestrians
    data: dict = {}
    engine = MeasuresEngine(data, config_from_registry({"phases": [2, 4], "detectors": []}), MeasureParams())
    for sec, code, param in events:
        engine.process(BASE + sec * 1000, code, param)
    engine.finish()
    engine.close_bins(through_ms=2**62)  # bins 0..4 closed: closed through 4500 s
    first = {(b["bin_start"] - BASE) // BIN: b for b in data["closed"]}
    assert all(m["ped_volume_estimate"] is None for b in first.values() for m in b["phases"])
    revised = {(b["bin_start"] - BASE) // BIN: {m["phase"]: m for m in b["phases"]} for b in data["revised"]}
    # only bins whose hour has closed: bin 0 (0-3600 s) and bin 1 (900-4500 s); bin 2's hour ends at 5400 s
    assert sorted(revised) == [0, 1]
    assert all(sorted(phases) == [4] for phases in revised.values())  # no estimate for a phase without peds
    # bin 0: R = 2 + 1 + 0 + 2 = 5; H = 0.7167·5 + 0.0599·25 = 3.5835 + 1.4975 = 5.081;
    # 5.081 · 2/5 = 2.0324; + 1.1063/4 = 0.276575 → 2.308975
    assert revised[0][4]["ped_volume_estimate"] == pytest.approx(2.308975)
    # bin 1: R = 1 + 0 + 2 + 0 (bin 4) = 3; H = 2.1501 + 0.5391 = 2.6892; · 1/3 = 0.8964; + 0.276575 → 1.172975
    assert revised[1][4]["ped_volume_estimate"] == pytest.approx(1.172975)
    # the revision carries the bin's other measures unchanged
    assert revised[0][4]["unique_ped_actuations"] == 2 and revised[0][4]["ped_actuations"] == 3


@pytest.mark.slow
def test_ped_volumes_agree_with_atspm(tmp_path):
    events = generate()
    # atspm fills its bins from the log's first timestamp in 15-minute steps: start the log on a bin edge (a
    # vendor code neither uses) so its bins are the clock-aligned ones
    aligned = round(START.replace(minute=45, second=0, microsecond=0).timestamp() * 1000)
    events = [(aligned, 400, 1), *events]
    ref = atspm_tables(tmp_path, events, mode="ped_volumes")["full_ped"]
    phases, _ = ioc_measures(events)
    want = {(bin_key(r["TimeStamp"]), int(r["Phase"])): float(r["Estimated_Volumes"]) for r in ref}
    got = {k: m["ped_volume_estimate"] for k, m in phases.items() if m["ped_volume_estimate"] is not None}
    # by definition atspm does not count a phase's first press of the log as unique (see test_atspm_reference):
    # the hours holding that press differ; every other hour must agree
    first_bin = {}
    for t, code, param in events:
        if code == 90:
            first_bin.setdefault(param, t - t % BIN)
    compared = 0
    mismatches = []
    for (b, phase), value in sorted(got.items()):
        start = round(datetime.fromisoformat(b.replace(" ", "T") + ":00+00:00").timestamp() * 1000)
        if start <= first_bin[phase] < start + 4 * BIN:
            continue
        compared += 1
        # atspm casts to DuckDB FLOAT (single precision: about 7 significant digits)
        if (b, phase) not in want or value != pytest.approx(want[(b, phase)], rel=1e-6):
            mismatches.append(f"{b} phase {phase}: IOC {value}, atspm {want.get((b, phase))}")
    assert not mismatches, "\n".join(mismatches)
    # 9 bins (07:45-09:45); the six whose hour closed (07:45-09:00) are estimated for phases 2 and 4, the first
    # (07:45, holding each phase's first press) left out
    assert sorted({p for _, p in got}) == [2, 4] and compared == 10


def test_the_revision_goes_out_with_an_id_of_its_own_and_adds_only_the_estimate_to_the_kpis():
    from datetime import timedelta

    import orjson

    from services.traffic.processors import TrafficSignalProcessor
    from services.traffic.settings import TrafficSettings
    from shared.contracts.traffic import HiResEventsLogged, IntersectionConfigured
    from shared.stream import run_in_memory
    from shared.testing import received

    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    base = round(start.timestamp() * 1000)
    registry = {
        "intersection_id": "I-PV",
        "controller_id": "C-PV",
        "name": "ped volume",
        "district": "BD",
        "lat": 21.03,
        "lon": 105.82,
        "phases": [2, 4],
        "detectors": [],
        "revision": 1,
    }
    # live events: presses in bins 0, 1 and 3 of phase 4, then event time reaching 5000 s (the last event is
    # held back by the reorder tolerance) closes bins 0-4 (a bin closes when event time passes its end plus the
    # 5-minute grace): bins 0 and 1 have their hour
    events = [
        (10, 90, 4),
        (40, 90, 4),
        (1000, 90, 4),
        (2800, 90, 4),
        (3700, 1, 2),
        (5000, 1, 2),
        (6000, 1, 2),
    ]
    records = [received(IntersectionConfigured, registry)]
    for n, (sec, code, param) in enumerate(events):
        t = datetime.fromtimestamp((base + sec * 1000) / 1000, UTC).isoformat()
        records.append(
            received(
                HiResEventsLogged,
                {
                    "controller_id": "C-PV",
                    "intersection_id": "I-PV",
                    "district": "BD",
                    "events": [{"t": t, "code": code, "param": param}],
                },
                offset=n + 1,
            )
        )
    _, out = run_in_memory(
        TrafficSignalProcessor(TrafficSettings()), records, now=start + timedelta(seconds=6001)
    )
    ids = [dict(ev.headers)["ce_id"].decode() for ev in out]
    first, revision = f"measures:I-PV:4:{base}", f"measures:I-PV:4:{base}:ped-volume"
    assert first in ids and revision in ids
    by_id = {i: orjson.loads(ev.value) for i, ev in zip(ids, out, strict=True)}
    assert by_id[first]["ped_volume_estimate"] is None
    # bin 0: U = 2, R = 2 + 1 + 0 + 1 = 4; H = 0.7167·4 + 0.0599·16 = 2.8668 + 0.9584 = 3.8252; · 2/4 = 1.9126;
    # + 0.276575 → 2.189175
    assert by_id[revision]["ped_volume_estimate"] == pytest.approx(2.189175)
    # the city's ped actuations of bin 0 count the bin once (2 presses), not again for its revision
    kpis = [
        orjson.loads(ev.value)
        for ev in out
        if dict(ev.headers)["ce_type"].decode().endswith("kpi.observed.v1")
    ]
    window = [
        k
        for k in kpis
        if k.get("kpi") == "traffic.ped_actuations"
        and k.get("scope_level") == "city"
        and k.get("window_start", "").startswith(start.strftime("%Y-%m-%dT%H:%M"))
    ]
    assert window and window[-1]["value"] == 2
    # the city's ped volume estimate of bin 0: the revision's estimate (phase 4 only: phase 2 has no pedestrians)
    estimates = [
        k
        for k in kpis
        if k.get("kpi") == "traffic.ped_volume_estimate"
        and k.get("scope_level") == "city"
        and k.get("window_start", "").startswith(start.strftime("%Y-%m-%dT%H:%M"))
    ]
    assert estimates[-1]["value"] == pytest.approx(2.189175)
