"""Consumer-side decoding: what a processor receives is the JSON payload, validated against its contract."""

from __future__ import annotations

import re
import tracemalloc
from dataclasses import replace
from datetime import date, datetime

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.contracts import EVENT_TYPES
from shared.contracts.cloudevents import (
    _IOC_LAYOUT,
    _TEXT_PATTERNS,
    EventDecodeError,
    decode,
    decode_batch,
    encode,
    encode_many,
)
from shared.contracts.common import kpi_observed_payload

READING = EVENT_TYPES["ioc.meter.reading.recorded.v1"]
HEARTBEAT = EVENT_TYPES["ioc.kiosk.heartbeat.received.v1"]


def _record(etype, payload: dict, offset: int) -> ConsumerRecord:
    ev = encode(etype, payload, source="/ioc/test", id=f"e{offset}")
    return ConsumerRecord(
        etype.topic, 0, offset, 0, 0, ev.key, ev.value, None, len(ev.key), len(ev.value), ev.headers
    )


def test_decoded_payload_is_the_json_sent_for_every_example():
    checked = 0
    for etype in EVENT_TYPES.values():
        for i, example in enumerate(etype.examples):
            payload = etype.model.model_validate(example).model_dump(mode="json")
            record = _record(etype, payload, i)
            (batch_event,), failed = decode_batch([record])
            assert failed == []
            assert batch_event.data == orjson.loads(record.value) == decode(record).data
            checked += 1
    assert checked >= 5


def test_date_patterns_accept_exactly_the_calendar():
    date_re, datetime_re, aware_re = (re.compile(p) for p in _TEXT_PATTERNS)
    for year in (*range(0, 12), 100, 200, 400, 1900, 1996, 2000, 2023, 2024, 2100, 2400, 9999):
        for month in range(0, 14):
            for day in range(0, 33):
                text = f"{year:04d}-{month:02d}-{day:02d}"
                try:
                    date.fromisoformat(text)
                    valid = True
                except ValueError:
                    valid = False
                assert bool(date_re.match(text)) is valid, text
                assert bool(datetime_re.match(f"{text}T00:00:00Z")) is valid, text
    for text, naive_ok, aware_ok in [
        ("2024-05-01T10:15:00Z", True, True),
        ("2024-05-01T10:15:00.123456+07:00", True, True),
        ("2024-05-01 10:15:00", True, False),
        ("2024-05-01T10:15:00", True, False),
        ("2024-05-01T24:00:00Z", False, False),
        ("2024-05-01T10:60:00Z", False, False),
        ("2024-05-01T10:15:00+7", False, False),
        ("2024-05-01", False, False),
        ("1714558500", False, False),
    ]:
        assert bool(datetime_re.match(text)) is naive_ok, text
        assert bool(aware_re.match(text)) is aware_ok, text
        if naive_ok:
            datetime.fromisoformat(text.replace("Z", "+00:00"))  # whatever matches also parses


def test_bad_times_are_rejected_one_by_one_and_good_ones_keep_their_text():
    example = READING.examples[0]
    good = [
        dict(example, meter_id="MTR-1"),
        dict(example, meter_id="MTR-2", interval_end="2024-02-29T23:45:00+07:00"),
    ]
    bad = [
        dict(example, meter_id="MTR-3", interval_end="2023-02-29T00:00:00Z"),
        dict(example, meter_id="MTR-4", interval_end=1714558500),
        dict(example, meter_id="MTR-5", interval_end="yesterday"),
    ]
    beat = {"kiosk_id": "K-1", "at": "2024-05-01T10:15:00", "app_version": "1.0"}
    records = [_record(READING, p, i) for i, p in enumerate([good[0], bad[0], bad[1], good[1], bad[2]])]
    records.append(_record(HEARTBEAT, beat, 5))
    events, failed = decode_batch(records)
    assert [e.data["meter_id"] for e in events] == ["MTR-1", "MTR-2"]
    assert events[1].data["interval_end"] == "2024-02-29T23:45:00+07:00"
    reasons = {r.offset: reason for r, reason in failed}
    assert set(reasons) == {1, 2, 4, 5}
    assert "interval_end: Input should be an RFC 3339 date-time" in reasons[1]
    assert "interval_end" in reasons[2] and "interval_end" in reasons[4]
    assert "at: Input should be an RFC 3339 date-time with a time zone offset" in reasons[5]
    for r, reason in failed:
        assert len(reason) < 200  # no pattern dumps in dead-letter reasons
        try:
            decode(r)
        except ValueError as exc:
            assert str(exc).endswith(reason.split(": ", 1)[1])
        else:
            raise AssertionError(f"decode accepted what decode_batch rejected: {reason}")


def test_nested_objects_stay_json_and_cross_field_rules_still_hold():
    from shared.contracts.cloudevents import payload_validator

    for etype in EVENT_TYPES.values():
        payload_validator(etype)  # every contract has a JSON-shaped validator
    hires = EVENT_TYPES["ioc.traffic.hires.logged.v1"]
    registration = EVENT_TYPES["ioc.kiosk.registration.updated.v1"]
    session = EVENT_TYPES["ioc.kiosk.session.ended.v1"]
    kiosk = {
        "kiosk_id": "K-1",
        "building": "Tower A",
        "address": "1 Pho Hue",
        "district": "HN-HK",
        "opening_hours": [{"days": [1, 2, 3], "open": "08:00", "close": "17:30"}],
        "peripherals": ["printer"],
        "software_version": "2.1",
        "in_service_since": "2024-01-01T00:00:00+07:00",
        "version": 1,
    }
    visit = {
        "session_id": "S-1",
        "kiosk_id": "K-1",
        "journey": "lookup_procedure",
        "outcome": "completed",
        "started_at": "2024-05-01T10:00:00Z",
        "ended_at": "2024-05-01T10:04:00+00:00",
    }
    good = [
        (
            hires,
            {
                "controller_id": "C-1",
                "intersection_id": "I-1",
                "events": [
                    {"t": "2024-05-01T10:00:00.1Z", "code": 1, "param": 2},
                    {"t": "2024-05-01T17:00:00.2+07:00", "code": 82, "param": 5},
                ],
            },
        ),
        (registration, kiosk),
        (session, visit),
    ]
    bad = [
        (
            hires,
            {
                "controller_id": "C-1",
                "intersection_id": "I-1",
                "events": [{"t": "2024-13-01T00:00:00Z", "code": 1, "param": 2}],
            },
        ),
        (registration, {**kiosk, "opening_hours": [{"days": [1], "open": "17:00", "close": "08:00"}]}),
        (
            registration,
            {**kiosk, "opening_hours": [{"days": [1], "open": "08:00", "close": "17:00", "x": 1}]},
        ),
        (session, {**visit, "ended_at": "2024-05-01T09:00:00Z"}),
    ]
    records = [_record(etype, payload, i) for i, (etype, payload) in enumerate(good + bad)]
    events, failed = decode_batch(records)
    assert [e.data for e in events] == [orjson.loads(r.value) for r in records[:3]]
    assert [r.offset for r, _ in failed] == [3, 4, 5, 6]
    reasons = [reason for _, reason in failed]
    assert "events.0.t: Input should be an RFC 3339 date-time" in reasons[0]
    assert "close must be after open" in reasons[1]
    assert "opening_hours.0.x" in reasons[2]
    assert "ended_at is before started_at" in reasons[3]


def test_the_encoders_write_the_header_layout_decode_batch_reads_by_position():
    payload = READING.examples[0]
    for ev in (
        encode(READING, payload, source="/ioc/test"),
        encode_many(READING, [payload], source="/ioc/test")[0],
    ):
        assert tuple(k for k, _ in ev.headers) == (*_IOC_LAYOUT, "ce_subject")


def _valid_headers(offset: int) -> list[tuple[str, bytes]]:
    return _record(READING, READING.examples[0], offset).headers


@pytest.mark.parametrize(
    "header", ["ce_id", "ce_specversion", "ce_source", "ce_type", "ce_time", "ce_subject"]
)
@pytest.mark.parametrize("order", ["as IOC writes them", "reversed"])
def test_a_header_present_with_a_null_value_is_a_missing_header_not_a_crash(header, order):
    valid = _valid_headers(1)
    headers = [(k, None if k == header else v) for k, v in valid]
    valid = dict(valid)
    if order == "reversed":
        headers.reverse()
    good = _record(READING, READING.examples[0], 0)
    record = replace(good, offset=1, headers=headers)
    events, failed = decode_batch([good, record])
    if header in ("ce_time", "ce_subject"):  # optional attributes: the event is decoded without them
        assert [e.offset for e in events] == [0, 1] and not failed
        if header == "ce_time":
            assert (events[1].time, events[1].subject) == ("", valid["ce_subject"].decode())
        else:
            assert (events[1].time, events[1].subject) == (valid["ce_time"].decode(), None)
    else:
        assert [e.offset for e in events] == [0]
        assert [r.offset for r, _ in failed] == [1]
        assert "ce_specversion" in failed[0][1] if header == "ce_specversion" else header in failed[0][1]
        with pytest.raises(EventDecodeError, match=re.escape(failed[0][1])):
            decode(record)


_HEADER_KEYS = st.sampled_from(
    [
        "ce_id",
        "ce_specversion",
        "ce_source",
        "ce_type",
        "ce_time",
        "ce_dataschema",
        "content-type",
        "ce_subject",
        "traceparent",
    ]
)
_HEADER_VALUES = st.one_of(
    st.none(),
    st.binary(max_size=12),
    st.sampled_from(
        [
            b"1.0",
            b"0.3",
            READING.type.encode(),
            b"ioc.unknown.v1",
            b"\xff\xfe",
            b"/ioc/test",
            b"2024-05-01T10:15:00Z",
        ]
    ),
)


@given(
    data=st.data(),
    record_key=st.one_of(st.none(), st.binary(max_size=8)),
    value=st.one_of(st.none(), st.binary(max_size=16), st.just(b"[]"), st.just(b"{}")),
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_headers_key_or_value_is_decoded_or_dead_lettered_never_raised(data, record_key, value):
    good = _record(READING, READING.examples[0], 0)
    headers = _valid_headers(1)
    kind = data.draw(st.sampled_from(["valid, shuffled", "one changed", "arbitrary"]))
    if kind == "valid, shuffled":
        headers = data.draw(st.permutations(headers))
        value = good.value if value is None or data.draw(st.booleans()) else value
    elif kind == "one changed":
        i = data.draw(st.integers(0, len(headers) - 1))
        headers[i] = (headers[i][0], data.draw(_HEADER_VALUES))
        value = good.value
    else:
        headers = data.draw(st.lists(st.tuples(_HEADER_KEYS, _HEADER_VALUES), max_size=10))
    record = replace(good, offset=1, key=record_key, value=value, headers=headers)
    events, failed = decode_batch([record, good])
    # every record comes out exactly once: decoded, or failed with a reason; the good one is never harmed
    assert [e.offset for e in events] + [r.offset for r, _ in failed] in ([1, 0], [0, 1])
    assert 0 in [e.offset for e in events]
    if failed:
        assert failed[0][0] is record and failed[0][1]
        with pytest.raises(EventDecodeError) as exc:
            decode(record)
        assert exc.value.reason == failed[0][1]
    else:
        alone = decode(record)
        assert alone == events[0]
        # the header order never matters (only IOC's own layout is read by position)
        if len({k for k, _ in headers}) == len(headers):
            (reordered,), _ = decode_batch([replace(record, headers=list(reversed(headers)))])
            assert reordered == alone


def test_an_encoded_event_holds_about_its_own_size_not_the_encoders_buffer():
    # orjson 3.12+ returns every dumps() output inside its whole working buffer: 8 KiB behind a 340-byte KPI
    # event, so a catch-up emit of 10,000 city KPIs held ~80 MiB until produced, and a 10,000-reading ingest
    # request ~40 MiB. pyproject.toml keeps orjson below 3.12; this fails if an upgrade brings it back.
    kpi = EVENT_TYPES["ioc.meter.kpi.observed.v1"]
    payloads = [
        kpi_observed_payload(
            "meter.energy_kwh",
            "district",
            f"D{i % 30:02d}",
            "2026-11-20T00:00:00Z",
            900,
            4.0,
            4.0,
            None,
            "kWh",
            i % 4,
            "2026-11-24T14:22:42.271309Z",
        )
        for i in range(2_000)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        events = encode_many(kpi, payloads, source="/ioc/test")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    value_bytes = sum(len(e.value) for e in events) / len(events)
    # The value, its key, id and header list; orjson < 3.12 starts from a 1 KiB buffer.
    assert held / len(events) < 3 * 1024, (
        f"{held / len(events):.0f} bytes held per {value_bytes:.0f}-byte event"
    )


def test_encode_takes_each_types_own_key_and_subject_whatever_it_encoded_before():
    # encode keeps the header tuples per type and source; a type of the same name with other key/subject
    # fields (a replaced definition, as contract tests build) must still be keyed by its own field
    kpi = EVENT_TYPES["ioc.meter.kpi.observed.v1"]
    payload = kpi_observed_payload(
        "meter.saifi",
        "district",
        "00001",
        "2026-12-07T10:00:00Z",
        900,
        0.03,
        3.0,
        100.0,
        "int/cust",
        2,
        "2026-12-07T10:00:00Z",
    )
    first = encode(kpi, payload, source="/ioc/test", id="a")
    other = replace(kpi, key_field="scope_code", subject_field="kpi")
    second = encode(other, payload, source="/ioc/test", id="b")
    assert first.key == payload["key"].encode()
    assert second.key == b"00001"
    assert ("ce_subject", b"meter.saifi") in second.headers
    assert dict(first.headers)["ce_source"] == dict(second.headers)["ce_source"] == b"/ioc/test"
    assert dict(second.headers)["ce_dataschema"] == b"urn:ioc:schema:ioc.meter.kpi.observed.v1"
