"""The city KPI processor: domain KPI partials in, the merged city view and city alarms out.

Every domain publishes, per KPI, area and window, one observation per source partition (see
``shared.contracts.common``). All partials of one KPI and area share a record key, so they arrive on the same
partition of ``ioc.<domain>.kpis`` and therefore in the same processor state: the state keys the latest
observation of every source partition per (kpi, scope, window) and ``emit`` publishes the merged value.

State keys (one partition of the input topics; a ``:`` after the head so ``State`` indexes them by kind):
- ``g:<kpi>|<level>|<code>|<window_seconds>|<window_start>`` → ``{partition: {n, d, v, o, u}}``
- ``latest:<kpi>|<level>|<code>|<window_seconds>`` → newest window start published (alarms follow it)
- ``floor:<kpi>|<level>|<code>|<window_seconds>`` → newest window start forgotten: partials of windows up to
  it are ignored
- ``seen:all`` → ``{"<domain>|<district or HN>": latest observed_at}`` (HN: the whole domain); one key, so a
  batch writes one changelog record for it, not one per district
- ``alarm:<alarm_id>`` → severity of a no-signal alarm currently raised
- ``j:<alarm_id>`` → what breach judgement remembers of a KPI alarm (level raised, pending change and since
  when, the window judged last; see ``services/city/alarming.py``)
- ``meta:pruned_at`` → when old windows were last pruned

How long windows are kept: a source may re-publish a window's partial as long as late data still changes it,
which its KPI definition declares per window length (``revisable_seconds``: the meter 26 h for quarter hours,
the dossier processor 35 days for days). The city keeps every window of a series that long after its end,
judged in event time against the series' newest window (so a catch-up racing through event time does not
hold more) plus ``SKEW_MARGIN`` for source partitions that lag the others, and forgets the older ones. A
partial of a window it has forgotten, or older than that horizon, is ignored (``ioc_late_inputs_ignored_total``)
rather than published alone as the whole window's value. A series whose newest window got no partial for
``STOPPED_AFTER`` (wall clock) is forgotten whole.

Which groups changed since they were last published is kept in memory per partition, not in the state: the
runtime drops that memory whenever it (re)loads a partition's state (``forget_emitted``), and a state this
processor has not seen yet counts as all changed, so after a restart every group is published once again
(republishing is harmless: the latest value per group is what consumers keep). Keys of the earlier layout
(``g|…``, ``dirty|…``, ``latest|…``, ``seen|…``, ``alarm|…``, ``meta|…``) are converted when a state is loaded.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from sys import intern
from typing import Any, NamedTuple

from services.city import publishing
from services.city.alarming import LEVEL, AlarmRule, judge, load_rules, tidy
from services.city.domain import (
    CITY_SCOPE,
    SCOPE_LEVELS,
    domain_of,
    kpi_status,
    load_definitions,
    merge_partials,
)
from services.city.settings import CitySettings
from shared.contracts import TOPICS
from shared.contracts.cloudevents import EncodedEvent, ReceivedEvent, parse_time
from shared.kpis import KpiDefinition
from shared.stream import State, StreamProcessor
from shared.stream.windows import KeySpace, TumblingWindows

KPI_OBSERVED_SUFFIX = ".kpi.observed.v1"
PRUNE_EVERY = timedelta(seconds=60)
#: how far a source's partitions may lag one another in event time: windows are kept this much longer
SKEW_MARGIN = timedelta(hours=1)
#: a series whose newest window got no partial for this long (wall clock) has stopped; it is forgotten whole
STOPPED_AFTER = timedelta(days=7)
SEEN_KEY = "seen:all"
#: breaches are judged at most this often; a window is judged at the earliest this long after its end
JUDGE_EVERY = timedelta(seconds=5)
JUDGE_GRACE = timedelta(seconds=60)
#: ...and only once its partials have not changed for this long (wall clock), looking this many windows back
JUDGE_QUIET = timedelta(seconds=60)
JUDGE_SEARCH_WINDOWS = 48
PRUNED_AT_KEY = "meta:pruned_at"
_LEGACY_HEADS = ("g|", "dirty|", "latest|", "seen|", "alarm|", "meta|")
#: distinct timestamp strings remembered parsed (observations of one domain emit share one ``observed_at``)
TIME_CACHE_SIZE = 20_000


class Series(NamedTuple):
    """One KPI of one area at one window length: ``<kpi>|<level>|<code>|<window_seconds>``."""

    kpi: str
    level: str
    code: str
    window_seconds: int


class Group(NamedTuple):
    """One window of a series; ``window_start`` is the normalised isoformat (it holds colons: fields are
    joined with ``|``)."""

    kpi: str
    level: str
    code: str
    window_seconds: int
    window_start: str


GROUPS = KeySpace("g", Group, "|", head_sep=":")
LATEST = KeySpace("latest", Series, "|", head_sep=":")
FLOOR = KeySpace("floor", Series, "|", head_sep=":")


def domain_kpi_topics(domains: Iterable[str] | None = None) -> tuple[str, ...]:
    """``ioc.<d>.kpis`` of the given domains (default: every registered domain but the city)."""
    names = sorted(t for t in TOPICS if t.startswith("ioc.") and t.endswith(".kpis") and t != "ioc.city.kpis")
    if domains is not None:
        wanted = {f"ioc.{d}.kpis" for d in domains}
        names = [t for t in names if t in wanted]
    return tuple(names)


def _parse(ts: str) -> datetime:
    t = parse_time(ts)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


# Cached: the observations of one domain emit share one ``observed_at`` and a few window starts.
@lru_cache(maxsize=TIME_CACHE_SIZE)
def _time(ts: str) -> datetime:
    return _parse(ts)


@lru_cache(maxsize=TIME_CACHE_SIZE)
def _window_start(ts: str) -> str:
    """``window_start`` as received → the normalised isoformat groups are keyed by."""
    return _parse(ts).isoformat()


# Cached: emit reads the keys of the same groups and series again every cycle.
@lru_cache(maxsize=TIME_CACHE_SIZE)
def _group(group: str) -> Group:
    """The typed key of ``group`` (a ``g:`` key without its head)."""
    return GROUPS.parse(GROUPS.prefix + group)


@lru_cache(maxsize=TIME_CACHE_SIZE)
def _latest_key(group: str) -> str:
    """The ``latest:`` key of the series of ``group``."""
    return LATEST.key(Series._make(_group(group)[:4]))


@lru_cache(maxsize=TIME_CACHE_SIZE)
def _series(latest_key: str) -> Series:
    return LATEST.parse(latest_key)


class CityKpiProcessor(StreamProcessor):
    """Merge domain KPI partials into per-district and city-wide values; raise breach and no-signal alarms."""

    name = "city-kpi"
    # Chosen per instance (the KPI domains come from settings); StreamProcessor declares topics a ClassVar.
    topics: tuple[str, ...] = ()  # type: ignore[misc]
    tick_seconds = 5.0
    # A partial replaces the older one of its (group, source partition) and signal times only move forward, so
    # an observation applied again changes nothing: no window of event ids to keep (it held ~10 MiB per
    # partition and grew the worker's memory during its first minutes).
    dedup_window = 0

    def __init__(
        self,
        definitions: dict[str, KpiDefinition],
        *,
        topics: Iterable[str] | None = None,
        district_silence: timedelta = timedelta(minutes=30),
        domain_silence: timedelta = timedelta(minutes=15),
        rules: dict[str, AlarmRule] | None = None,
    ):
        self.definitions = definitions
        self.topics = tuple(topics) if topics is not None else domain_kpi_topics()
        self.district_silence = district_silence
        self.domain_silence = domain_silence
        self._domains: dict[str, str] = {}  # kpi → domain
        self._areas: dict[tuple[str, str, str], tuple[tuple[str, ...], str | None]] = {}  # see _about
        self._windows: dict[Series, TumblingWindows] = {}  # see _windows_of
        self.rules = load_rules(definitions) if rules is None else rules
        self._judged_at: dict[int, datetime] = {}  # partition → last breach judgement (wall clock)
        self._watching_since: datetime | None = None  # first emit: silence is only judged after watching

    # helpers -----------------------------------------------------------------------------------------------
    def _domain(self, kpi: str) -> str:
        d = self._domains.get(kpi)
        if d is None:
            d = self._domains[kpi] = domain_of(kpi, self.definitions.get(kpi))
        return d

    def _changed_groups(self, state: State) -> dict[str, None]:
        """Groups of ``state`` changed since last published (all of them for a state not seen before)."""
        return self.derived(state, _all_groups)

    # apply -------------------------------------------------------------------------------------------------
    def apply(self, event: ReceivedEvent, state: State) -> None:
        """Keep the newest observation per (kpi, scope, window, source partition); note who reported.

        The per-event reference of :meth:`apply_batch` (tests compare the two)."""
        if not event.type.endswith(KPI_OBSERVED_SUFFIX):
            return
        d = event.data
        domain = self._domain(d["kpi"])
        observed = d["observed_at"]
        at = _time(observed)
        self._saw(state, {f"{domain}|{CITY_SCOPE}": (at, observed)})
        if d["scope_level"] not in SCOPE_LEVELS:
            return
        if d["scope_level"] == "district":
            self._saw(state, {f"{domain}|{d['scope_code']}": (at, observed)})
        window_start = _parse(d["window_start"]).isoformat()
        gkey = GROUPS.key(
            Group(d["kpi"], d["scope_level"], d["scope_code"], d["window_seconds"], window_start)
        )
        group = gkey[len(GROUPS.prefix) :]
        held = state.get(gkey)
        if held is None and self._too_late(state, group):
            return
        parts: dict[str, Any] = dict(held or {})
        pkey = intern(str(d.get("partition", -1)))
        old = parts.get(pkey)
        if old is not None and _parse(old["o"]) > at:
            return  # an older observation arriving late
        parts[pkey] = new = {
            "n": d.get("numerator", 0.0),
            "d": d.get("denominator"),
            "v": d.get("value"),
            "o": intern(observed),
            "u": intern(d.get("unit", "")),
        }
        state.put(gkey, parts)
        if old is None or any(old[k] != new[k] for k in ("n", "d", "v", "u")):
            self._changed_groups(state)[group] = None

    def apply_batch(self, events: list[ReceivedEvent], state: State) -> None:
        """Same result as applying one by one: per (group, source partition) only the batch's newest
        observation (the last of equal times) can win; per reporter the first newest time is kept."""
        changed = self._changed_groups(state)
        time_of, window_start, areas = _time, _window_start, self._areas
        seen: dict[str, tuple[datetime, str]] = {}
        newest: dict[tuple[str, str], tuple[datetime, dict]] = {}
        for event in events:
            if not event.type.endswith(KPI_OBSERVED_SUFFIX):
                continue
            d = event.data
            area = (d["kpi"], d["scope_level"], d["scope_code"])
            about = areas.get(area)
            if about is None:
                about = self._about(area)
            observed = d["observed_at"]
            at = time_of(observed)
            for reporter in about[0]:
                last = seen.get(reporter)
                if last is None or last[0] < at:
                    seen[reporter] = (at, observed)
            if about[1] is None:
                continue  # an area the city does not publish (commune, agency): it only counts as a signal
            ident = (
                f"{about[1]}{d['window_seconds']}|{window_start(d['window_start'])}",
                intern(str(d.get("partition", -1))),
            )
            prev = newest.get(ident)
            if prev is None or prev[0] <= at:
                newest[ident] = (at, d)
        if seen:
            self._saw(state, seen)
        head = GROUPS.prefix
        for (group, pkey), (at, d) in newest.items():
            gkey = head + group
            parts = state.get(gkey)
            # Interned: every window holds these few strings (partition, emit time, unit) once per partition;
            # shared they cost nothing, copied they were over a quarter of the memory of the windows kept.
            entry = {
                "n": d.get("numerator", 0.0),
                "d": d.get("denominator"),
                "v": d.get("value"),
                "o": intern(d["observed_at"]),
                "u": intern(d.get("unit", "")),
            }
            if parts is None:
                if self._too_late(state, group):
                    continue
                parts = {}
            else:
                old = parts.get(pkey)
                if old is not None:
                    if time_of(old["o"]) > at:
                        continue  # an older observation arriving late
                    if (
                        old["n"] == entry["n"]
                        and old["d"] == entry["d"]
                        and old["v"] == entry["v"]
                        and old["u"] == entry["u"]
                    ):
                        # Same figures: nothing to publish, but its time moves on (late ones are judged by it).
                        old["o"] = entry["o"]
                        state.put(gkey, parts)
                        continue
            parts[pkey] = entry
            state.put(gkey, parts)
            changed[group] = None

    def _windows_of(self, series: Series) -> TumblingWindows:
        """The windows of ``series``: revisable (and kept) as long as its KPI definition says a source may revise
        them, plus :data:`SKEW_MARGIN`, counted back from the series' newest window (``behind``)."""
        windows = self._windows.get(series)
        if windows is None:
            seconds = series.window_seconds
            definition = self.definitions.get(series.kpi)
            revisable = definition.revisable_for(seconds) if definition is not None else seconds
            grace = revisable + int(SKEW_MARGIN.total_seconds())
            windows = self._windows[series] = TumblingWindows(seconds, grace=grace)
        return windows

    def _past_horizon(self, series: Series, start: datetime, latest: str | None) -> bool:
        """Whether a window of ``series`` starting at ``start`` is older than the series keeps behind its newest
        window ``latest`` (a window start, or None when none was published yet)."""
        return latest is not None and self._windows_of(series).behind(
            start.timestamp(), _time(latest).timestamp()
        )

    def _too_late(self, state: State, group: str) -> bool:
        """Whether a partial of ``group``, a window not held, must be ignored: the city forgot that window, or
        it is older than a series keeps (its other partials may be forgotten before they arrive)."""
        g = _group(group)
        series = Series._make(g[:4])
        floor = state.get(FLOOR.key(series))
        latest = state.get(LATEST.key(series))
        if floor is None and latest is None:
            return False
        start = _time(g.window_start)
        if (floor is not None and start <= _time(floor)) or self._past_horizon(series, start, latest):
            self.ignored_late()
            return True
        return False

    def _about(self, area: tuple[str, str, str]) -> tuple[tuple[str, ...], str | None]:
        """(reporters an observation of ``area`` counts as a signal for, its group prefix or None)."""
        if len(self._areas) >= TIME_CACHE_SIZE:
            self._areas.clear()
        kpi, level, code = area
        domain = self._domain(kpi)
        reporters = (
            (f"{domain}|{CITY_SCOPE}", f"{domain}|{code}")
            if level == "district"
            else (f"{domain}|{CITY_SCOPE}",)
        )
        prefix = GROUPS.within(kpi, level, code)[len(GROUPS.prefix) :] if level in SCOPE_LEVELS else None
        about = self._areas[area] = (reporters, prefix)
        return about

    def _saw(self, state: State, batch: dict[str, tuple[datetime, str]]) -> None:
        stored = state.get(SEEN_KEY)
        if stored is None:
            stored = {}
        moved = False
        time_of = _time
        for reporter, (at, observed) in batch.items():
            last = stored.get(reporter)
            if last is None or time_of(last) < at:
                stored[reporter] = observed
                moved = True
        if moved:
            state.put(SEEN_KEY, stored)

    # emit --------------------------------------------------------------------------------------------------
    def emit(self, state: State, now: datetime) -> list[EncodedEvent]:
        """Publish every changed group; raise/clear breach alarms on the newest window; detect silence."""
        changed = self._changed_groups(state)
        kpis: list[dict[str, Any]] = []
        alarms: list[EncodedEvent] = []
        if changed:
            groups = list(changed)
            changed.clear()
            updated_at = publishing.iso(now)
            for group in groups:
                parts = state.get(GROUPS.prefix + group)
                if parts:
                    self._publish_group(state, group, parts, now, updated_at, kpis, alarms)
        judged_at = self._judged_at.get(state.partition)
        if judged_at is None or judged_at + JUDGE_EVERY <= now or now < judged_at:
            self._judged_at[state.partition] = now
            self._judge_breaches(state, now, alarms)
        self._silence(state, now, alarms)
        last_prune = state.get(PRUNED_AT_KEY)
        if last_prune is None or _time(last_prune) + PRUNE_EVERY <= now:
            self._prune(state, now)
            state.put(PRUNED_AT_KEY, now.isoformat())
        return publishing.kpis_updated(kpis, now) + alarms if kpis else alarms

    def _publish_group(
        self,
        state: State,
        group: str,
        parts: dict,
        now: datetime,
        updated_at: str,
        kpis: list[dict[str, Any]],
        alarms: list[EncodedEvent],
    ) -> None:
        kpi, level, code, wsec, wstart = _group(group)
        definition = self.definitions.get(kpi)
        merged = merge_partials(parts, definition)
        if not self.changed_since_emitted(
            state.partition, group, (merged.value, merged.numerator, merged.denominator, merged.partitions)
        ):
            # Same figures as last published from here, so the alarm decision taken then still holds.
            return
        status = kpi_status(definition, merged.value)
        unit = definition.unit if definition is not None else next(iter(parts.values())).get("u", "")
        kpis.append(
            publishing.kpi_payload(
                kpi=kpi,
                domain=self._domain(kpi),
                scope_level=level,
                scope_code=code,
                window_start=wstart.replace("+00:00", "Z"),
                window_seconds=wsec,
                value=tidy(merged.value),
                numerator=tidy(merged.numerator),
                denominator=tidy(merged.denominator),
                unit=unit[:24],
                status=status,
                target=definition.target if definition is not None else None,
                partitions=merged.partitions,
                updated_at=updated_at,
            )
        )
        series = _latest_key(group)
        latest = state.get(series)
        if latest is None or (latest != wstart and _time(latest) < _time(wstart)):
            state.put(series, wstart)  # breaches are judged in _judge_breaches, on complete windows

    def _judge_breaches(self, state: State, now: datetime, out: list[EncodedEvent]) -> None:
        """Judge every series with an alarm rule on its primary window (see services/city/alarming.py):
        the last complete window (once each), or the running window for level KPIs; raise/clear alarms."""
        for key in state.keys(LATEST.prefix):
            series = _series(key)
            kpi, level, code, wsec = series
            rule = self.rules.get(kpi)
            definition = self.definitions.get(kpi)
            if rule is None or definition is None or wsec != definition.windows[0]:
                continue
            latest = _time(state[key])
            length = timedelta(seconds=wsec)
            if rule.judge == "running":
                start, at = latest, now
            else:
                found = self._settled_window(state, series, latest, length, rule.settle_seconds, now)
                if found is None:
                    continue
                start, at = found, found + length
            parts = state.get(GROUPS.key(Group(*series, start.isoformat())))
            if not parts:
                continue
            alarm_id = f"city:kpi_breach:{kpi}:{level}:{code}"
            memory = state.get("j:" + alarm_id)
            if memory is None and (raised := state.pop("alarm:" + alarm_id, None)) is not None:
                memory = {"lvl": LEVEL.get(raised, 2)}  # an alarm raised by the earlier, per-window rule
            judged_start = start.isoformat()
            if rule.judge == "complete" and memory is not None and memory.get("w") == judged_start:
                continue  # each complete window is judged once
            merged = merge_partials(parts, definition)
            verdict = judge(
                definition, rule, memory, value=merged.value, denominator=merged.denominator, at=at
            )
            if not verdict.judged:
                continue
            state.put("j:" + alarm_id, {**verdict.memory, "w": judged_start})
            if verdict.action is None:
                continue
            # judge() names the severity whenever it decides an action.
            assert verdict.severity is not None
            district = code if level == "district" else None
            shown = tidy(merged.value)
            window = "running" if rule.judge == "running" else "complete"
            if verdict.action == "raise":
                status = "critical" if verdict.severity == "critical" else "warning"
                threshold = getattr(definition.thresholds, status)
                message = (
                    f"{definition.name.en} ({code}) = {shown:.4g} {definition.unit} in the {window} window "
                    f"from {publishing.iso(start)}: {status} (threshold {threshold:g})"
                )
            else:
                message = (
                    f"{definition.name.en} ({code}) back within thresholds ({shown:.4g} {definition.unit})"
                )
            out.append(
                publishing.alarm_changed(
                    alarm_id=alarm_id,
                    alarm_type="kpi_breach",
                    state="raised" if verdict.action == "raise" else "cleared",
                    severity=verdict.severity,
                    source_id=f"{kpi}:{code}",
                    district=district,
                    now=now,
                    message=message,
                )
            )

    @staticmethod
    def _settled_window(
        state: State,
        series: Series,
        latest: datetime,
        length: timedelta,
        settle_seconds: float,
        now: datetime,
    ) -> datetime | None:
        """Start of the newest window of ``series`` that ended ``settle_seconds`` ago and whose partials have not
        changed for :data:`JUDGE_QUIET` (wall clock): its figures are final. While a source catches up through
        past windows the newest windows are still receiving partials (other partitions, late readings)."""
        settle = timedelta(seconds=max(settle_seconds, JUDGE_GRACE.total_seconds()))
        start = latest
        for _ in range(JUDGE_SEARCH_WINDOWS):
            if start + length + settle <= now:
                parts = state.get(GROUPS.key(Group(*series, start.isoformat())))
                if parts is None:
                    return None  # a gap: older windows are not judged any more
                if max(_time(p["o"]) for p in parts.values()) + JUDGE_QUIET <= now:
                    return start
            start -= length
        return None

    def _silence(self, state: State, now: datetime, out: list[EncodedEvent]) -> None:
        if self._watching_since is None or now < self._watching_since:
            self._watching_since = now
        seen = state.get(SEEN_KEY)
        if not seen:
            return
        for reporter, last in list(seen.items()):
            domain, code = reporter.split("|")
            whole_domain = code == CITY_SCOPE
            limit = self.domain_silence if whole_domain else self.district_silence
            alarm_id = f"city:no_signal:{domain}:{code}"
            raised = state.get(f"alarm:{alarm_id}")
            # Only what this worker watched stay silent counts: after a restart the last-seen times are old.
            silent = now - _time(last) > limit and now - self._watching_since >= limit
            if silent == (raised is not None):
                continue
            severity = "critical" if whole_domain else "major"
            where = "the whole city" if whole_domain else f"district {code}"
            if silent:
                state.put(f"alarm:{alarm_id}", severity)
                out.append(
                    publishing.alarm_changed(
                        alarm_id=alarm_id,
                        alarm_type="no_signal",
                        state="raised",
                        severity=severity,
                        source_id=f"{domain}:{code}",
                        district=None if whole_domain else code,
                        now=now,
                        message=f"no {domain} KPIs from {where} since {last}",
                    )
                )
            else:
                state.pop(f"alarm:{alarm_id}")
                out.append(
                    publishing.alarm_changed(
                        alarm_id=alarm_id,
                        alarm_type="no_signal",
                        state="cleared",
                        severity=raised,
                        source_id=f"{domain}:{code}",
                        district=None if whole_domain else code,
                        now=now,
                        message=f"{domain} KPIs from {where} are arriving again",
                    )
                )

    def _prune(self, state: State, now: datetime) -> None:
        """Forget windows older than their series keeps, and series that stopped (see the module docstring)."""
        changed = self._changed_groups(state)
        held: dict[Series, list[tuple[datetime, str]]] = {}  # series → its windows still kept (start, group)
        forgotten: dict[Series, datetime] = {}  # series → newest window start forgotten now
        head = len(GROUPS.prefix)
        for key in state.keys(GROUPS.prefix):
            group = key[head:]
            g = GROUPS.parse(key)
            series = Series._make(g[:4])
            start = _time(g.window_start)
            if self._past_horizon(series, start, state.get(LATEST.key(series))):
                state.pop(key)
                changed.pop(group, None)
                forgotten[series] = max(start, forgotten.get(series, start))
            else:
                held.setdefault(series, []).append((start, group))
        stopped = now - STOPPED_AFTER
        for series, windows in held.items():
            newest_start, newest = max(windows)
            if max(_time(p["o"]) for p in state[GROUPS.prefix + newest].values()) >= stopped:
                continue
            for _, group in windows:
                state.pop(GROUPS.prefix + group)
                changed.pop(group, None)
            forgotten[series] = newest_start  # newer than any window forgotten in the loop above
        for series, start in forgotten.items():
            floor_key = FLOOR.key(series)
            floor = state.get(floor_key)
            if floor is None or _time(floor) < start:
                state.put(floor_key, start.isoformat())


def _all_groups(state: State) -> dict[str, None]:
    """Every group of a (re)loaded state, as changed: after a reload each is published once again."""
    _upgrade(state)
    groups = state.keys(GROUPS.prefix)
    for key in groups:  # share the strings the fold shares (see apply_batch); nothing is marked changed
        parts = state[key]
        for pkey in list(parts):
            part = parts.pop(pkey)
            part["o"], part["u"] = intern(part["o"]), intern(part.get("u", ""))
            parts[intern(pkey)] = part
    head = len(GROUPS.prefix)
    return dict.fromkeys(k[head:] for k in groups)


def _upgrade(state: State) -> None:
    """Convert keys of the earlier state layout (``g|…`` etc.) to this one; a no-op for current states."""
    legacy = [k for k in state.keys() if k.startswith(_LEGACY_HEADS)]
    if not legacy:
        return
    seen = dict(state.get(SEEN_KEY) or {})
    for key in legacy:
        value = state.pop(key)
        head, _, rest = key.partition("|")
        if head == "seen":
            seen[rest] = value
        elif head == "meta":
            state.put(f"meta:{rest}", value)
        elif head != "dirty":  # the in-memory changed set starts as "everything" anyway
            state.put(f"{head}:{rest}", value)
    if seen:
        state.put(SEEN_KEY, seen)


def city_kpi_processor(settings: CitySettings | None = None) -> CityKpiProcessor:
    """The processor as ``ioc up`` runs it."""
    settings = settings or CitySettings()
    return CityKpiProcessor(
        load_definitions(settings.kpi_definitions_path),
        topics=domain_kpi_topics(settings.kpi_domains),
        district_silence=timedelta(seconds=settings.district_silence_seconds),
        domain_silence=timedelta(seconds=settings.domain_silence_seconds),
    )


PROCESSORS = [city_kpi_processor]
