"""Decision 766/QĐ-TTg scorecard: a scenario whose every indicator is worked out by hand below.

Points per indicator as published with the Decision (docs/dossier-766.md): transparency 18 (procedures published on
time 4, status synchronised to the national portal 6, the rest 8 unread here), progress 20, digitisation 22
(electronic results 6, digitised dossiers 4, the rest 12 unread here), online service 22 (fully online 12, online
payment 10), satisfaction 18 (feedback handled on time 6, satisfaction with feedback handling 6, satisfaction
with dossier handling 6: (dossiers − rated unsatisfied, complained about or overdue) / dossiers).
"""

from __future__ import annotations

from datetime import date

import pytest

from services.dossier.index766 import GROUPS, INDICATORS, Dossier766, period_bounds, scorecards

A = {"agency_code": "UBND-BD-01", "admin_unit": "BD-01", "district": "BD"}


def dz(code, **kw):
    return Dossier766(code=code, **A, **kw)


# Six dossiers received in March 2026 by one commune agency:
DOSSIERS = [
    # D1 online, fully-online procedure, fees paid online, due 10 Mar, resolved 9 Mar (early), digitised, e-signed
    # result, synchronised on time.
    dz("D1", received_on=date(2026, 3, 2), channel="online", fully_online_procedure=True, has_fees=True,
       paid_online=True, due_date=date(2026, 3, 10), finished_on=date(2026, 3, 9), digitised=True,
       result_esigned=True, synced_on_time=True),
    # D2 at the counter, fully-online procedure, fees paid at the counter, resolved on its due day, digitised, paper
    # result, synchronised, rated "unsatisfied".
    dz("D2", received_on=date(2026, 3, 3), channel="in_person", fully_online_procedure=True, has_fees=True,
       due_date=date(2026, 3, 12), finished_on=date(2026, 3, 12), digitised=True, synced_on_time=True,
       rated_unsatisfied=True),
    # D3 online, partly-online procedure without fees, due 5 Mar, resolved 6 Mar (late), e-signed, not synchronised.
    dz("D3", received_on=date(2026, 3, 2), channel="online", fully_online_procedure=False, has_fees=False,
       due_date=date(2026, 3, 5), finished_on=date(2026, 3, 6), result_esigned=True),
    # D4 online, fully-online, fees not yet paid, open, due 31 Mar, digitised, synchronised, complained about.
    dz("D4", received_on=date(2026, 3, 16), channel="online", fully_online_procedure=True, has_fees=True,
       due_date=date(2026, 3, 31), digitised=True, synced_on_time=True, complained=True),
    # D5 at the counter, fees unpaid, open, due 20 Mar, documents requested 25 Mar (after the due date: the clock
    # does not stop, it is overdue), digitised, synchronised.
    dz("D5", received_on=date(2026, 3, 9), channel="in_person", fully_online_procedure=False, has_fees=True,
       due_date=date(2026, 3, 20), paused_since=date(2026, 3, 25), digitised=True, synced_on_time=True),
    # D6 by post, no fees, open, due 27 Mar, documents requested 18 Mar (in time: clock stopped, within deadline),
    # synchronised.
    dz("D6", received_on=date(2026, 3, 10), channel="postal", fully_online_procedure=False, has_fees=False,
       due_date=date(2026, 3, 27), paused_since=date(2026, 3, 18), synced_on_time=True),
]  # fmt: skip

INPUTS = {
    # outside systems: 9 of 10 procedures published on time; 3 of 4 feedback items handled on time; 2 of 4 without
    # an "unsatisfied" answer or a late handling
    "procedures_published_on_time": (9, 10),
    "feedback_handled_on_time": (3, 4),
    "feedback_satisfaction": (2, 4),
}


def approx(x):
    return pytest.approx(x, abs=1e-9)


def test_catalogue_adds_up_to_the_five_groups_and_100_points():
    assert GROUPS == {
        "transparency": 18,
        "progress": 20,
        "digitisation": 22,
        "online_service": 22,
        "satisfaction": 18,
    }
    for g, pts in GROUPS.items():
        assert sum(i.points for i in INDICATORS if i.group == g) == pts, g
    assert sum(i.points for i in INDICATORS) == 100


def test_march_2026_scorecard_by_hand():
    cards = scorecards(DOSSIERS, "2026-03", date(2026, 4, 2), {("agency", "UBND-BD-01"): INPUTS})
    c = cards[("agency", "UBND-BD-01")]
    p = c.indicators
    # status synchronised on time: D1, D2, D4, D5, D6 of 6 received → 6 × 5/6 = 5
    assert p["status_synced_on_time"] == approx(5.0)
    # procedures published on time (input) 4 × 9/10 = 3.6
    assert p["procedures_published_on_time"] == approx(3.6)
    assert p["transparency_other"] is None and p["digitisation_other"] is None  # no input: no made-up value
    # progress, judged on 31 Mar: finished D1 (early), D2 (on time), D3 (late); open D4 (due 31 Mar: within),
    # D5 (overdue: its pause came after the due date), D6 (paused in time: within) → (2 + 2) / (3 + 3) → 20 × 4/6
    assert p["progress_on_time"] == approx(20 * 4 / 6)
    # electronic results: finished D1, D2, D3; e-signed D1, D3 → 6 × 2/3 = 4
    assert p["electronic_results"] == approx(4.0)
    # digitised: D1, D2, D4, D5 of 6 → 4 × 4/6
    assert p["dossiers_digitised"] == approx(4 * 4 / 6)
    # fully online: fully-online procedures D1, D2, D4; online D1, D4 → 12 × 2/3 = 8
    assert p["fully_online"] == approx(8.0)
    # online payment: fee-bearing D1, D2, D4, D5; paid online D1 → 10 × 1/4 = 2.5 (the old processor divided by
    # the 2 fee payments recorded, D1 and D2: 5.0)
    assert p["online_payment"] == approx(2.5)
    # satisfaction with dossiers: 6 minus D2 (unsatisfied), D3 (late), D4 (complaint), D5 (overdue) = 2 → 6 × 2/6
    assert p["dossier_satisfaction"] == approx(2.0)
    assert p["feedback_handled_on_time"] == approx(4.5)  # 6 × 3/4
    assert p["feedback_satisfaction"] == approx(3.0)  # 6 × 2/4
    # groups: 3.6 + 5 = 8.6; 13.33...; 4 + 2.67 = 6.67; 8 + 2.5 = 10.5; 4.5 + 3 + 2 = 9.5; total 48.6 of the
    # 80 points the data covers (100 − 8 − 12 not given)
    assert c.groups["transparency"] == approx(8.6)
    assert c.groups["progress"] == approx(40 / 3)
    assert c.groups["digitisation"] == approx(4 + 8 / 3)
    assert c.groups["online_service"] == approx(10.5)
    assert c.groups["satisfaction"] == approx(9.5)
    assert c.total == approx(48.6)
    assert c.covered_points == 80
    assert set(c.missing) == {"transparency_other", "digitisation_other"}


def test_every_admin_level_and_period():
    cards = scorecards(DOSSIERS, "2026-Q1", date(2026, 4, 2))
    assert set(cards) == {
        ("agency", "UBND-BD-01"),
        ("commune", "BD-01"),
        ("district", "BD"),
        ("city", "HN"),
    }
    # The quarter holds the same dossiers and is judged on 31 Mar too: same event points as March.
    assert cards[("city", "HN")].indicators["progress_on_time"] == approx(20 * 4 / 6)
    # The year 2026 observed on 2 Apr: D4 (due 31 Mar) is now overdue too → (2 + 1) / 6 → 20 × 3/6 = 10.
    year = scorecards(DOSSIERS, "2026", date(2026, 4, 2))[("district", "BD")]
    assert year.indicators["progress_on_time"] == approx(10.0)
    # Without outside inputs only event indicators count: 100 − 4 − 8 − 12 − 6 − 6 = 64 points covered.
    assert year.covered_points == 64
    # February holds nothing: no denominator, no points (never a made-up 0 or 100 %).
    feb = scorecards(DOSSIERS, "2026-02", date(2026, 4, 2))[("agency", "UBND-BD-01")]
    assert feb.total == 0 and feb.covered_points == 0


def test_period_bounds():
    assert period_bounds("2026-02") == (date(2026, 2, 1), date(2026, 2, 28))
    assert period_bounds("2026-Q4") == (date(2026, 10, 1), date(2026, 12, 31))
    assert period_bounds("2027") == (date(2027, 1, 1), date(2027, 12, 31))
    with pytest.raises(ValueError, match="YYYY, YYYY-Qn or YYYY-MM"):
        period_bounds("2026-Q5")


def test_an_input_outside_its_range_is_refused():
    from services.dossier.index766 import scorecard

    with pytest.raises(ValueError, match="procedures_published_on_time: numerator 11"):
        scorecard({}, {"procedures_published_on_time": (11, 10)})
