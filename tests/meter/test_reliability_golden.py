"""Golden scenario: IEEE 1366-2012 reliability indices of three Hanoi districts over one Hanoi day, worked out by
hand below from the standard's definitions, against what IOC computes through the service's pairing (pure
domain), the meter KPI processor (three source partitions, batches in arrival order) and the city merge.

IEEE 1366-2012 (clause 2 definitions, clause 3 indices):
- an interruption of 5 minutes or less is *momentary*; a *sustained* interruption lasts more than 5 minutes;
- SAIFI = Σ N_i / N_T (N_i customers interrupted by each sustained interruption), SAIDI = Σ r_i N_i / N_T
  (r_i its restoration time, minutes), CAIDI = Σ r_i N_i / Σ N_i = SAIDI / SAIFI, MAIFI = Σ IM_i N_mi / N_T
  (IM_i momentary interruptions, N_mi customers they interrupted), MAIFI_E = Σ IM_E N_mi / N_T (IM_E momentary
  interruption *events*: reclosings within 5 minutes of the first interruption are one event);
- N_T = total number of customers served in the area, whether or not their meters reported;
- an interruption is accrued to the day it began (the reporting period of its start).

Scenario, Hanoi day D = 2024-05-01 (local times; N_T from the registry):
  BD: B1 2 customers, B2 1, B3 3 (partition 0), B4 1 (partition 1), S1 6 (partition 2: a meter on a partition of
      its own that stays silent all day), B5 7 decommissioned on 2024-04-20 (not served on D)   → N_T = 13
  HK: H1 1, H2 4 (partition 0), H3 9 installed on 2024-05-02 (not yet served on D)                → N_T = 5
  CG: C1 5 (partition 0), C2 5 (partition 1): the district's head-end is down, nothing arrives   → N_T = 10
  city                                                                                            → N_T = 28
Events (in arrival batches, see ``BATCHES``):
  B1 down 08:00:00, a duplicate last gasp 08:00:40 (and another one arriving a day later), up 08:30
     → one sustained interruption, 30 min × 2 customers
  B2 up 10:20 arrives in a batch before its down 10:00 → sustained 20 min × 1; later down 15:00, up 15:02
     → momentary × 1
  B3 down 14:00:00 up 14:00:30, down 14:03:00 up 14:03:20 → two momentary interruptions × 3 customers, one
     momentary event (the second begins within 5 min of the first)
  B4 down 08:00 on D, up 90 hours later (D+4 02:00) → sustained 5400 min × 1, accrued to D
  H1 down 12:00:00 up 12:05:00: exactly 5 minutes → momentary × 1
  H2 down 23:30 on D, up 00:45 on D+1 (crosses midnight) → sustained 75 min × 4, accrued to D
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from services.city.domain import load_definitions
from services.city.processors import CityKpiProcessor
from services.meter import publishing
from services.meter.domain import MeterEventIn, MeterInfo, validate_events
from services.meter.processors import MeterKpiProcessor
from shared.contracts.cloudevents import EncodedEvent, ReceivedEvent, headers_dict
from shared.contracts.meter import MeterRegistered
from shared.stream import State, run_in_memory
from shared.testing import received

HANOI = timezone(timedelta(hours=7))
D = datetime(2024, 5, 1, tzinfo=HANOI)
DAY_START = "2024-04-30T17:00:00+00:00"  # Hanoi day D starts at 17:00 UTC the day before


def t(day: int, hour: int, minute: int, second: int = 0) -> datetime:
    """Local time on day D + ``day``."""
    return D + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


# meter → (district, customers, partition, installed_on, decommissioned_on)
METERS = {
    "B1": ("BD", 2, 0, "2024-01-01", None),
    "B2": ("BD", 1, 0, "2024-01-01", None),
    "B3": ("BD", 3, 0, "2024-01-01", None),
    "B4": ("BD", 1, 1, "2024-01-01", None),
    "S1": ("BD", 6, 2, "2024-01-01", None),
    "B5": ("BD", 7, 0, "2024-01-01", "2024-04-20"),
    "H1": ("HK", 1, 0, "2024-01-01", None),
    "H2": ("HK", 4, 0, "2024-01-01", None),
    "H3": ("HK", 9, 0, "2024-05-02", None),
    "C1": ("CG", 5, 0, "2024-01-01", None),
    "C2": ("CG", 5, 1, "2024-01-01", None),
}


def registry_entry(mid: str) -> dict:
    district, customers, _, installed, removed = METERS[mid]
    return {
        "meter_id": mid,
        "customers": customers,
        "district": district,
        "commune": f"{district}-01",
        "feeder": f"F-{district}",
        "transformer": None,
        "installed_on": installed,
        "interval_seconds": 900,
        "decommissioned_on": removed,
        "effective_on": None,
    }


REGISTRY = {
    mid: MeterInfo(
        mid,
        c,
        dist,
        f"{dist}-01",
        f"F-{dist}",
        None,
        datetime.fromisoformat(inst).date(),
        900,
        None,
        datetime.fromisoformat(rem).date() if rem else None,
    )
    for mid, (dist, c, _, inst, rem) in METERS.items()
}

DOWN, UP = (1, "1"), (2, "2")
# (arrival time, [(meter, event time, (DLMS code, raw code))]) in arrival order
BATCHES = [
    (
        t(0, 10, 25),
        [
            ("B1", t(0, 8, 0), DOWN),
            ("B1", t(0, 8, 0, 40), (None, "LAST_GASP")),  # duplicate last gasp
            ("B1", t(0, 8, 30), UP),
            ("B4", t(0, 8, 0), DOWN),
            ("B2", t(0, 10, 20), UP),  # its power-down arrives in the next batch
        ],
    ),
    (t(0, 10, 40), [("B2", t(0, 10, 0), DOWN)]),
    (
        t(0, 15, 10),
        [
            ("H1", t(0, 12, 0), DOWN),
            ("H1", t(0, 12, 5), UP),  # exactly 5 minutes
            ("B3", t(0, 14, 0), DOWN),
            ("B3", t(0, 14, 0, 30), UP),
            ("B3", t(0, 14, 3), DOWN),
            ("B3", t(0, 14, 3, 20), UP),
            ("B2", t(0, 15, 0), DOWN),
            ("B2", t(0, 15, 2), UP),
        ],
    ),
    (
        t(1, 1, 0),
        [
            ("H2", t(0, 23, 30), DOWN),
            ("H2", t(1, 0, 45), UP),  # crosses midnight
            ("B1", t(0, 8, 10), (None, "PWR_FAIL")),  # a repeated last gasp inside B1's closed interruption
        ],
    ),
    (t(4, 2, 5), [("B4", t(4, 2, 0), UP)]),  # 90 hours after its power-down
]


def as_received(e: EncodedEvent, partition: int, offset: int) -> ReceivedEvent:
    h = headers_dict(e.headers)
    return ReceivedEvent(
        type=h["ce_type"].decode(),
        id=h["ce_id"].decode(),
        source=h["ce_source"].decode(),
        time=h["ce_time"].decode() if "ce_time" in h else "",
        subject=None,
        key=e.key.decode(),
        data=orjson.loads(e.value),
        topic=e.topic,
        partition=partition,
        offset=offset,
        timestamp_ms=0,
    )


def run_scenario(batches=BATCHES):
    """The scenario through the service's pairing, the meter processor (apply a batch, then every partition
    emits, as the runtime's ticks do) and the city processor. Returns (meter outputs per emit, city KPIs by
    (kpi, scope, window seconds, window start))."""
    proc = MeterKpiProcessor()
    states = {p: State(p) for p in range(3)}
    meter_out: list[tuple[datetime, list[EncodedEvent]]] = []

    def emit_all(now: datetime) -> None:
        out: list[EncodedEvent] = []
        for p in sorted(states):
            out += proc.emit(states[p], now)
        meter_out.append((now, out))

    registry = [received(MeterRegistered, registry_entry(m), partition=METERS[m][2]) for m in METERS]
    for ev in registry:
        proc.apply_batch([ev], states[ev.partition])
    timelines: dict = {}
    seen: dict = {}
    offset = 0
    for arrival, items in batches:
        ins = [
            (i, MeterEventIn(meter_id=m, at=at, code=code, raw_code=raw))
            for i, (m, at, (code, raw)) in enumerate(items)
        ]
        outcome = validate_events(ins, REGISTRY, timelines, seen, {}, arrival)
        assert outcome.errors == []
        for mid, tl in outcome.timelines.items():
            if tl is None:
                timelines.pop(mid, None)
            else:
                timelines[mid] = tl
        for key in outcome.seen:
            seen[key] = None
        encoded = publishing.meter_events([p for _, p in outcome.accepted], "/test")
        encoded += publishing.interruption_events(outcome.interruptions, "/test")
        by_partition: dict[int, list[ReceivedEvent]] = {}
        for e in encoded:
            offset += 1
            part = METERS[e.key.decode()][2]
            by_partition.setdefault(part, []).append(as_received(e, part, offset))
        for part, evs in by_partition.items():
            proc.apply_batch(evs, states[part])
        emit_all(arrival)
    city_in = [
        as_received(e, 0, i)
        for i, e in enumerate(e for _, out in meter_out for e in out if e.topic == "ioc.meter.kpis")
    ]
    city = CityKpiProcessor(load_definitions(), topics=("ioc.meter.kpis",))
    _, city_out = run_in_memory(city, city_in, batches[-1][0] + timedelta(minutes=1))
    merged = {}
    for e in city_out:
        if e.topic == "ioc.city.kpis":
            d = orjson.loads(e.value)
            # the city writes instants in UTC with Z; the key is the instant, whatever its spelling
            start = d["window_start"].replace("Z", "+00:00")
            merged[(d["kpi"], d["scope_code"], d["window_seconds"], start)] = d
    return meter_out, merged


def day_index(merged, kpi, code):
    d = merged[(kpi, code, 86400, DAY_START)]
    return d["value"], d["numerator"], d["denominator"]


def test_golden_day_indices_through_processor_and_city_merge():
    _, merged = run_scenario()
    # --- BD, N_T = 2 + 1 + 3 + 1 + 6 = 13 (B5 decommissioned before D, S1 silent but served) -----------------
    # sustained: B1 2 cust × 30 min, B2 1 × 20 min, B4 1 × 5400 min (90 h, accrued to D)
    # Σ N_i = 2 + 1 + 1 = 4; Σ r_i N_i = 60 + 20 + 5400 = 5480
    assert day_index(merged, "meter.saifi", "BD") == (pytest.approx(4 / 13), 4.0, 13.0)
    assert day_index(merged, "meter.saidi_minutes", "BD") == (pytest.approx(5480 / 13), 5480.0, 13.0)
    assert day_index(merged, "meter.caidi_minutes", "BD") == (pytest.approx(5480 / 4), 5480.0, 4.0)
    # momentary: B2 1 × 1, B3 3 customers × 2 interruptions → Σ IM_i N_mi = 1 + 6 = 7
    assert day_index(merged, "meter.maifi", "BD") == (pytest.approx(7 / 13), 7.0, 13.0)
    # momentary events: B2 one, B3 one (its second reclosing began 3 min after the first) → 1 + 3 = 4
    assert day_index(merged, "meter.maifi_e", "BD") == (pytest.approx(4 / 13), 4.0, 13.0)
    # --- HK, N_T = 1 + 4 = 5 (H3 installed the day after) ---------------------------------------------------
    # sustained: H2 4 × 75 min (23:30 → 00:45, accrued to D); momentary: H1 exactly 5 min × 1
    assert day_index(merged, "meter.saifi", "HK") == (pytest.approx(4 / 5), 4.0, 5.0)
    assert day_index(merged, "meter.saidi_minutes", "HK") == (pytest.approx(300 / 5), 300.0, 5.0)
    assert day_index(merged, "meter.caidi_minutes", "HK") == (pytest.approx(75.0), 300.0, 4.0)
    assert day_index(merged, "meter.maifi", "HK") == (pytest.approx(1 / 5), 1.0, 5.0)
    assert day_index(merged, "meter.maifi_e", "HK") == (pytest.approx(1 / 5), 1.0, 5.0)
    # --- CG: head-end down, nothing arrived; its 10 customers are served all the same --------------------------
    assert day_index(merged, "meter.saifi", "CG") == (0.0, 0.0, 10.0)
    assert day_index(merged, "meter.saidi_minutes", "CG") == (0.0, 0.0, 10.0)
    # --- city, N_T = 13 + 5 + 10 = 28 ----------------------------------------------------------------------------
    assert day_index(merged, "meter.saifi", "HN") == (pytest.approx(8 / 28), 8.0, 28.0)
    assert day_index(merged, "meter.saidi_minutes", "HN") == (pytest.approx(5780 / 28), 5780.0, 28.0)
    assert day_index(merged, "meter.caidi_minutes", "HN") == (pytest.approx(5780 / 8), 5780.0, 8.0)
    assert day_index(merged, "meter.maifi", "HN") == (pytest.approx(8 / 28), 8.0, 28.0)
    assert day_index(merged, "meter.maifi_e", "HN") == (pytest.approx(5 / 28), 5.0, 28.0)


def test_every_partition_reports_its_customers_served_even_when_silent():
    meter_out, _ = run_scenario()
    latest: dict[int, float] = {}
    for _, out in meter_out:
        for e in out:
            d = orjson.loads(e.value)
            if (d.get("kpi"), d.get("scope_code"), d.get("window_seconds"), d.get("window_start")) == (
                "meter.saifi",
                "BD",
                86400,
                "2024-04-30T17:00:00Z",
            ):
                latest[d["partition"]] = d["denominator"]
    # partition 0: B1 2 + B2 1 + B3 3; partition 1: B4 1; partition 2: S1 6, which never sent anything
    assert latest == {0: 6.0, 1: 1.0, 2: 6.0}


def test_the_90_hour_outage_revises_its_closed_day_when_restored():
    meter_out, _ = run_scenario()

    def bd_saidi(out):
        for e in out:
            d = orjson.loads(e.value)
            if (d.get("kpi"), d.get("scope_code"), d.get("window_seconds"), d.get("partition")) == (
                "meter.saidi_minutes",
                "BD",
                86400,
                1,
            ) and d["window_start"] == "2024-04-30T17:00:00Z":
                return d["numerator"]
        return None

    # The last emit (D+4 02:05) re-publishes day D of partition 1 with B4's 5400 customer-minutes.
    assert bd_saidi(meter_out[-1][1]) == 5400.0


def test_live_figures_while_the_outage_is_in_progress():
    meter_out, _ = run_scenario(BATCHES[:1])
    _, out = meter_out[-1]
    live = {}
    for e in out:
        d = orjson.loads(e.value)
        if d.get("kpi") in ("meter.customers_interrupted_now", "meter.customer_minutes_in_progress"):
            live[(d["kpi"], d["scope_code"], d["partition"])] = d["value"]
    # B4 (1 customer, partition 1) is out since 08:00; at 10:25 that is 2 h 25 min = 145 customer-minutes.
    # B2's power-up arrived without its power-down: nothing is open for it.
    assert live[("meter.customers_interrupted_now", "BD", 1)] == 1.0
    assert live[("meter.customer_minutes_in_progress", "BD", 1)] == pytest.approx(145.0)
    assert live[("meter.customers_interrupted_now", "HN", 1)] == 1.0
    assert live[("meter.customers_interrupted_now", "HN", 0)] == 0.0
