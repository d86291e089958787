"""Dossier KPI processor: one-stop-shop throughput, timeliness, online shares and Decision 766 indices.

Per agency, commune/ward (when the handling unit is one), district (when the hierarchy has districts) and the
city, by local day and month (Vietnam time):

- counters by event time: dossiers received / resolved / returned, apologies, overdue notices;
- ratios by event time: early / on-time (early + on time) / late shares of resolved dossiers, online share of
  received dossiers, fully-online share of received dossiers of fully-online procedures (766: 12 points),
  online payment: fees paid online / dossiers of fee-bearing procedures received (766: 10 points; docs/dossier-766.md);
- a live snapshot at ``now``: open dossiers within deadline and overdue (a paused clock is never overdue), and
  the 766 progress indicator ``(finished early or on time in the period + open within deadline) /
  (finished in the period + open)`` worth 20 points, for the current day and month.

Dossier codes are scoped per agency (issue #40): the state keeps each dossier under its city-wide id
``<agency_code>:<dossier_code>`` (``dossier_id``), so two agencies' dossiers with the same code never merge.

Alarms: a dossier overdue notice raises ``dossier:overdue:<agency_code>:<dossier_code>``; it clears when the dossier is finished,
closed, or no longer past its (extended) due date; a documents request never clears it (issue #37).
Every observation carries additive numerator / denominator so the city layer can merge partitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

from shared.areas import CITY_CODE, HANOI_TZ
from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import EncodedEvent, ReceivedEvent, encode, encode_many, parse_time
from shared.contracts.common import kpi_observed_payload
from shared.contracts.dossier import (
    ALARM_EVENT,
    KPI_EVENT,
    LIFECYCLE_TOPIC,
    DossierApologized,
    DossierOverdue,
    DossierStatusChanged,
    dossier_id_of,
)
from shared.stream import State, StreamProcessor
from shared.stream.windows import KeySpace

from .domain import OPEN_STATUSES, RECEIVED, RESOLVED, RETURNED, day_timeliness, local_date

SOURCE = "/ioc/dossier/kpi"
STATUS_TYPE = event_type_of(DossierStatusChanged).type
OVERDUE_TYPE = event_type_of(DossierOverdue).type
APOLOGY_TYPE = event_type_of(DossierApologized).type

# counter → the KPIs it feeds: (kpi id, is a ratio, scale, unit)
COUNTER_KPIS: dict[str, tuple[tuple[str, bool, float, str], ...]] = {
    "received": (("dossier.received", False, 1.0, "dossiers"),),
    "resolved": (("dossier.resolved", False, 1.0, "dossiers"),),
    "returned": (("dossier.returned", False, 1.0, "dossiers"),),
    "apologies": (("dossier.apologies", False, 1.0, "dossiers"),),
    "overdue_notices": (("dossier.overdue_notices", False, 1.0, "dossiers"),),
    "on_time": (("dossier.on_time_ratio", True, 1.0, "ratio"),),
    "early": (("dossier.early_ratio", True, 1.0, "ratio"),),
    "late": (("dossier.late_ratio", True, 1.0, "ratio"),),
    "online": (("dossier.online_ratio", True, 1.0, "ratio"),),
    "fully_online": (
        ("dossier.fully_online_ratio", True, 1.0, "ratio"),
        ("dossier.fully_online_points", True, 12.0, "points"),
    ),
    "online_payment": (
        ("dossier.online_payment_ratio", True, 1.0, "ratio"),
        ("dossier.online_payment_points", True, 10.0, "points"),
    ),
}
PROGRESS_POINTS = 20.0
#: state key: counter keys changed since the last emit
DIRTY_KEY = "dirty"


class ScopeCount(NamedTuple):
    """A counter (or the KPI it was published as) of one scope in one window (``window_id``)."""

    name: str
    level: str
    code: str
    window: str


#: ``c|<counter>|<level>|<code>|<window>`` → [numerator, denominator] by event time
COUNTERS = KeySpace("c", ScopeCount, sep="|")
#: ``l|<kpi>|<level>|<code>|<window>`` → [numerator, denominator] of a snapshot observation last published
PUBLISHED = KeySpace("l", ScopeCount, sep="|")
#: state key: alarms raised or cleared since the last emit, in order
PENDING_KEY = "pending_alarms"
#: the kind of counted event → what one of it adds to which counters: (counter, numerator, denominator)
COUNTS_OF_KIND: dict[str, tuple[tuple[str, float, float], ...]] = {
    **{
        f"received{'_online' * online}{'_fully' * fully}": (
            ("received", 1.0, 0.0),
            ("online", float(online), 1.0),
            *((("fully_online", float(online), 1.0),) * fully),
        )
        for online in (False, True)
        for fully in (False, True)
    },
    **{
        t: (
            ("resolved", 1.0, 0.0),
            ("on_time", float(t in ("early", "on_time")), 1.0),
            ("early", float(t == "early"), 1.0),
            ("late", float(t == "late"), 1.0),
        )
        for t in ("early", "on_time", "late")
    },  # the resolved ones, by timeliness (domain.day_timeliness)
    "returned": (("returned", 1.0, 0.0),),
    "fee_bearing": (("online_payment", 0.0, 1.0),),
    "paid_online": (("online_payment", 1.0, 0.0),),
    "overdue": (("overdue_notices", 1.0, 0.0),),
    "apology": (("apologies", 1.0, 0.0),),
}
#: (online channel, fully-online procedure) → kind of a received dossier
RECEIVED_KINDS = {
    (online, fully): f"received{'_online' * online}{'_fully' * fully}"
    for online in (False, True)
    for fully in (False, True)
}


def scopes_of(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The (scope level, code) pairs an event counts for: agency, commune, district, city."""
    scopes = [("agency", data["agency_code"]), ("city", CITY_CODE)]
    district = data.get("district")
    unit = data["admin_unit"]
    if district:
        scopes.append(("district", district))
    if unit not in (district, CITY_CODE):
        scopes.append(("commune", unit))
    return scopes


def window_id(at: datetime, kind: str) -> str:
    """``d:YYYY-MM-DD`` or ``m:YYYY-MM`` of the local (Vietnam) calendar."""
    d = local_date(at)
    return f"d:{d.isoformat()}" if kind == "d" else f"m:{d.year:04d}-{d.month:02d}"


def window_bounds(wid: str) -> tuple[datetime, int]:
    """Start (local midnight, +07:00) and length in seconds of a window id."""
    kind, _, rest = wid.partition(":")
    if kind == "d":
        start_day = date.fromisoformat(rest)
        start = datetime(start_day.year, start_day.month, start_day.day, tzinfo=HANOI_TZ)
        return start, 86400
    y, m = (int(x) for x in rest.split("-"))
    start = datetime(y, m, 1, tzinfo=HANOI_TZ)
    end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=HANOI_TZ)
    return start, int((end - start).total_seconds())


def _window_day(wid: str) -> date:
    kind, _, rest = wid.partition(":")
    return date.fromisoformat(rest if kind == "d" else rest + "-01")


class _PartitionView:
    """What ``emit`` needs to know about one partition's state without scanning it: open dossiers per scope and
    the last published snapshot keys per scope. Derived from the state only, so it is rebuilt from the state
    whenever the runtime (re)loads the partition: nothing here has to survive a restart."""

    __slots__ = ("day", "dirty_scopes", "open", "published")

    def __init__(self) -> None:
        #: scope → [open dossiers, {due date: open dossiers whose clock runs}]
        self.open: dict[tuple[str, str], list] = {}
        #: scope → its ``l|`` keys (snapshot observations last published, kept in the state)
        self.published: dict[tuple[str, str], set[str]] = {}
        #: scopes whose snapshot may have changed since the last one
        self.dirty_scopes: set[tuple[str, str]] = set()
        #: local day of the last snapshot over every scope; None: the next snapshot covers every scope
        self.day: str | None = None


class DossierKpiProcessor(StreamProcessor):
    """Folds the dossier lifecycle into KPI observations (``ioc.dossier.kpis``) and alarms."""

    name = "dossier-kpi"
    topics = (LIFECYCLE_TOPIC.name,)
    tick_seconds = 5.0

    def __init__(self, *, day_retention_days: int = 35, month_retention_days: int = 400):
        self.day_retention = timedelta(days=day_retention_days)
        self.month_retention = timedelta(days=month_retention_days)
        self._scopes: dict[tuple, tuple[tuple[str, str], ...]] = {}
        self._scope_lists: dict[tuple[tuple[str, str], ...], list[list[str]]] = {}
        self._windows: dict[date, tuple[str, str]] = {}
        self._keys: dict[tuple[str, tuple[tuple[str, str], ...], date], list[str]] = {}
        self._parsed: dict[str, ScopeCount] = {}
        self._snapshots: dict[tuple[str, str, str, str], tuple[str, ...]] = {}
        self._bounds: dict[str, tuple[str, int]] = {}
        self._days: dict[str, date] = {}

    # derived per-partition view ---------------------------------------------------------------------------

    def _view(self, state: State) -> _PartitionView:
        return self.derived(state, self._build_view)

    def _build_view(self, state: State) -> _PartitionView:
        """One scan of a (re)loaded state; also converts the per-key markers of earlier versions."""
        view = _PartitionView()
        old_dirty: list[str] = []
        old_pending: list[tuple[str, dict]] = []
        published_prefix = PUBLISHED.prefix
        for key, value in state.items():
            if key.startswith("o|"):
                self._add_open(view, *_open_entry(value), 1)
            elif key.startswith(published_prefix):
                published = PUBLISHED.parse(key)
                view.published.setdefault((published.level, published.code), set()).add(key)
            elif key.startswith("x|"):
                old_dirty.append(key)
            elif key.startswith("pa|"):
                old_pending.append((key, value))
        if old_dirty:
            dirty = state.get(DIRTY_KEY) or {}
            for key in old_dirty:
                state.pop(key)
                dirty[key[2:]] = 1
            state.put(DIRTY_KEY, dirty)
        if old_pending:
            for key, _ in old_pending:
                state.pop(key)
            state.put(PENDING_KEY, (state.get(PENDING_KEY) or []) + [a for _, a in sorted(old_pending)])
        for key in ("snap_dirty", "snap_day", "pa_seq"):
            state.pop(key)
        view.dirty_scopes.clear()
        return view

    @staticmethod
    def _add_open(view: _PartitionView, scopes: Iterable[tuple[str, str]], due: str | None, n: int) -> None:
        """Count ``n`` (negative: out) open dossiers of ``scopes`` whose clock runs to ``due`` (None: paused)."""
        for sc in scopes:
            agg = view.open.get(sc)
            if agg is None:
                agg = view.open[sc] = [0, {}]
            agg[0] += n
            if due is not None:
                dues = agg[1]
                m = dues.get(due, 0) + n
                if m:
                    dues[due] = m
                else:
                    del dues[due]
            if not agg[0] and not agg[1]:
                del view.open[sc]
            view.dirty_scopes.add(sc)

    # apply ------------------------------------------------------------------------------------------------

    def _local_day(self, at: str) -> date:
        """The local (Vietnam) day of an RFC 3339 time. With a whole-hour offset (``Z``, ``+07:00``...) the day
        depends only on the date, the hour and the offset, which a batch shares between many events: cached
        on those (parsing and converting every time cost ~2 µs an event)."""
        offset = "Z" if at[-1] == "Z" else at[-6:]
        if offset == "Z" or (offset[0] in "+-" and offset.endswith(":00")):
            key = at[:13] + offset
            day = self._days.get(key)
            if day is None:
                if len(self._days) > 100_000:
                    self._days.clear()
                day = self._days[key] = local_date(parse_time(at))
            return day
        return local_date(parse_time(at))  # offsets such as +05:30, or none (raises: times must carry one)

    def _scopes_of(self, data: dict[str, Any]) -> tuple[tuple[str, str], ...]:
        ident = (data["agency_code"], data.get("district"), data["admin_unit"])
        scopes = self._scopes.get(ident)
        if scopes is None:
            if len(self._scopes) > 100_000:
                self._scopes.clear()
                self._scope_lists.clear()
            scopes = self._scopes[ident] = tuple(scopes_of(data))
            self._scope_lists[scopes] = [
                list(sc) for sc in scopes
            ]  # as stored in ``o|`` (shared, never mutated)
        return scopes

    def apply(self, event: ReceivedEvent, state: State) -> None:
        self.apply_batch([event], state)

    def apply_batch(self, events: list[ReceivedEvent], state: State) -> None:
        # Two things are summed over the batch and applied once at its end instead of per event (a quarter of
        # this fold's CPU, ``python -m bench.dossier_processor_cpu``): counter increments, by (kind of event,
        # scopes, day), each counter key then written once; and changes of the open-dossier view, by (scopes,
        # running due date). Both are sums of ±1, so exact in any order, and only ``emit`` reads them.
        view = self._view(state)
        counts: dict[tuple, int] = {}
        opens: dict[tuple, int] = {}
        touched: set[tuple[tuple[str, str], ...]] = set()
        for event in events:
            data = event.data
            etype = event.type
            if etype == STATUS_TYPE:
                self._status(data, state, counts, opens, touched)
            elif etype == OVERDUE_TYPE:
                key = ("overdue", self._scopes_of(data), self._local_day(data["at"]))
                counts[key] = counts.get(key, 0) + 1
                code = dossier_id_of(data)
                if f"o|{code}" in state and f"a|{code}" not in state:
                    self._alarm(
                        state,
                        data,
                        "raised",
                        parse_time(data["at"]),
                        f"dossier overdue by {data['days_overdue']} day(s): procedure "
                        f"{data['procedure_code']}, agency {data['agency_code']}",
                    )
            elif etype == APOLOGY_TYPE:
                key = ("apology", self._scopes_of(data), self._local_day(data["at"]))
                counts[key] = counts.get(key, 0) + 1
        for (scopes, due), n in opens.items():
            if n:
                self._add_open(view, scopes, due, n)
        for scopes in touched:  # finished-on-time counts of today feed the progress indicator
            view.dirty_scopes.update(scopes)
        if counts:
            self._add_counts(state, counts)

    def _window_ids(self, day: date) -> tuple[str, str]:
        wids = self._windows.get(day)
        if wids is None:
            if len(self._windows) > 10_000:
                self._windows.clear()
            wids = self._windows[day] = (f"d:{day.isoformat()}", f"m:{day.year:04d}-{day.month:02d}")
        return wids

    def _counter_keys(self, counter: str, scopes: tuple[tuple[str, str], ...], day: date) -> list[str]:
        """The state keys of ``counter`` for every scope and window (day, month) of ``day`` (memoised: a batch
        adds to a few combinations many times)."""
        keys = self._keys.get((counter, scopes, day))
        if keys is None:
            if len(self._keys) > 10_000:
                self._keys.clear()
            keys = self._keys[(counter, scopes, day)] = []
            if len(self._parsed) > 10_000:
                self._parsed.clear()
            for wid in self._window_ids(day):
                for level, code in scopes:
                    typed = ScopeCount(counter, level, code, wid)
                    keys.append(key := COUNTERS.key(typed))
                    self._parsed[key] = typed  # what emit reads back (_counter_of)
        return keys

    def _snapshot_keys(self, level: str, code: str, day_w: str, month_w: str) -> tuple[str, ...]:
        """A scope's keys a snapshot reads and writes (memoised: every snapshot of the day asks again): the
        ``on_time`` counters of the day and month, the open within deadline and overdue observations of the day,
        the 766 progress of the day and month."""
        what = (level, code, day_w, month_w)
        keys = self._snapshots.get(what)
        if keys is None:
            if len(self._snapshots) > 10_000:
                self._snapshots.clear()
            keys = self._snapshots[what] = (
                COUNTERS.key(ScopeCount("on_time", level, code, day_w)),
                COUNTERS.key(ScopeCount("on_time", level, code, month_w)),
                PUBLISHED.key(ScopeCount("dossier.open_within_deadline", level, code, day_w)),
                PUBLISHED.key(ScopeCount("dossier.overdue_open", level, code, day_w)),
                PUBLISHED.key(ScopeCount("dossier.progress_766_points", level, code, day_w)),
                PUBLISHED.key(ScopeCount("dossier.progress_766_points", level, code, month_w)),
            )
        return keys

    def _counter_of(self, key: str) -> ScopeCount:
        """``COUNTERS.parse(key)``, memoised (every emit reads the counters changed since the last one)."""
        parsed = self._parsed.get(key)
        if parsed is None:
            if len(self._parsed) > 10_000:
                self._parsed.clear()
            parsed = self._parsed[key] = COUNTERS.parse(key)
        return parsed

    def _add_counts(self, state: State, counts: dict[tuple, int]) -> None:
        sums: dict[tuple, list[float]] = {}
        for (kind, scopes, day), n in counts.items():
            for counter, num, den in COUNTS_OF_KIND[kind]:
                key = (counter, scopes, day)
                c = sums.get(key)
                if c is None:
                    sums[key] = [num * n, den * n]
                else:
                    c[0] += num * n
                    c[1] += den * n
        dirty = state.get(DIRTY_KEY) or {}
        get, put = state.get, state.put
        for what, (num, den) in sums.items():
            for counter_key in self._counter_keys(*what):
                cur = get(counter_key) or [0.0, 0.0]
                put(counter_key, [cur[0] + num, cur[1] + den])
                dirty[counter_key] = 1
        state.put(DIRTY_KEY, dirty)  # counters changed since the last emit (state: survives a restart)

    def _status(self, data: dict[str, Any], state: State, counts: dict, opens: dict, touched: set) -> None:
        day = self._local_day(data["at"])
        scopes = self._scopes_of(data)
        status = data["status"]
        due = data.get("due_date")
        kind = None
        if status == RECEIVED:
            if data.get("previous_status") in (None, 1):
                kind = RECEIVED_KINDS[data["channel"] == "online", data["online_level"] == "fully_online"]
                if data.get("has_fees"):
                    # 766 online payment: the denominator is every dossier of a fee-bearing procedure received,
                    # whether its fees were later paid online, at the counter, at intake or not yet.
                    key = ("fee_bearing", scopes, day)
                    counts[key] = counts.get(key, 0) + 1
        elif status == RESOLVED:
            if due:
                kind = day_timeliness(day, date.fromisoformat(due))
        elif status == RETURNED:
            kind = "returned"
        if kind is not None:
            key = (kind, scopes, day)
            counts[key] = counts.get(key, 0) + 1
        if data.get("action") == "pay_fees" and data.get("paid_online") and data.get("has_fees"):
            key = ("paid_online", scopes, day)
            counts[key] = counts.get(key, 0) + 1

        code = dossier_id_of(data)
        open_key = f"o|{code}"
        old = state.get(open_key)
        if status in OPEN_STATUSES and due:
            paused = bool(data.get("clock_paused"))
            if paused and not (old is not None and old["p"]) and day.isoformat() > due:
                # A pause requested after the due date stops nothing: the dossier stays overdue (events of the
                # service before issue #37 could carry such a pause).
                paused = False
            new = {"s": self._scope_lists[scopes], "due": due, "p": paused}
            if old != new:  # e.g. start_processing keeps scopes, due date and clock: nothing to write
                if old is not None:
                    self._open_change(opens, old, scopes, -1)
                state.put(open_key, new)
                open_key_now = (scopes, None if paused else due)
                opens[open_key_now] = opens.get(open_key_now, 0) + 1
            if f"a|{code}" in state and day.isoformat() <= due:
                self._alarm(
                    state,
                    data,
                    "cleared",
                    parse_time(data["at"]),
                    "dossier no longer overdue (due date extended)",
                )
        elif old is not None:
            state.pop(open_key)
            self._open_change(opens, old, scopes, -1)
            if f"a|{code}" in state:
                self._alarm(
                    state, data, "cleared", parse_time(data["at"]), f"dossier closed with status {status}"
                )
        touched.add(scopes)

    def _open_change(self, opens: dict, o: dict, scopes: tuple[tuple[str, str], ...], sign: int) -> None:
        """Count an ``o|`` entry in or out of the batch's open-view changes. Its scopes are nearly always those
        of the event at hand (a dossier stays with its agency), so the stored lists are converted only if not."""
        stored = o["s"]
        if stored is self._scope_lists[scopes] or stored == self._scope_lists[scopes]:
            key = (scopes, None if o["p"] else o["due"])
        else:
            key = _open_entry(o)
        opens[key] = opens.get(key, 0) + sign

    def _alarm(self, state: State, data: dict[str, Any], what: str, at: datetime, message: str) -> None:
        code = dossier_id_of(data)
        if what == "raised":
            state.put(f"a|{code}", 1)
        else:
            state.pop(f"a|{code}")
        district = data.get("district")
        unit = data["admin_unit"]
        alarm = {
            "alarm_id": f"dossier:overdue:{code}",
            "domain": "dossier",
            "alarm_type": "dossier_overdue",
            "state": what,
            "severity": "minor",
            # the source id is an entity id (at most 64 characters): the agency's code if the pair is longer
            "source_id": code if len(code) <= 64 else data["dossier_code"],
            "district": district,
            "commune": unit if unit not in (district, CITY_CODE) else None,
            "at": at.isoformat(),
            "message": message,
        }
        # Pending alarms keep their order (a raise and a clear in one batch are both published).
        pending = state.get(PENDING_KEY) or []
        pending.append(alarm)
        state.put(PENDING_KEY, pending)

    # emit -------------------------------------------------------------------------------------------------

    def _payload(
        self,
        kpi: str,
        level: str,
        code: str,
        wid: str,
        num: float,
        den: float | None,
        scale: float,
        unit: str,
        partition: int,
        observed_at: str,
    ) -> dict[str, Any]:
        """A ``KpiObserved`` payload exactly as the model dumps it (encoded without building model objects)."""
        bounds = self._bounds.get(wid)
        if bounds is None:
            if len(self._bounds) > 10_000:
                self._bounds.clear()
            start, seconds = window_bounds(wid)
            bounds = self._bounds[wid] = (start.isoformat(), seconds)
        if den is None:
            value: float | None = num * scale
        else:
            value = num / den * scale if den else None
        return kpi_observed_payload(
            kpi, level, code, bounds[0], bounds[1], value, num, den, unit, partition, observed_at
        )

    def emit(self, state: State, now: datetime) -> Iterable[EncodedEvent]:
        view = self._view(state)
        p = state.partition
        observed_at = now.isoformat().replace("+00:00", "Z")
        payloads: list[dict[str, Any]] = []
        dirty = state.pop(DIRTY_KEY)
        if dirty:
            for ckey in dirty:
                cur = state.get(ckey)
                if cur is None:
                    continue
                counter, level, code, wid = self._counter_of(ckey)
                for kpi, is_ratio, scale, unit in COUNTER_KPIS[counter]:
                    payloads.append(
                        self._payload(
                            kpi,
                            level,
                            code,
                            wid,
                            cur[0],
                            cur[1] if is_ratio else None,
                            scale,
                            unit,
                            p,
                            observed_at,
                        )
                    )
        today = local_date(now)
        today_iso = today.isoformat()
        if view.dirty_scopes or view.day != today_iso:
            self._snapshot(state, view, now, today_iso, payloads, observed_at)
        if state.get("prune_day") != today_iso:
            self._prune(state, now)
            state.put("prune_day", today_iso)
        # an observation's CloudEvents time is when it was observed (as the other processors publish it)
        out = encode_many(KPI_EVENT, payloads, source=SOURCE, time=observed_at) if payloads else []
        pending = state.pop(PENDING_KEY)
        if pending:
            out.extend(
                encode(ALARM_EVENT, ALARM_EVENT.model.model_validate(a), source=SOURCE) for a in pending
            )
        return out

    def _snapshot(
        self,
        state: State,
        view: _PartitionView,
        now: datetime,
        today_iso: str,
        payloads: list[dict[str, Any]],
        observed_at: str,
    ) -> None:
        """Open within deadline / overdue now, and the 766 progress points for today and this month, for the
        scopes that changed (every scope on a new day or after a reload); published when different."""
        day_w, month_w = window_id(now, "d"), window_id(now, "m")
        current = (day_w, month_w)
        if view.day != today_iso:
            scopes = set(view.open) | set(view.published)
            for finished in COUNTERS.keys(state, "on_time"):  # a full scan, once a day
                if finished.window in current:
                    scopes.add((finished.level, finished.code))
        else:
            scopes = view.dirty_scopes
        view.dirty_scopes = set()
        p = state.partition
        for sc in scopes:
            level, code = sc
            agg = view.open.get(sc)
            n_open = agg[0] if agg else 0
            n_late = sum(n for due, n in agg[1].items() if today_iso > due) if agg else 0
            keys = self._snapshot_keys(level, code, day_w, month_w)
            fin_day = state.get(keys[0])
            fin_month = state.get(keys[1])
            values: dict[str, tuple[str, str, float, float | None, float, str]] = {}
            if n_open or fin_day is not None or fin_month is not None:
                values[keys[2]] = (
                    "dossier.open_within_deadline",
                    day_w,
                    float(n_open - n_late),
                    None,
                    1.0,
                    "dossiers",
                )
                values[keys[3]] = (
                    "dossier.overdue_open",
                    day_w,
                    float(n_late),
                    None,
                    1.0,
                    "dossiers",
                )
                for wid, fin, progress_key in ((day_w, fin_day, keys[4]), (month_w, fin_month, keys[5])):
                    fin = fin or [0.0, 0.0]
                    values[progress_key] = (
                        "dossier.progress_766_points",
                        wid,
                        fin[0] + n_open - n_late,
                        fin[1] + n_open,
                        PROGRESS_POINTS,
                        "points",
                    )
            published = view.published.get(sc) or set()
            # Observations published before and no longer defined get their zero (for the current windows).
            for lkey in [k for k in published if k not in values]:
                published.discard(lkey)
                last = state.pop(lkey)
                kpi, _, _, wid = PUBLISHED.parse(lkey)
                if wid in current and last[0] != 0:
                    is_ratio = kpi == "dossier.progress_766_points"
                    payloads.append(
                        self._payload(
                            kpi,
                            level,
                            code,
                            wid,
                            0.0,
                            0.0 if is_ratio else None,
                            PROGRESS_POINTS if is_ratio else 1.0,
                            "points" if is_ratio else "dossiers",
                            p,
                            observed_at,
                        )
                    )
            for lkey, (kpi, wid, num, den, scale, unit) in values.items():
                pair = [num, den]
                if state.get(lkey) != pair:
                    state.put(lkey, pair)
                    published.add(lkey)
                    payloads.append(
                        self._payload(kpi, level, code, wid, num, den, scale, unit, p, observed_at)
                    )
            if published:
                view.published[sc] = published
            else:
                view.published.pop(sc, None)
        view.day = today_iso

    def _prune(self, state: State, now: datetime) -> None:
        today = local_date(now)
        for key in state.keys(COUNTERS.prefix):
            wid = COUNTERS.parse(key).window
            keep = self.day_retention if wid.startswith("d:") else self.month_retention
            if _window_day(wid) < today - keep:
                state.pop(key)


def _open_entry(o: dict) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """An ``o|`` entry as the open view counts it: (its scopes, the due date its clock runs to, None if paused)."""
    return tuple((level, code) for level, code in o["s"]), None if o["p"] else o["due"]


def kpi_processor(settings: Any = None) -> DossierKpiProcessor:
    """Factory used by the center (``PROCESSORS``)."""
    if settings is None or not hasattr(settings, "kpi_day_retention_days"):
        return DossierKpiProcessor()
    return DossierKpiProcessor(
        day_retention_days=settings.kpi_day_retention_days,
        month_retention_days=settings.kpi_month_retention_days,
    )


PROCESSORS = [kpi_processor]
