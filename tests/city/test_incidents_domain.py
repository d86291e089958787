"""Golden tests of the incident workflow's pure rules (services/city/incidents.py): every transition worked out
by hand from the rules written in docs/console.md ("Incident workflow") and the procedures file."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.city.incidents import (
    Case,
    EscalationPolicy,
    StepDone,
    WorkflowError,
    assign,
    check_clear,
    check_free_text,
    choose_procedure,
    comment,
    escalation_due,
    escalation_target,
    find_personal_data,
    load_playbook,
    parse_playbook,
    shelf_expired,
    tick_step,
)

PLAYBOOK = load_playbook()
T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def _alarm(alarm_type, domain, severity, minute=0):
    return {
        "alarm_type": alarm_type,
        "domain": domain,
        "severity": severity,
        "raised_at": T0 + timedelta(minutes=minute),
    }


def _kind(fn):
    try:
        fn()
    except WorkflowError as exc:
        return exc.kind
    return "ok"


# Procedures --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("alarms", "expected"),
    [
        # the worst alarm is the feeder outage: the power-outage procedure, though a kiosk is down too
        (
            [_alarm("kiosk_offline", "kiosk", "minor"), _alarm("feeder_outage", "meter", "critical", 1)],
            "power-outage",
        ),
        # worst severity first: a critical kiosk alarm outranks a minor feeder outage
        (
            [_alarm("kiosk_offline", "kiosk", "critical"), _alarm("feeder_outage", "meter", "minor")],
            "kiosk-service",
        ),
        # same severity: the oldest alarm decides
        (
            [_alarm("paper_jam", "kiosk", "major", 3), _alarm("signal_flash", "traffic", "major", 1)],
            "traffic-signal",
        ),
        # "tamper*" is a prefix
        ([_alarm("tamper_magnetic", "meter", "major")], "fraud-tamper"),
        # no procedure lists this type, the traffic one lists the domain
        ([_alarm("lamp_out", "traffic", "minor")], "traffic-signal"),
        # a type match anywhere beats a domain match of a worse alarm
        (
            [_alarm("lamp_out", "traffic", "critical"), _alarm("dossier_overdue", "dossier", "minor")],
            "dossier-overdue",
        ),
        # nothing matches
        ([_alarm("something_else", "citytest", "major")], "default"),
        ([], "default"),
    ],
)
def test_an_incident_takes_the_procedure_of_its_worst_then_oldest_alarm(alarms, expected):
    assert choose_procedure(alarms, PLAYBOOK).id == expected


def test_the_procedures_file_is_validated():
    good = {
        "procedures": [
            {
                "id": "default",
                "title": {"vi": "a", "en": "a"},
                "steps": [{"id": "s", "text": {"vi": "x", "en": "x"}}],
            }
        ],
        "escalation": {
            "minutes": {"critical": [5, 15]},
            "levels": [{"vi": "1", "en": "1"}, {"vi": "2", "en": "2"}],
        },
    }
    assert parse_playbook(good).escalation.ladders == {"critical": (5.0, 15.0)}
    broken = [
        ({**good, "procedures": [{**good["procedures"][0], "id": "other"}]}, "'default'"),
        ({**good, "escalation": {**good["escalation"], "minutes": {"critical": [15, 5]}}}, "ascending"),
        ({**good, "escalation": {**good["escalation"], "minutes": {"urgent": [5]}}}, "unknown severity"),
        (
            {**good, "escalation": {**good["escalation"], "levels": [{"vi": "1", "en": "1"}]}},
            "2 levels are reachable",
        ),
        ({**good, "procedures": [{**good["procedures"][0], "steps": []}]}, "at least one step"),
        ({**good, "procedures": [{**good["procedures"][0], "title": {"en": "only English"}}]}, "Vietnamese"),
    ]
    for data, message in broken:
        with pytest.raises(ValueError, match=message):
            parse_playbook(data)


def test_the_shipped_procedures_have_steps_in_both_languages_and_a_mandatory_last_step():
    for p in PLAYBOOK.procedures:
        assert p.steps[-1].mandatory, p.id  # closing a case always confirms something
        for s in p.steps:
            assert s.text["vi"] and s.text["en"]


# Transitions -------------------------------------------------------------------------------------------------
POWER = PLAYBOOK.get("power-outage")
assert POWER is not None
# power-outage: confirm-scope (M), notify-evn (M), traffic-police (optional), inform-public (optional),
# confirm-restored (M)
OPEN = Case("INC-1", True, POWER)


def _done(case, *steps):
    return replace(case, done=tuple(StepDone(s, "op", T0) for s in steps))


def test_assignment_transitions():
    sup = {"supervisor": True}
    # golden table: (case, who, assignee and its role) → outcome
    assert assign(OPEN, **sup, assignee="op1", assignee_role="operator").action == "incident.assign"
    a = assign(replace(OPEN, assignee="op1"), **sup, assignee="op2", assignee_role="operator")
    assert (a.action, a.detail) == ("incident.reassign", {"from": "op1", "to": "op2"})
    # a supervisor may take it too
    assert assign(OPEN, **sup, assignee="sup", assignee_role="supervisor").detail == {"to": "sup"}
    assert (
        _kind(lambda: assign(OPEN, supervisor=False, assignee="op1", assignee_role="operator")) == "forbidden"
    )
    assert (
        _kind(lambda: assign(replace(OPEN, assignee="op1"), **sup, assignee="op1", assignee_role="operator"))
        == "conflict"
    )
    assert _kind(lambda: assign(OPEN, **sup, assignee="boss", assignee_role="leader")) == "invalid"
    assert _kind(lambda: assign(OPEN, **sup, assignee="ghost", assignee_role=None)) == "invalid"
    assert (
        _kind(lambda: assign(replace(OPEN, is_open=False), **sup, assignee="op1", assignee_role="operator"))
        == "conflict"
    )


def test_steps_are_ticked_in_order_and_optional_ones_may_be_skipped():
    assert tick_step(OPEN, role="operator", step_id="confirm-scope").detail == {
        "procedure": "power-outage",
        "step": "confirm-scope",
        "mandatory": True,
    }
    # notify-evn waits for confirm-scope
    with pytest.raises(WorkflowError) as err:
        tick_step(OPEN, role="operator", step_id="notify-evn")
    assert err.value.kind == "conflict" and err.value.details == [
        {"step": "notify-evn", "waiting_for": ["confirm-scope"]}
    ]
    # confirm-restored waits for both mandatory steps before it, not for the optional ones
    with pytest.raises(WorkflowError) as err:
        tick_step(_done(OPEN, "confirm-scope"), role="operator", step_id="confirm-restored")
    assert err.value.details[0]["waiting_for"] == ["notify-evn"]
    two = _done(OPEN, "confirm-scope", "notify-evn")
    assert tick_step(two, role="operator", step_id="confirm-restored").detail["mandatory"] is True
    assert tick_step(two, role="operator", step_id="inform-public").detail["mandatory"] is False
    assert _kind(lambda: tick_step(two, role="operator", step_id="notify-evn")) == "conflict"  # done already
    assert _kind(lambda: tick_step(two, role="operator", step_id="call-mayor")) == "not_found"
    assert _kind(lambda: tick_step(two, role="leader", step_id="confirm-restored")) == "forbidden"
    assert (
        _kind(lambda: tick_step(replace(two, is_open=False), role="operator", step_id="confirm-restored"))
        == "conflict"
    )


def test_clearing_needs_the_mandatory_steps_or_a_supervisors_reason():
    op = {"role": "operator", "supervisor": False}
    sup = {"role": "supervisor", "supervisor": True}
    # nothing done: the three mandatory steps are missing
    with pytest.raises(WorkflowError) as err:
        check_clear(OPEN, **op, override_reason=None)
    assert err.value.kind == "conflict"
    assert err.value.details == [
        {"procedure": "power-outage", "missing_steps": ["confirm-scope", "notify-evn", "confirm-restored"]}
    ]
    assert "a supervisor may clear it over the procedure" in err.value.message
    # a supervisor is told how to override; an operator may not; an override says why
    with pytest.raises(WorkflowError) as err:
        check_clear(OPEN, **sup, override_reason=None)
    assert err.value.kind == "conflict" and "clear-override" in err.value.message
    assert _kind(lambda: check_clear(OPEN, **op, override_reason="EVN says fixed")) == "forbidden"
    assert _kind(lambda: check_clear(OPEN, **sup, override_reason="  ")) == "invalid"
    assert _kind(lambda: check_clear(OPEN, **sup, override_reason="x" * 501)) == "invalid"
    a = check_clear(_done(OPEN, "confirm-scope"), **sup, override_reason="EVN confirmed by phone")
    assert (a.action, a.detail["missing_steps"], a.detail["reason"]) == (
        "incident.clear_override",
        ["notify-evn", "confirm-restored"],
        "EVN confirmed by phone",
    )
    # an override reason is free text too: no personal data
    assert _kind(lambda: check_clear(OPEN, **sup, override_reason="caller 0912345678 says ok")) == "invalid"
    # every mandatory step done, the optional ones skipped: anyone who works incidents may clear
    done = _done(OPEN, "confirm-scope", "notify-evn", "confirm-restored")
    assert check_clear(done, **op, override_reason=None).action == "incident.clear"
    # (a supervisor's reason given when nothing is missing is no override)
    assert check_clear(done, **sup, override_reason="all done").action == "incident.clear"
    assert (
        _kind(lambda: check_clear(done, role="leader", supervisor=False, override_reason=None)) == "forbidden"
    )


def test_comments():
    assert comment(OPEN, role="operator", text=" crew on site ").detail == {"length": 12}
    assert comment(
        replace(OPEN, is_open=False), role="operator", text="review: cause was a fallen tree"
    ).action == ("incident.comment")
    assert _kind(lambda: comment(OPEN, role="operator", text="   ")) == "invalid"
    assert _kind(lambda: comment(OPEN, role="leader", text="hello")) == "forbidden"
    assert _kind(lambda: comment(OPEN, role="operator", text="x" * 2001)) == "invalid"


# Escalation --------------------------------------------------------------------------------------------------
POLICY = PLAYBOOK.escalation  # critical 5/15/30 min, major 10/30/60, minor 30/120, warning 60


@pytest.mark.parametrize(
    ("severity", "waited", "level"),
    [
        ("critical", timedelta(minutes=4, seconds=59), 0),
        ("critical", timedelta(minutes=5), 1),  # a rung is passed once its time is reached
        ("critical", timedelta(minutes=20), 2),
        ("critical", timedelta(hours=5), 3),  # the ladder's top
        ("major", timedelta(minutes=9), 0),
        ("major", timedelta(minutes=30), 2),
        ("minor", timedelta(minutes=119), 1),
        ("warning", timedelta(minutes=60), 1),
        ("warning", timedelta(days=1), 1),
    ],
)
def test_escalation_levels_follow_the_ladder_of_the_severity(severity, waited, level):
    assert escalation_target(severity, T0, T0 + waited, POLICY) == level


def test_escalation_only_rises_and_stops_once_acknowledged():
    # level 0, critical, unacknowledged for 16 minutes: straight to level 2 in one recorded step
    a = escalation_due(0, "critical", T0, T0 + timedelta(minutes=16), POLICY)
    assert a is not None and (a.action, a.detail["from"], a.detail["to"]) == ("incident.escalate", 0, 2)
    assert a.detail["at"] == "2026-12-07T10:16:00+00:00"
    assert escalation_due(2, "critical", T0, T0 + timedelta(minutes=29), POLICY) is None
    assert escalation_due(2, "critical", T0, T0 + timedelta(minutes=30), POLICY).detail["to"] == 3
    # acknowledged (no unacknowledged alarm): nothing, and the level reached is never lowered
    assert escalation_due(2, "critical", None, T0 + timedelta(hours=3), POLICY) is None
    # a new alarm joins an escalated incident: its own clock starts, the level stays
    assert (
        escalation_due(2, "critical", T0 + timedelta(hours=1), T0 + timedelta(hours=1, minutes=6), POLICY)
        is None
    )
    # a severity without a ladder never escalates
    assert escalation_due(0, "major", T0, T0 + timedelta(days=1), EscalationPolicy({})) is None


def test_a_shelf_expires_at_its_end():
    assert not shelf_expired(None, T0)
    assert not shelf_expired(T0 + timedelta(seconds=1), T0)
    assert shelf_expired(T0, T0)
    assert shelf_expired(T0 - timedelta(minutes=1), T0)


# Personal data in comments -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "found"),
    [
        # Decree 137/2015/ND-CP art. 7: the personal identification number is 12 digits (CCCD)
        ("citizen 001095001234 called", [("citizen id number (12 digits)", 8)]),
        ("id 001 095 001 234", [("citizen id number (12 digits)", 3)]),
        # old identity card (CMND): 9 digits
        ("cmnd 123456789", [("identity card number (9 digits)", 5)]),
        # mobile numbers, 10 digits from 03/05/07/08/09 (Decision 798/QD-BTTTT), or +84 without the 0
        ("call 0912 345 678.", [("phone number", 5)]),
        ("call 0912-345-678", [("phone number", 5)]),
        ("+84 912 345 678", [("phone number", 0)]),
        ("84912345678", [("phone number", 0)]),
        # a Hanoi landline: 024 + 8 digits
        ("office 024 3825 1234", [("phone number", 7)]),
        # the same number as written before the 2017 area-code change: 04 + 8 digits
        ("office 04 3825 1234", [("phone number", 7)]),
        # a VoIP number (libphonenumber's VN plan: 672 + 6 digits after the 0)
        ("call 0672 123 456", [("phone number", 5)]),
        ("mail nguyen.van.a@example.vn", [("e-mail address", 5)]),
        # operational text that is not personal data
        ("kiosk K-123456789 offline", []),
        ("INC-HK-20261207T100000-0042 joined", []),
        ("feeder F-0012: 1 234 meters without supply since 10:30 on 2026-12-07", []),
        ("EVN ticket 2026120700123", []),  # 13 digits
        ("0812 is the room", []),
        ("", []),
    ],
)
def test_obvious_personal_data_is_found(text, found):
    assert find_personal_data(text) == found


def test_refusing_personal_data_never_echoes_it():
    with pytest.raises(WorkflowError) as err:
        check_free_text("the caller 0912345678, id 001095001234", "text")
    assert err.value.kind == "invalid"
    said = repr(err.value.details) + err.value.message
    assert "0912345678" not in said and "001095001234" not in said
    assert [d["reason"] for d in err.value.details] == [
        "looks like a phone number at character 11",
        "looks like a citizen id number (12 digits) at character 26",
    ]


# Compared with libphonenumber (Google's numbering-plan data, an independent implementation) -------------------
def _valid_vn_numbers(rng, count: int) -> list[str]:
    """Random Vietnamese numbers libphonenumber holds valid for a person (mobile, fixed line, VoIP), in E.164."""
    import phonenumbers

    personal = {
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
        phonenumbers.PhoneNumberType.VOIP,
    }
    out: list[str] = []
    while len(out) < count:
        national = str(rng.randint(1, 9)) + "".join(
            rng.choice("0123456789") for _ in range(rng.choice((8, 9)))
        )
        n = phonenumbers.parse("+84" + national)
        if phonenumbers.is_valid_number(n) and phonenumbers.number_type(n) in personal:
            out.append(phonenumbers.format_number(n, phonenumbers.PhoneNumberFormat.E164))
    return out


def _messy(rng, e164: str) -> str:
    """The number as people write it: national or international, grouped with spaces, dots or hyphens."""
    national = "0" + e164[3:]
    written = rng.choice([national, e164, e164[1:], national])
    sep = rng.choice(["", " ", ".", "-"])
    if sep:
        head = 4 if written.startswith("0") else 3
        rest = written[head:]
        written = written[:head] + sep + sep.join(rest[i : i + 3] for i in range(0, len(rest), 3))
    return written


def test_every_number_libphonenumber_holds_valid_is_refused():
    """Recall against libphonenumber: of 3,000 random valid Vietnamese mobile, fixed-line and VoIP numbers,
    written in mixed formats inside operational text, every one is found (over-refusing a near miss is fine)."""
    import random

    pytest.importorskip("phonenumbers")
    rng = random.Random(41)
    missed = []
    for e164 in _valid_vn_numbers(rng, 3000):
        written = _messy(rng, e164)
        text = f"feeder F-0012 · caller {written}, crew at 10:30"
        if ("phone number", 23) not in find_personal_data(text):
            missed.append(written)
    assert missed == []


def test_what_libphonenumber_finds_in_messy_text_is_refused_too():
    """libphonenumber's own matcher over generated operator notes (numbers among asset ids, dates, counts and
    kWh figures): every number it finds that is a person's, the check refuses at the same place."""
    import random

    phonenumbers = pytest.importorskip("phonenumbers")
    rng = random.Random(7)
    numbers = _valid_vn_numbers(rng, 300)
    noise = [
        "K-123456789",
        "2026-12-07 10:30",
        "1 234 kWh",
        "INC-HK-20261207T100000-0042",
        "feeder F-0012",
        "42 meters",
    ]
    for i, e164 in enumerate(numbers):
        parts = [*rng.sample(noise, 3), f"call {_messy(rng, e164)}"]
        rng.shuffle(parts)
        text = "; ".join(parts)
        found = {offset for kind, offset in find_personal_data(text) if kind == "phone number"}
        for m in phonenumbers.PhoneNumberMatcher(text, "VN"):
            kind = phonenumbers.number_type(m.number)
            if kind in (phonenumbers.PhoneNumberType.TOLL_FREE, phonenumbers.PhoneNumberType.PREMIUM_RATE):
                continue
            start = m.start + (1 if text[m.start] == "(" else 0)
            assert start in found, (i, text, m.raw_string)
