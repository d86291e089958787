"""Tumbling windows with grace and retention, and typed state keys (shared.stream.windows).

Expected values are worked out by hand in each test: Hanoi keeps UTC+7 all year (no DST), so its midnight is
17:00 UTC the day before; a window [start, start + duration) is revisable while the watermark is before
end + grace and evicted once the watermark reaches end + retention."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

import pytest

from shared.stream import State
from shared.stream.windows import KeySpace, TumblingWindows, WindowedEntity

HANOI = 7 * 3600
# 2026-03-10 17:00:00 UTC = 2026-03-11 00:00 in Hanoi
HANOI_MIDNIGHT = int(datetime(2026, 3, 10, 17, tzinfo=UTC).timestamp())


def test_windows_are_aligned_to_the_epoch_or_to_their_offset():
    quarter = TumblingWindows(900)
    # 2026-03-10 17:07:05 UTC is in the quarter hour from 17:00:00
    assert quarter.start(HANOI_MIDNIGHT + 7 * 60 + 5) == HANOI_MIDNIGHT
    assert quarter.start(HANOI_MIDNIGHT + 900) == HANOI_MIDNIGHT + 900  # a window holds its start...
    assert quarter.start(HANOI_MIDNIGHT + 899.999) == HANOI_MIDNIGHT  # ...not its end
    assert quarter.end(HANOI_MIDNIGHT) == HANOI_MIDNIGHT + 900
    day = TumblingWindows(86400, offset=HANOI)
    assert day.start(HANOI_MIDNIGHT) == HANOI_MIDNIGHT
    # 16:59:59 UTC is 23:59:59 of the Hanoi day before
    assert day.start(HANOI_MIDNIGHT - 1) == HANOI_MIDNIGHT - 86400
    assert day.start(HANOI_MIDNIGHT + 86399.5) == HANOI_MIDNIGHT
    assert isinstance(day.start(HANOI_MIDNIGHT + 0.5), int)  # keys hold whole seconds


def test_a_window_is_revisable_until_its_end_plus_grace_and_kept_until_its_end_plus_retention():
    w = TumblingWindows(900, grace=3600, retention=7200)
    start = 1_800_000_000 - 1_800_000_000 % 900
    end = start + 900
    assert w.revisable_until(start) == end + 3600
    assert w.accepts(start, end + 3599)
    assert not w.accepts(start, end + 3600)  # beyond the grace: counted and dropped by the processor
    assert not w.expired(start, end + 7199)
    assert w.expired(start, end + 7200)
    assert TumblingWindows(900, grace=60).retention == 60  # retention defaults to the grace


def test_the_horizon_is_the_start_of_the_oldest_window_kept():
    # Daily windows kept one day after their end: at 10:00 Hanoi on 11 March the 10 March window (ended at
    # midnight, kept until the next midnight) is still kept; its start, 10 March 00:00, is the horizon.
    days = TumblingWindows(86400, grace=86400, offset=HANOI)
    ten_am = HANOI_MIDNIGHT + 10 * 3600
    assert days.horizon(ten_am) == HANOI_MIDNIGHT - 86400
    assert not days.expired(days.horizon(ten_am), ten_am)
    assert days.expired(days.horizon(ten_am) - 86400, ten_am)
    # at the next midnight that window expires, and the horizon moves a day
    assert days.horizon(HANOI_MIDNIGHT + 86400) == HANOI_MIDNIGHT


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration": 0}, "positive"),
        ({"duration": 60, "grace": -1}, "grace"),
        ({"duration": 60, "grace": 10, "retention": 5}, "cover"),
    ],
)
def test_nonsense_windows_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TumblingWindows(**kwargs)


class Bucket(NamedTuple):
    start: int
    area: str
    bucket: int


def test_typed_keys_have_the_layout_of_the_changelogs_written_before_them():
    sessions = KeySpace("s", WindowedEntity)
    # what services/kiosk/processors.py wrote as f"s:{w}:{int(ws)}:{kiosk}"
    assert sessions.key(WindowedEntity(3600, 1_700_000_000, "K-1")) == "s:3600:1700000000:K-1"
    assert sessions.parse("s:3600:1700000000:K-1") == (3600, 1_700_000_000, "K-1")
    assert sessions.parse("s:3600:1700000000:K-1").entity == "K-1"
    # the last field keeps its separators (an id with colons); the others are converted to their types
    assert sessions.parse("s:86400:-25200:agency:42") == WindowedEntity(86400, -25200, "agency:42")
    buckets = KeySpace("dm", Bucket)
    assert buckets.key(Bucket(1_700_000_000, "HBT", 7)) == "dm:1700000000:HBT:7"
    assert buckets.parse("dm:1700000000:HBT:7").bucket == 7
    with pytest.raises(ValueError, match="not a WindowedEntity key"):
        sessions.parse("f:3600:1700000000:K-1")
    with pytest.raises(ValueError, match="3 fields"):
        buckets.parse("dm:1700000000")


def test_key_fields_must_be_plain_types():
    class Odd(NamedTuple):
        at: datetime

    with pytest.raises(TypeError, match="int, float or str"):
        KeySpace("o", Odd)


def test_a_key_space_reads_and_evicts_only_its_own_keys():
    sessions = KeySpace("s", WindowedEntity)
    state = State(0)
    hourly = TumblingWindows(3600, grace=3600)
    t0 = 1_800_000_000 - 1_800_000_000 % 3600
    for ws in (t0 - 7200, t0 - 3600, t0):
        state.put(sessions.key(WindowedEntity(3600, ws, "K-1")), {"n": 1})
    state.put(sessions.key(WindowedEntity(60, t0 - 7200, "K-1")), {"n": 1})  # a size without windows: kept
    state.put("sx:3600:0:K-1", {"n": 1})  # another head starting with the same letter
    assert [k.start for k, _ in sessions.items(state, 3600, t0)] == [t0]
    assert len(sessions.keys(state)) == 4
    state.take_changes()
    # at t0 + 600: the window t0 - 7200 ended at t0 - 3600, kept an hour more: expired at t0
    popped = sessions.evict_expired(
        state, lambda k: hourly if k.duration == 3600 else None, t0 + 600, "start"
    )
    assert popped == 1
    assert sorted(k.start for k in sessions.keys(state) if k.duration == 3600) == [t0 - 3600, t0]
    assert "sx:3600:0:K-1" in state
    assert state.take_changes() == {sessions.key(WindowedEntity(3600, t0 - 7200, "K-1")): None}  # a tombstone


def test_start_and_eviction_agree_with_the_formulas_the_processors_used_before():
    """The kiosk processor evicted ``ws < window_start(t, w) - w`` and the meter processor stopped taking
    ``ws + w <= wm - retention``; the windows that replaced them must decide the same for every time."""
    import random

    from services.kiosk.domain import window_start as kiosk_start
    from services.meter.domain import window_start as meter_start

    rnd = random.Random(34)
    for w, offset in ((900, 0), (3600, 0), (86400, HANOI)):
        kept_one = TumblingWindows(w, grace=w, offset=offset)
        for _ in range(2000):
            t = rnd.uniform(1.7e9, 1.8e9)
            if rnd.random() < 0.3:
                t = float(int(t) - int(t) % w - offset % w)  # exactly on a boundary
            ws = kept_one.start(t) - w * rnd.randrange(0, 4)
            assert kept_one.start(t) == kiosk_start(t, w)
            assert kept_one.start(int(t)) == meter_start(int(t), w)
            assert kept_one.expired(ws, t) == (ws < kiosk_start(t, w) - w), (w, t, ws)
            grace = rnd.choice((0, 900, 26 * 3600, 3 * 86400))
            late = TumblingWindows(w, grace=grace, offset=offset)
            assert late.accepts(ws, int(t)) == (not ws + w <= int(t) - grace)


def test_whole_bin_retention_keeps_what_the_traffic_processor_kept():
    """The traffic processor kept a district window while ``ws >= newest - 3 h`` (epoch-aligned bins of any
    length): as windows whose watermark is the newest window's start, that is a retention of the whole bins in
    3 h (``R - R % bin``)."""
    r = 3 * 3600 * 1000
    for bin_ms in (60_000, 300_000, 420_000, 900_000, 4 * 3600 * 1000):
        windows = TumblingWindows(bin_ms, grace=r - r % bin_ms)
        newest = 1_800_000_000_000 - 1_800_000_000_000 % bin_ms
        for back in range(0, 2 * r // bin_ms + 3):
            ws = newest - back * bin_ms
            assert windows.expired(ws, newest) == (ws < newest - r), (bin_ms, back)


def test_retention_counted_back_from_the_series_newest_window():
    # The city keeps a meter quarter-hour series' windows for duration + revisable (26 h) + skew margin (1 h)
    # behind the series' newest window start: 900 + 93600 + 3600 = 98100 s. A window exactly that far behind
    # is kept; one more second and it is past the horizon. No event time is involved: a catch-up racing
    # through event time moves nothing until a newer window is published.
    w = TumblingWindows(900, grace=93600 + 3600)
    newest = HANOI_MIDNIGHT
    assert not w.behind(newest - 98100, newest)  # 98100 s behind: start + 98100 == newest, not < newest
    assert w.behind(newest - 98101, newest)
    assert w.behind(newest - 98100 - 900, newest)  # the window before it
    assert not w.behind(newest, newest)  # the newest window itself


class CityGroup(NamedTuple):
    kpi: str
    level: str
    code: str
    window_seconds: int
    window_start: str


def test_a_key_space_may_separate_its_head_and_fields_differently():
    # The city's layout: ``g:<kpi>|<level>|<code>|<window_seconds>|<window_start>``, the ISO start holding
    # colons, so fields are joined with "|" after the "g:" head.
    groups = KeySpace("g", CityGroup, "|", head_sep=":")
    key = CityGroup("meter.consumption", "district", "HK", 900, "2026-03-10T17:00:00+00:00")
    text = "g:meter.consumption|district|HK|900|2026-03-10T17:00:00+00:00"
    assert groups.key(key) == text
    assert groups.parse(text) == key
    assert groups.prefix == "g:"
    assert groups.within("meter.consumption", "district", "HK") == "g:meter.consumption|district|HK|"
    with pytest.raises(ValueError, match="does not start"):
        groups.parse("g|meter.consumption|district|HK|900|2026-03-10T17:00:00+00:00")  # the legacy layout
    with pytest.raises(ValueError, match="5 fields"):
        groups.parse("g:meter.consumption|district|HK|900")
