"""The city KPI processor: domain KPI partials in, the merged city view and city alarms out.

Every domain publishes, per KPI, area and window, one observation per source partition (see
``shared.contracts.common``). All partials of one KPI and area share a record key, so they arrive on the same
partition of ``ioc.<domain>.kpis`` and therefore in the same processor state: the state keeps the latest
observation of every source partition per (kpi, scope, window) and ``emit`` publishes the merged value.

State keys (one partition of the input topics):
- ``g|<kpi>|<level>|<code>|<window_seconds>|<window_start>`` → ``{partition: {n, d, v, o, u}}``
- ``dirty|<group>`` → 1 while the group has not been published since it changed
- ``latest|<kpi>|<level>|<code>|<window_seconds>`` → newest window start seen (alarms follow it)
- ``seen|<domain>|<district or HN>`` → latest ``observed_at`` from that district (HN: the whole domain)
- ``alarm|<alarm_id>`` → severity of a city alarm currently raised
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from services.city import publishing
from services.city.domain import (
    CITY_SCOPE,
    SCOPE_LEVELS,
    breach_severity,
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

KPI_OBSERVED_SUFFIX = ".kpi.observed.v1"
PRUNE_EVERY = timedelta(seconds=60)


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


class CityKpiProcessor(StreamProcessor):
    """Merge domain KPI partials into per-district and city-wide values; raise breach and no-signal alarms."""

    name = "city-kpi"
    topics: tuple[str, ...] = ()
    tick_seconds = 5.0

    def __init__(self, definitions: dict[str, KpiDefinition], *, topics: Iterable[str] | None = None,
                 district_silence: timedelta = timedelta(minutes=30),
                 domain_silence: timedelta = timedelta(minutes=15)):
        self.definitions = definitions
        self.topics = tuple(topics) if topics is not None else domain_kpi_topics()
        self.district_silence = district_silence
        self.domain_silence = domain_silence

    # apply -------------------------------------------------------------------------------------------------
    def apply(self, event: ReceivedEvent, state: State) -> None:
        """Keep the newest observation per (kpi, scope, window, source partition); note who reported."""
        if not event.type.endswith(KPI_OBSERVED_SUFFIX):
            return
        d = event.data
        domain = domain_of(d["kpi"], self.definitions.get(d["kpi"]))
        observed = d["observed_at"]
        self._saw(state, f"seen|{domain}|{CITY_SCOPE}", observed)
        if d["scope_level"] not in SCOPE_LEVELS:
            return
        if d["scope_level"] == "district":
            self._saw(state, f"seen|{domain}|{d['scope_code']}", observed)
        window_start = _parse(d["window_start"]).isoformat()
        group = f"{d['kpi']}|{d['scope_level']}|{d['scope_code']}|{d['window_seconds']}|{window_start}"
        parts: dict[str, Any] = dict(state.get(f"g|{group}") or {})
        pkey = str(d.get("partition", -1))
        old = parts.get(pkey)
        if old is not None and _parse(old["o"]) > _parse(observed):
            return  # an older observation arriving late
        parts[pkey] = {"n": d.get("numerator", 0.0), "d": d.get("denominator"), "v": d.get("value"),
                       "o": observed, "u": d.get("unit", "")}
        state.put(f"g|{group}", parts)
        state.put(f"dirty|{group}", 1)

    @staticmethod
    def _saw(state: State, key: str, observed: str) -> None:
        last = state.get(key)
        if last is None or _parse(last) < _parse(observed):
            state.put(key, observed)

    # emit --------------------------------------------------------------------------------------------------
    def emit(self, state: State, now: datetime) -> list[EncodedEvent]:
        """Publish every changed group; raise/clear breach alarms on the newest window; detect silence."""
        out: list[EncodedEvent] = []
        for dirty_key in state.keys("dirty|"):
            state.pop(dirty_key)
            group = dirty_key[len("dirty|"):]
            parts = state.get(f"g|{group}")
            if parts:
                out.extend(self._publish_group(state, group, parts, now))
        out.extend(self._silence(state, now))
        last_prune = state.get("meta|pruned_at")
        if last_prune is None or _parse(last_prune) + PRUNE_EVERY <= now:
            self._prune(state, now)
            state.put("meta|pruned_at", now.isoformat())
        return out

    def _publish_group(self, state: State, group: str, parts: dict, now: datetime) -> list[EncodedEvent]:
        kpi, level, code, wsec, wstart = group.split("|")
        definition = self.definitions.get(kpi)
        merged = merge_partials(parts, definition)
        status = kpi_status(definition, merged.value)
        unit = definition.unit if definition is not None else next(iter(parts.values())).get("u", "")
        out = [publishing.kpi_updated(
            kpi=kpi, domain=domain_of(kpi, definition), scope_level=level, scope_code=code, window_start=wstart,
            window_seconds=int(wsec), value=merged.value, numerator=merged.numerator,
            denominator=merged.denominator, unit=unit[:24], status=status,
            target=definition.target if definition is not None else None, partitions=merged.partitions, now=now,
        )]
        series = f"latest|{kpi}|{level}|{code}|{wsec}"
        latest = state.get(series)
        if latest is not None and _parse(latest) > _parse(wstart):
            return out  # a late update of an older window: the alarm follows the newest window only
        state.put(series, wstart)
        # Breach alarms on the definition's primary window only, so one KPI gives one alarm per area.
        if definition is None or int(wsec) != definition.windows[0]:
            return out
        alarm_id = f"city:kpi_breach:{kpi}:{level}:{code}"
        severity = breach_severity(status)
        current = state.get(f"alarm|{alarm_id}")
        district = code if level == "district" else None
        if severity is not None and severity != current:
            state.put(f"alarm|{alarm_id}", severity)
            threshold = definition.thresholds.critical if status == "critical" else definition.thresholds.warning
            out.append(publishing.alarm_changed(
                alarm_id=alarm_id, alarm_type="kpi_breach", state="raised", severity=severity,
                source_id=f"{kpi}:{code}", district=district, now=now,
                message=f"{definition.name.en} ({code}) = {merged.value:.4g} {definition.unit}: "
                        f"{status} (threshold {threshold:g})",
            ))
        elif severity is None and current is not None and status != "unknown":
            state.pop(f"alarm|{alarm_id}")
            out.append(publishing.alarm_changed(
                alarm_id=alarm_id, alarm_type="kpi_breach", state="cleared", severity=current,
                source_id=f"{kpi}:{code}", district=district, now=now,
                message=f"{definition.name.en} ({code}) back within thresholds",
            ))
        return out

    def _silence(self, state: State, now: datetime) -> list[EncodedEvent]:
        out: list[EncodedEvent] = []
        for key, last in state.items("seen|"):
            _, domain, code = key.split("|")
            whole_domain = code == CITY_SCOPE
            limit = self.domain_silence if whole_domain else self.district_silence
            alarm_id = f"city:no_signal:{domain}:{code}"
            raised = state.get(f"alarm|{alarm_id}")
            silent = now - _parse(last) > limit
            severity = "critical" if whole_domain else "major"
            where = "the whole city" if whole_domain else f"district {code}"
            if silent and raised is None:
                state.put(f"alarm|{alarm_id}", severity)
                out.append(publishing.alarm_changed(
                    alarm_id=alarm_id, alarm_type="no_signal", state="raised", severity=severity,
                    source_id=f"{domain}:{code}", district=None if whole_domain else code, now=now,
                    message=f"no {domain} KPIs from {where} since {last}",
                ))
            elif not silent and raised is not None:
                state.pop(f"alarm|{alarm_id}")
                out.append(publishing.alarm_changed(
                    alarm_id=alarm_id, alarm_type="no_signal", state="cleared", severity=raised,
                    source_id=f"{domain}:{code}", district=None if whole_domain else code, now=now,
                    message=f"{domain} KPIs from {where} are arriving again",
                ))
        return out

    def _prune(self, state: State, now: datetime) -> None:
        """Forget windows that closed long ago (late partials for them are no longer merged)."""
        for key in state.keys("g|"):
            _, kpi, level, code, wsec, wstart = key.split("|")
            keep = timedelta(seconds=2 * int(wsec)) + timedelta(hours=1)
            if _parse(wstart) + keep < now and state.get(f"latest|{kpi}|{level}|{code}|{wsec}") != wstart:
                state.pop(key)
                state.pop(f"dirty|{key[2:]}")
            elif _parse(wstart) + timedelta(seconds=int(wsec)) + timedelta(days=7) < now:
                state.pop(key)
                state.pop(f"latest|{kpi}|{level}|{code}|{wsec}")


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
