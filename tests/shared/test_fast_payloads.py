"""The msgspec first try at validating payloads never accepts what the contract refuses, and gives exactly what
pydantic-core gives for what it accepts (same keys, same order, same values and types)."""

from __future__ import annotations

import functools
import json
import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shared.contracts import EVENT_TYPES
from shared.contracts.cloudevents import decode_batch, encode_many, fast_payload_decoder, payload_validator
from shared.contracts.common import kpi_observed_payload
from shared.contracts.fast_payloads import Unsupported, _body, fast_payloads

REFUSED = object()
SUPPORTED = sorted(name for name, etype in EVENT_TYPES.items() if fast_payload_decoder(etype) is not None)
STATUS = EVENT_TYPES["ioc.dossier.status.changed.v1"]


def _exact(payload: dict) -> list[tuple[str, str]]:
    """Keys in order with the repr of each value: 1 and 1.0, 0.0 and -0.0 are different here."""
    return [(k, repr(v)) for k, v in payload.items()]


def _by_pydantic(etype, values: list[bytes]) -> list:
    one = payload_validator(etype)[1]
    out = []
    for v in values:
        try:
            out.append(one.validate_json(v))
        except (ValidationError, ValueError):
            out.append(REFUSED)
    return out


def _assert_never_looser(etype, values: list[bytes]) -> bool:
    """The fast decoder's answer for ``values`` agrees with pydantic-core's; True if it answered at all."""
    got = fast_payload_decoder(etype).decode(values)
    want = _by_pydantic(etype, values)
    if got is None:
        return False
    assert REFUSED not in want, [v for v, w in zip(values, want, strict=True) if w is REFUSED]
    assert [_exact(g) for g in got] == [_exact(w) for w in want]
    return True


# payloads generated from the validator's own schema -----------------------------------------------------------


def _value(schema: dict) -> st.SearchStrategy:
    kind = schema["type"]
    if kind == "nullable":
        return st.none() | _value(schema["schema"])
    if kind == "literal":
        return st.sampled_from(schema["expected"])
    if kind == "bool":
        return st.booleans()
    if kind == "int":
        lo = schema.get("ge", schema["gt"] + 1 if "gt" in schema else -(2**40))
        hi = schema.get("le", schema["lt"] - 1 if "lt" in schema else 2**40)
        return st.integers(lo, hi)
    if kind == "float":
        return st.floats(
            schema.get("ge", schema.get("gt")),
            schema.get("le", schema.get("lt")),
            exclude_min="gt" in schema,
            exclude_max="lt" in schema,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "str":
        lo, hi = schema.get("min_length", 0), schema.get("max_length", 40)
        if schema.get("pattern"):
            return st.from_regex(schema["pattern"], fullmatch=True).filter(lambda s: lo <= len(s) <= hi)
        return st.text(min_size=lo, max_size=min(hi, 40))
    if kind == "list":
        return st.lists(
            _value(schema["items_schema"]),
            min_size=schema.get("min_length", 0),
            max_size=min(schema.get("max_length", 5), 5),
        )
    raise AssertionError(kind)


@functools.cache
def _payloads(name: str) -> st.SearchStrategy:
    schema = payload_validator(EVENT_TYPES[name])[1].core_schema
    if schema["type"] == "function-after":
        schema = schema["schema"]
    required = {n: _value(f["schema"]) for n, f in schema["fields"].items() if f.get("required", True)}
    optional = {n: _value(f["schema"]) for n, f in schema["fields"].items() if not f.get("required", True)}
    return st.fixed_dictionaries(required, optional=optional)


# values that are wrong somewhere, or right in a way a looser decoder could get wrong
_AWKWARD = st.sampled_from(
    [
        None,
        "",
        "\x00",
        "a\x00b",
        "BD\x00",
        "\u0663",
        "\u0663\u0663\u0663\u0663-01-01",
        "2025-02-29",
        "2024-02-29",
        "2025-02-29T10:00:00Z",
        "2024-02-29T10:00:00+07:00",
        "2025-01-01T24:00:00Z",
        "2025-01-01 10:00:00",
        "2025-01-01T10:00:00",
        "2025-01-01T10:00:00.1234567891Z",
        "0000-01-01",
        "x" * 65,
        "UBND BD",
        "UBND-BD\n",
        "-leading",
        "é",
        "\ud7ff",
        0,
        -1,
        1,
        2**70,
        1.5,
        900.0,
        900,
        -0.0,
        1e308,
        True,
        False,
        [],
        {},
        ["x"],
    ]
)


@functools.cache
def _mutated(name: str) -> st.SearchStrategy:
    @st.composite
    def mutate(draw):
        payload = draw(_payloads(name))
        how = draw(st.sampled_from(["keep", "replace", "drop", "extra"]))
        if how == "replace" and payload:
            payload[draw(st.sampled_from(sorted(payload)))] = draw(
                _AWKWARD | st.text(max_size=8) | st.integers()
            )
        elif how == "drop" and payload:
            payload.pop(draw(st.sampled_from(sorted(payload))))
        elif how == "extra":
            payload[draw(st.sampled_from(["unknown", "Status", "at "]))] = draw(_AWKWARD)
        return payload

    return mutate()


@pytest.mark.parametrize("name", SUPPORTED)
@given(data=st.data())
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_a_batch_is_refused_or_decoded_exactly_as_pydantic_core_decodes_it(name, data):
    etype = EVENT_TYPES[name]
    batch = data.draw(st.lists(_payloads(name) | _mutated(name), min_size=1, max_size=4))
    _assert_never_looser(etype, [json.dumps(p, allow_nan=False).encode() for p in batch])


@pytest.mark.parametrize("name", SUPPORTED)
@given(data=st.data())
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_valid_payloads_take_the_fast_path(name, data):
    """Valid payloads (unicode digits and all: the patterns run in the same engine) are accepted, not left to
    pydantic-core; a decoder refusing everything would pass the test above."""
    etype = EVENT_TYPES[name]
    batch = data.draw(st.lists(_payloads(name), min_size=1, max_size=4))
    values = [json.dumps(p, allow_nan=False).encode() for p in batch]
    if REFUSED in _by_pydantic(etype, values):  # a cross-field rule the generator knows nothing of
        return
    assert _assert_never_looser(etype, values)


def test_the_hot_event_types_have_a_fast_decoder():
    hot = (
        "ioc.meter.reading.recorded.v1",
        "ioc.meter.feeder_supply.changed.v1",
        "ioc.kiosk.heartbeat.received.v1",
        "ioc.kiosk.session.ended.v1",
        "ioc.kiosk.state.changed.v1",
        "ioc.dossier.status.changed.v1",
        "ioc.dossier.deadline.missed.v1",
        "ioc.dossier.apology.issued.v1",
    )
    assert set(hot) <= set(SUPPORTED)


def test_the_bench_workload_and_every_example_take_the_fast_path():
    from bench.domain_processors import dossier_lifecycle_payloads

    values = [orjson.dumps(p) for p in dossier_lifecycle_payloads(300, prefix="fast")]
    assert _assert_never_looser(STATUS, values)
    for name in SUPPORTED:
        etype = EVENT_TYPES[name]
        if etype.examples:
            assert _assert_never_looser(etype, [orjson.dumps(e) for e in etype.examples]), name


@pytest.mark.parametrize(
    "text",
    [
        # duplicate keys: the last one counts in both
        b'"status": 3, "status": 2',
        # escapes and whitespace
        b'"status_name" : "re\\u0063eived" ,\n "status": 2',
        # a NUL inside a value that has a pattern, and in one that has none
        b'"status": 2, "dossier_code": "H26\\u0000X"',
        b'"status": 2, "status_name": "a\\u0000b"',
        # a lone surrogate, an over-long string, a date that is not in the calendar
        b'"status": 2, "status_name": "\\ud800"',
        b'"status": 2, "status_name": "' + b"x" * 33 + b'"',
        b'"status": 2, "due_date": "2025-02-29"',
        b'"status": 2, "at": "2025-01-01T10:00:00.000000000Z"',
        # numbers a looser decoder would coerce
        b'"status": 2.0',
        b'"status": true',
        b'"status": "2"',
        b'"status": 11',
        b'"status": 2, "has_fees": 0',
        b'"status": 2, "previous_status": null',
        b'"status": 2, "paid_online": null, "clock_paused": false',
    ],
)
def test_hand_written_json_gets_the_same_answer(text):
    example = dict(STATUS.examples[0])
    example.pop("status")
    head = orjson.dumps(example)[:-1]
    value = head + b"," + text + b"}"
    _assert_never_looser(STATUS, [value, orjson.dumps(STATUS.examples[0])])


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"null",
        b"[]",
        b"{}",
        b"1",
        b'{"a":1}',
        b"{",
        b'{"status": 2}',
        # two documents in one record: joined into the batch's array they would be two payloads
        orjson.dumps(STATUS.examples[0]) + b"," + orjson.dumps(STATUS.examples[0]),
        orjson.dumps(STATUS.examples[0]) + b"]",
    ],
)
def test_a_broken_record_makes_the_fast_path_refuse_the_batch(value):
    assert fast_payload_decoder(STATUS).decode([orjson.dumps(STATUS.examples[0]), value]) is None


def test_decode_batch_still_names_the_bad_record_and_keeps_the_good_ones():
    payloads = [dict(STATUS.examples[0], dossier_code=f"H-{i}") for i in range(3)]
    payloads[1]["status"] = 11
    records = []
    for i, ev in enumerate(encode_many(STATUS, payloads, source="/ioc/test")):
        records.append(
            type(
                "R",
                (),
                {
                    "headers": ev.headers,
                    "value": ev.value,
                    "key": ev.key,
                    "topic": "t",
                    "partition": 0,
                    "offset": i,
                    "timestamp": 0,
                },
            )()
        )
    events, failed = decode_batch(records)
    assert [e.data["dossier_code"] for e in events] == ["H-0", "H-2"]
    assert [(r.offset, reason) for r, reason in failed] == [
        (1, "ioc.dossier.status.changed.v1: status: Input should be less than or equal to 10")
    ]


def test_cross_field_rules_run_on_the_fast_path_too():
    session = EVENT_TYPES["ioc.kiosk.session.ended.v1"]
    assert fast_payload_decoder(session) is not None
    fields = payload_validator(session)[1].core_schema["schema"]["fields"]
    good = {
        "session_id": "s-1",
        "kiosk_id": "k-1",
        "journey": fields["journey"]["schema"]["expected"][0],
        "started_at": "2025-01-01T02:00:00Z",
        "ended_at": "2025-01-01T09:05:00+07:00",
        "outcome": "completed",
    }
    assert _assert_never_looser(session, [orjson.dumps(good)])
    values = [orjson.dumps(good), orjson.dumps(dict(good, ended_at="2025-01-01T08:59:59+07:00"))]
    assert _by_pydantic(session, values)[1] is REFUSED  # ends (01:59:59 UTC) before it started
    assert fast_payload_decoder(session).decode(values) is None


@pytest.mark.parametrize(
    "pattern",
    [
        r"^a.b$",
        r"^[^a]+$",
        r"^a",
        r"a$",
        r"^(?i)ab$",
        r"^a\x00b$",
        r"^[\x00-\x7f]+$",
        r"^\D+$",
        r"^a\$",
        r"^(?=a)a$",
        r"^a\bb$",
        r"^(a)\1$",
    ],
)
def test_patterns_that_could_match_nul_or_read_differently_get_no_fast_check(pattern):
    with pytest.raises(Unsupported):
        _body(pattern)


def test_schemas_it_does_not_cover_get_no_fast_decoder():
    nested = EVENT_TYPES["ioc.traffic.hires.logged.v1"]  # a list of objects
    assert fast_payload_decoder(nested) is None
    open_object = {
        "type": "typed-dict",
        "fields": {"a": {"type": "typed-dict-field", "schema": {"type": "str"}}},
    }
    assert fast_payloads(open_object) is None
    lax = dict(open_object, extra_behavior="forbid")
    lax["fields"] = {"a": {"type": "typed-dict-field", "schema": {"type": "str", "strip_whitespace": True}}}
    assert fast_payloads(lax) is None
    assert fast_payloads(dict(lax, fields={"a": {"type": "typed-dict-field", "schema": {"type": "str"}}}))


def test_floats_are_the_same_doubles():
    kpi = EVENT_TYPES["ioc.meter.kpi.observed.v1"]
    base = kpi_observed_payload(
        "meter.energy",
        "city",
        "HN",
        "2025-01-01T00:00:00+07:00",
        900,
        None,
        1.0,
        None,
        "kWh",
        0,
        "2025-01-01T00:15:00Z",
    )
    for text in (
        "0.1",
        "1e-320",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "123456789.123456789",
        "-0.0",
        "5",
        "1E2",
        "4.9e-324",
        "0.30000000000000004",
    ):
        value = orjson.dumps(base).replace(b'"value":null', b'"value":' + text.encode())
        assert _assert_never_looser(kpi, [value]), text
        assert math.isfinite(fast_payload_decoder(kpi).decode([value])[0]["value"])
