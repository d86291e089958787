"""The dossier KPI processor's fixes of issue #37, each on a hand-worked case that fails on the old code."""

from __future__ import annotations

import orjson

from services.dossier.processors import DossierKpiProcessor
from shared.contracts.dossier import DossierOverdue
from shared.stream import run_in_memory
from shared.testing import received
from tests.dossier.test_processors import BASE, MONTH, NOW, kpis, status, t

DAY_10 = "2025-03-10T00:00:00+07:00"


def test_a_documents_request_on_an_overdue_dossier_keeps_it_overdue_and_alarmed():
    # D9 due Wed 5 Mar, overdue notice Thu 6 Mar, then (a pre-#37 service) documents requested Fri 7 Mar with the
    # clock "paused". Legally the delay stands: the alarm stays raised and on 10 Mar the dossier is open and
    # overdue, so 766 progress (month) = (0 finished on time + 0 open within) / (0 finished + 1 open) = 0/1.
    # The old processor cleared the alarm, counted D9 within deadline and gave 1/1 = 20 points.
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
        status(
            "D9", 5, "2025-03-07T09:00", prev=2, action="request_documents", due="2025-03-05", paused=True
        ),
    ]
    _, out = run_in_memory(DossierKpiProcessor(), events, NOW)
    alarms = [orjson.loads(e.value) for e in out if e.topic == "ioc.dossier.alarms"]
    assert [a["state"] for a in alarms] == ["raised"]
    k = kpis(out)
    assert k[("dossier.overdue_open", "agency", "UBND-BD-01", DAY_10)]["num"] == 1
    assert k[("dossier.open_within_deadline", "agency", "UBND-BD-01", DAY_10)]["num"] == 0
    prog = k[("dossier.progress_766_points", "agency", "UBND-BD-01", MONTH)]
    assert (prog["num"], prog["den"]) == (0, 1)


def test_a_pause_within_the_deadline_still_stops_the_clock():
    # D8 due 5 Mar, documents requested 4 Mar (in time, clock paused): on 10 Mar within deadline, 1/1.
    events = [
        status("D8", 2, "2025-03-03T09:00", due="2025-03-05"),
        status(
            "D8", 5, "2025-03-04T09:00", prev=2, action="request_documents", due="2025-03-05", paused=True
        ),
    ]
    _, out = run_in_memory(DossierKpiProcessor(), events, NOW)
    k = kpis(out)
    assert k[("dossier.open_within_deadline", "agency", "UBND-BD-01", DAY_10)]["num"] == 1
    prog = k[("dossier.progress_766_points", "agency", "UBND-BD-01", MONTH)]
    assert (prog["num"], prog["den"]) == (1, 1)


def test_online_payment_divides_by_dossiers_of_fee_bearing_procedures():
    # Decision 766 online payment (10 points): dossiers with fees paid online / dossiers of procedures with fees.
    # F1 fees paid online; F2 fees paid at the counter; F3 fees taken at intake (no pay_fees event); F4 unpaid;
    # N1 a procedure without fees (out of both). Ratio 1/4 → 10 × 1/4 = 2.5 points.
    # The old processor divided by pay_fees events (F1, F2): 1/2 = 5.0 points.
    ev = []
    for code in ("F1", "F2", "F3", "F4"):
        ev.append(status(code, 2, "2025-03-03T09:00", due="2025-03-20"))
    ev.append(status("F1", 6, "2025-03-04T09:00", prev=2, action="request_fees", due="2025-03-20"))
    ev.append(
        status("F1", 4, "2025-03-04T10:00", prev=6, action="pay_fees", due="2025-03-20", paid_online=True)
    )
    ev.append(status("F2", 6, "2025-03-04T09:00", prev=2, action="request_fees", due="2025-03-20"))
    ev.append(
        status("F2", 4, "2025-03-04T10:00", prev=6, action="pay_fees", due="2025-03-20", paid_online=False)
    )
    n1 = status("N1", 2, "2025-03-03T09:00", due="2025-03-20")
    n1.data["has_fees"] = False
    ev.append(n1)
    _, out = run_in_memory(DossierKpiProcessor(), ev, NOW)
    k = kpis(out)
    ratio = k[("dossier.online_payment_ratio", "agency", "UBND-BD-01", MONTH)]
    assert (ratio["num"], ratio["den"]) == (1, 4)
    points = [
        orjson.loads(e.value)
        for e in out
        if b"online_payment_points" in e.value
        and b'"scope_level":"agency"' in e.value
        and MONTH.encode() in e.value
    ]
    assert points[-1]["value"] == 2.5
