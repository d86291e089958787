"""Unit tests of the dossier KPI processor on hand-computed cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from services.dossier.processors import DossierKpiProcessor, window_bounds
from shared.contracts.cloudevents import EncodedEvent, headers_dict
from shared.contracts.dossier import DossierApologized, DossierOverdue, DossierStatusChanged
from shared.stream import run_in_memory
from shared.testing import received

VN = timezone(timedelta(hours=7))
NOW = datetime(2025, 3, 10, 10, tzinfo=VN)


def t(s: str) -> str:
    return datetime.fromisoformat(s).replace(tzinfo=VN).isoformat()


BASE = {"agency_code": "UBND-BD-01", "admin_unit": "BD-01", "district": "BD", "has_fees": True}


def status(
    code,
    st,
    at,
    *,
    prev=None,
    action="receive",
    channel="in_person",
    level="partly_online",
    due="2025-03-10",
    paused=False,
    paid_online=None,
    partition=0,
):
    payload = {
        **BASE,
        "dossier_id": f"{BASE['agency_code']}:{code}",
        "dossier_code": code,
        "procedure_code": "P",
        "channel": channel,
        "online_level": level,
        "status": st,
        "received_at": t("2025-03-03T09:00"),
        "due_date": due,
        "at": t(at),
        "previous_status": prev,
        "status_name": "x",
        "action": action,
        "clock_paused": paused,
        "paid_online": paid_online,
    }
    return received(DossierStatusChanged, payload, partition=partition)


def life(partition_of=lambda code: 0):
    """Five dossiers of one agency, hand-checked below."""
    p = partition_of
    return [
        # D1: online, fully-online procedure, resolved Fri 7 Mar before its due day (10 Mar) → early
        status("D1", 2, "2025-03-03T09:00", channel="online", level="fully_online", partition=p("D1")),
        status(
            "D1",
            9,
            "2025-03-07T15:00",
            prev=2,
            action="resolve",
            channel="online",
            level="fully_online",
            partition=p("D1"),
        ),
        # D2: in person, fully-online procedure, resolved on its due day → on time
        status("D2", 2, "2025-03-03T09:00", level="fully_online", partition=p("D2")),
        status(
            "D2", 9, "2025-03-10T08:00", prev=2, action="resolve", level="fully_online", partition=p("D2")
        ),
        # D3: postal, due 5 Mar, resolved 6 Mar → late
        status("D3", 2, "2025-03-03T09:00", channel="postal", due="2025-03-05", partition=p("D3")),
        status(
            "D3",
            9,
            "2025-03-06T09:00",
            prev=2,
            action="resolve",
            channel="postal",
            due="2025-03-05",
            partition=p("D3"),
        ),
        # D4: online, open, due 20 Mar, fees paid online → open within deadline
        status("D4", 2, "2025-03-03T09:00", channel="online", due="2025-03-20", partition=p("D4")),
        status(
            "D4",
            6,
            "2025-03-04T09:00",
            prev=2,
            action="request_fees",
            channel="online",
            due="2025-03-20",
            partition=p("D4"),
        ),
        status(
            "D4",
            4,
            "2025-03-04T10:00",
            prev=6,
            action="pay_fees",
            channel="online",
            due="2025-03-20",
            paid_online=True,
            partition=p("D4"),
        ),
        # D5: in person, open, due 5 Mar, fees paid at the counter → overdue on 10 Mar
        status("D5", 2, "2025-03-03T09:00", due="2025-03-05", partition=p("D5")),
        status(
            "D5", 6, "2025-03-04T09:00", prev=2, action="request_fees", due="2025-03-05", partition=p("D5")
        ),
        status(
            "D5",
            4,
            "2025-03-04T10:00",
            prev=6,
            action="pay_fees",
            due="2025-03-05",
            paid_online=False,
            partition=p("D5"),
        ),
    ]


def kpis(out: list[EncodedEvent]) -> dict[tuple, dict]:
    """Latest observation per (kpi, level, code, window start) merged over partitions (sum of parts)."""
    latest: dict[tuple, dict] = {}
    for ev in out:
        if headers_dict(ev.headers)["ce_type"] != b"ioc.dossier.kpi.observed.v1":
            continue
        d = orjson.loads(ev.value)
        latest[(d["kpi"], d["scope_level"], d["scope_code"], d["window_start"], d["partition"])] = d
    merged: dict[tuple, dict] = {}
    for (kpi, level, code, ws, _), d in latest.items():
        m = merged.setdefault(
            (kpi, level, code, ws), {"num": 0.0, "den": None, "seconds": d["window_seconds"]}
        )
        m["num"] += d["numerator"]
        if d["denominator"] is not None:
            m["den"] = (m["den"] or 0.0) + d["denominator"]
    return merged


MONTH = datetime(2025, 3, 1, tzinfo=VN).isoformat()
DAY_3 = datetime(2025, 3, 3, tzinfo=VN).isoformat()
DAY_10 = datetime(2025, 3, 10, tzinfo=VN).isoformat()


def check_agency_month(k, level="agency", code="UBND-BD-01"):
    def get(kpi, ws=MONTH):
        return k[(kpi, level, code, ws)]

    assert get("dossier.received")["num"] == 5 and get("dossier.received")["den"] is None
    assert get("dossier.received", DAY_3)["num"] == 5
    assert (get("dossier.online_ratio")["num"], get("dossier.online_ratio")["den"]) == (2, 5)  # D1, D4
    assert (get("dossier.fully_online_ratio")["num"], get("dossier.fully_online_ratio")["den"]) == (1, 2)
    assert get("dossier.resolved")["num"] == 3
    assert (get("dossier.on_time_ratio")["num"], get("dossier.on_time_ratio")["den"]) == (2, 3)  # D1, D2
    assert (get("dossier.early_ratio")["num"], get("dossier.early_ratio")["den"]) == (1, 3)
    assert (get("dossier.late_ratio")["num"], get("dossier.late_ratio")["den"]) == (1, 3)
    # 766 online payment: fees paid online (D4) / dossiers of fee-bearing procedures received (all 5 have fees).
    # The old expectation (1, 2) divided by fee payments recorded: legally wrong (issue #37).
    assert (get("dossier.online_payment_ratio")["num"], get("dossier.online_payment_ratio")["den"]) == (1, 5)
    assert get("dossier.open_within_deadline", DAY_10)["num"] == 1  # D4
    assert get("dossier.overdue_open", DAY_10)["num"] == 1  # D5
    # 766 progress, month: (2 finished early/on time + 1 open within) / (3 finished + 2 open) = 3/5
    prog = get("dossier.progress_766_points")
    assert (prog["num"], prog["den"]) == (3, 5)
    # today (10 Mar): finished D2 on time; (1 + 1) / (1 + 2)
    prog_day = get("dossier.progress_766_points", DAY_10)
    assert (prog_day["num"], prog_day["den"]) == (2, 3)


def test_indicators_for_every_scope_on_a_hand_computed_month():
    _, out = run_in_memory(DossierKpiProcessor(), life(), NOW)
    k = kpis(out)
    for level, code in (("agency", "UBND-BD-01"), ("commune", "BD-01"), ("district", "BD"), ("city", "HN")):
        check_agency_month(k, level, code)
    assert k[("dossier.received", "agency", "UBND-BD-01", MONTH)]["seconds"] == 31 * 86400


def test_values_and_points_of_one_observation():
    _, out = run_in_memory(DossierKpiProcessor(), life(), NOW)
    values = {}
    for ev in out:
        d = orjson.loads(ev.value)
        if d.get("scope_level") == "agency" and d.get("window_start") == MONTH:
            values[d["kpi"]] = d["value"]
    assert values["dossier.fully_online_points"] == 6.0  # 12 × 1/2
    assert values["dossier.online_payment_points"] == 2.0  # 10 × 1/5 (was 10 × 1/2: wrong denominator)
    assert values["dossier.progress_766_points"] == 12.0  # 20 × 3/5
    assert abs(values["dossier.on_time_ratio"] - 2 / 3) < 1e-12


def test_partitions_merge_to_the_same_numbers():
    spread = {"D1": 0, "D2": 1, "D3": 2, "D4": 1, "D5": 0}
    _, out = run_in_memory(DossierKpiProcessor(), life(lambda c: spread[c]), NOW)
    check_agency_month(kpis(out))


def test_unchanged_state_emits_nothing_and_a_new_day_reemits_the_snapshot():
    proc = DossierKpiProcessor()
    states, _ = run_in_memory(proc, life(), NOW)
    st = states[0]
    assert list(proc.emit(st, NOW + timedelta(minutes=1))) == []
    # Next day: D4 still within deadline, D5 still overdue; today's window and progress change.
    nxt = [orjson.loads(e.value) for e in proc.emit(st, NOW + timedelta(days=1))]
    day_11 = datetime(2025, 3, 11, tzinfo=VN).isoformat()
    got = {(d["kpi"], d["window_start"]) for d in nxt if d["scope_level"] == "agency"}
    assert ("dossier.overdue_open", day_11) in got and ("dossier.progress_766_points", day_11) in got


def test_two_tier_hierarchy_has_no_district_scope():
    ev = status("T1", 2, "2025-03-03T09:00")
    ev.data["district"] = None
    ev.data["admin_unit"] = "X-01"
    _, out = run_in_memory(DossierKpiProcessor(), [ev], NOW)
    levels = {orjson.loads(e.value)["scope_level"] for e in out}
    assert levels == {"agency", "commune", "city"}


def test_overdue_raises_an_alarm_and_resolution_clears_it():
    facts = {
        **BASE,
        "dossier_id": f"{BASE['agency_code']}:D9",
        "dossier_code": "D9",
        "procedure_code": "P",
        "channel": "online",
        "online_level": "partly_online",
        "status": 4,
        "received_at": t("2025-03-03T09:00"),
        "due_date": "2025-03-05",
        "at": t("2025-03-06T00:05"),
    }
    events = [
        status("D9", 2, "2025-03-03T09:00", due="2025-03-05"),
        received(DossierOverdue, {**facts, "days_overdue": 1}),
        received(DossierApologized, {**facts, "promised_date": "2025-03-12", "at": t("2025-03-06T09:00")}),
        status("D9", 9, "2025-03-07T09:00", prev=2, action="resolve", due="2025-03-05"),
    ]
    proc = DossierKpiProcessor()
    _, out = run_in_memory(proc, events[:3], NOW)
    alarms = [orjson.loads(e.value) for e in out if e.topic == "ioc.dossier.alarms"]
    assert [(a["state"], a["alarm_id"], a["district"], a["commune"]) for a in alarms] == [
        ("raised", "dossier:overdue:UBND-BD-01:D9", "BD", "BD-01")
    ]
    k = kpis(out)
    assert k[("dossier.apologies", "agency", "UBND-BD-01", MONTH)]["num"] == 1
    assert k[("dossier.overdue_notices", "city", "HN", MONTH)]["num"] == 1
    _, out = run_in_memory(proc, events, NOW)
    alarms = [orjson.loads(e.value) for e in out if e.topic == "ioc.dossier.alarms"]
    assert [a["state"] for a in alarms] == ["raised", "cleared"]


def test_local_day_of_any_rfc3339_time_is_the_calendar_one():
    """The processor caches local days per date, hour and whole-hour offset: every form of time still gets
    the day ``local_date`` gives it (minutes and seconds do not matter, half-hour offsets are not cached)."""
    import random

    from services.dossier.domain import local_date
    from shared.contracts.base import parse_time

    rng = random.Random(5)
    proc = DossierKpiProcessor()
    start = datetime(2024, 12, 31, tzinfo=UTC)
    for _ in range(3000):
        t = start + timedelta(seconds=rng.randrange(0, 3 * 86400))
        offset = rng.choice(("Z", "+00:00", "+07:00", "-05:00", "+05:30", "-09:30", "+14:00"))
        text = t.strftime("%Y-%m-%dT%H:%M:%S") + rng.choice(("", ".5", ".123456")) + offset
        assert proc._local_day(text) == local_date(parse_time(text)), text
    with pytest.raises(ValueError, match="naive"):
        proc._local_day("2025-01-02T02:00:00")


def test_window_bounds():
    start, seconds = window_bounds("m:2024-02")
    assert start == datetime(2024, 2, 1, tzinfo=VN) and seconds == 29 * 86400
    start, seconds = window_bounds("m:2025-12")
    assert start == datetime(2025, 12, 1, tzinfo=VN) and seconds == 31 * 86400
    assert window_bounds("d:2025-03-10") == (datetime(2025, 3, 10, tzinfo=VN), 86400)


def _random_lifecycles(seed: int, dossiers: int = 120) -> list:
    """Dossiers of several agencies and units through receipt, pauses, fee payments, overdue notices,
    apologies, resolution (early, on time, late), return and withdrawal, spread over four partitions."""
    import random

    rnd = random.Random(seed)
    units = [
        ("UBND-BD-01", "BD-01", "BD"),
        ("UBND-BD", "BD", "BD"),
        ("UBND-HK-02", "HK-02", "HK"),
        ("SO-TP", "HN", None),
        ("UBND-X-01", "X-01", None),
    ]
    events = []
    for i in range(dossiers):
        code, part = f"R{seed}-{i}", i % 4
        agency, unit, district = rnd.choice(units)
        start = datetime(2025, 3, 1, 8, tzinfo=VN) + timedelta(hours=rnd.randrange(0, 9 * 24))
        due = (start + timedelta(days=rnd.randrange(0, 8))).date().isoformat()
        channel = rnd.choice(("online", "in_person", "postal"))
        level = rnd.choice(("fully_online", "partly_online", "offline"))

        facts = {
            **BASE,
            "agency_code": agency,
            "admin_unit": unit,
            "district": district,
            "dossier_id": f"{agency}:{code}",
            "dossier_code": code,
            "procedure_code": "P",
            "channel": channel,
            "online_level": level,
            "received_at": start.isoformat(),
            "due_date": due,
        }

        def ev(st, at, prev, action, facts=facts, part=part, **kw):
            payload = {
                **facts,
                "status": st,
                "at": at.isoformat(),
                "previous_status": prev,
                "status_name": "x",
                "action": action,
                "clock_paused": False,
                "paid_online": None,
                **kw,
            }
            return received(DossierStatusChanged, payload, partition=part)

        at = start
        events.append(ev(2, at, None, "receive"))
        if rnd.random() < 0.3:
            at += timedelta(hours=3)
            events.append(ev(6, at, 2, "request_fees", clock_paused=True))
            at += timedelta(hours=5)
            events.append(ev(4, at, 6, "pay_fees", paid_online=rnd.random() < 0.5))
        at += timedelta(days=rnd.randrange(0, 10), hours=1)
        notice = {k: v for k, v in ev(4, at, 2, "x").data.items() if k in DossierOverdue.model_fields}
        if at.date().isoformat() > due and rnd.random() < 0.7:
            events.append(received(DossierOverdue, {**notice, "days_overdue": 1}, partition=part))
            if rnd.random() < 0.5:
                events.append(
                    received(DossierApologized, {**notice, "promised_date": "2025-03-30"}, partition=part)
                )
        fate = rnd.random()
        if fate < 0.6:
            events.append(ev(9, at, 4, "resolve"))
            if rnd.random() < 0.5:
                events.append(ev(10, at + timedelta(hours=2), 9, "return_result"))
        elif fate < 0.7:
            events.append(ev(7, at, 4, "withdraw"))
    events.sort(key=lambda e: e.data["at"])  # interleave the dossiers like the lifecycle topic does
    return events


def _latest(out: list[EncodedEvent]) -> tuple[dict, dict]:
    """Latest KPI observation per (kpi, scope, window, partition), a zero counting as none; alarm histories."""
    latest, alarms = {}, {}
    for ev in out:
        d = orjson.loads(ev.value)
        if ev.topic == "ioc.dossier.alarms":
            alarms.setdefault(d["alarm_id"], []).append(d["state"])
            continue
        latest[(d["kpi"], d["scope_level"], d["scope_code"], d["window_start"], d["partition"])] = (
            d["value"],
            d["numerator"],
            d["denominator"],
        )
    return {k: v for k, v in latest.items() if v[1] or v[2]}, alarms


def test_batches_emits_and_restarts_give_the_per_event_reference_results():
    """The batched fold (counters summed per batch, incremental snapshot, in-memory views rebuilt after a
    reload) ends with the same state and the same latest observations as per-event folding with one emit."""
    import random

    from shared.stream import State

    events = _random_lifecycles(7)
    ref_states, ref_out = run_in_memory(DossierKpiProcessor(), events, NOW)
    rnd = random.Random(1)
    proc = DossierKpiProcessor()
    states: dict[int, State] = {}
    out: list[EncodedEvent] = []
    for p in range(4):
        mine = [e for e in events if e.partition == p]
        i = 0
        while i < len(mine):
            n = rnd.randrange(1, 25)
            st = states.setdefault(p, State(p))
            proc.apply_batch(mine[i : i + n], st)
            i += n
            if rnd.random() < 0.5:
                out.extend(proc.emit(st, NOW - timedelta(days=rnd.choice((0, 0, 3)))))
            if rnd.random() < 0.1:  # a restart: the runtime reloads the state into a new State and worker
                proc.forget_emitted([p])
                states[p] = State(p, orjson.loads(orjson.dumps(st.snapshot())))
                proc = DossierKpiProcessor()
        out.extend(proc.emit(states[p], NOW))
    facts = ("c|", "o|", "a|")
    for p, ref in ref_states.items():
        assert {
            k: v for k, v in orjson.loads(orjson.dumps(states[p].snapshot())).items() if k.startswith(facts)
        } == {k: v for k, v in orjson.loads(orjson.dumps(ref.snapshot())).items() if k.startswith(facts)}
    got_kpis, got_alarms = _latest(out)
    ref_kpis, ref_alarms = _latest(ref_out)
    # Snapshots emitted at an earlier ``now`` are of that day; compare those of ``NOW``'s windows.
    snapshots = ("dossier.open_within_deadline", "dossier.overdue_open", "dossier.progress_766_points")
    got_kpis = {k: v for k, v in got_kpis.items() if k[0] not in snapshots or k[3] in (DAY_10, MONTH)}
    assert got_kpis == ref_kpis
    assert got_alarms == ref_alarms and ref_alarms
    assert any(k[0] == "dossier.overdue_open" for k in ref_kpis)


def test_state_of_the_previous_layout_is_taken_over():
    """Per-key change markers and pending alarms of the earlier state layout are still published."""
    from shared.stream import State

    proc = DossierKpiProcessor()
    states, _ = run_in_memory(proc, life(), NOW)
    data = dict(states[0].snapshot())
    data.pop("dirty", None)
    data["x|c|received|agency|UBND-BD-01|m:2025-03"] = 1
    data["pa|000000000001"] = {
        "alarm_id": "dossier:overdue:D5",
        "domain": "dossier",
        "alarm_type": "dossier_overdue",
        "state": "raised",
        "severity": "minor",
        "source_id": "D5",
        "district": "BD",
        "commune": "BD-01",
        "at": t("2025-03-06T00:05"),
        "message": "overdue",
    }
    data["snap_dirty"] = 1
    out = list(DossierKpiProcessor().emit(State(0, data), NOW))
    got = [(orjson.loads(e.value).get("kpi"), orjson.loads(e.value).get("state")) for e in out]
    assert ("dossier.received", None) in got and (None, "raised") in got


def test_observations_are_exactly_what_the_contract_model_dumps():
    from shared.contracts.dossier import KPI_EVENT

    _, out = run_in_memory(DossierKpiProcessor(), life(), NOW)
    kpis = [e for e in out if e.topic == KPI_EVENT.topic]
    assert kpis
    for e in kpis:
        assert orjson.dumps(KPI_EVENT.model.model_validate_json(e.value).model_dump(mode="json")) == e.value
        # an observation's CloudEvents time is when it was observed
        assert headers_dict(e.headers)["ce_time"].decode() == orjson.loads(e.value)["observed_at"]


def test_kpi_definitions_declare_how_long_late_events_revise_a_window():
    """The city keeps a window as long as its KPI definition says the source may revise it; the dossier
    processor changes days and months for its (default) day and month retention."""
    from services.dossier.settings import DossierSettings
    from shared.kpis import all_definitions

    settings = DossierSettings()
    dossier = [d for d in all_definitions().values() if d.domain == "dossier"]
    assert dossier
    for d in dossier:
        for w in d.windows:
            days = settings.kpi_day_retention_days if w == 86400 else settings.kpi_month_retention_days
            assert d.revisable_for(w) >= days * 86400, (d.id, w)
