"""Pure city logic: KPI definitions and thresholds, merging partials, alarm lifecycle, correlation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.city.domain import (
    Alarm,
    Incident,
    LifecycleError,
    acknowledge,
    apply_source_change,
    breach_severity,
    choose_step,
    clear,
    correlate,
    join_incident,
    kpi_status,
    load_definitions,
    merge_partials,
    open_incident,
    worst_status,
)
from services.city.repository import bucket_of
from shared.kpis import KpiDefinition, all_definitions

from .conftest import KPI_FILE

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


# Definitions and thresholds --------------------------------------------------------------------------------
def test_fixture_and_shared_definitions_load_and_merge():
    defs = load_definitions(KPI_FILE)
    assert {"citytest.availability", "citytest.energy_kwh", "citytest.peak_mw"} <= set(defs)
    assert set(all_definitions()) <= set(defs)  # every domain file present in shared/kpis is loaded too
    a = defs["citytest.availability"]
    assert a.name.vi.startswith("Tỉ lệ") and a.windows == [900, 86400] and a.headline


def test_thresholds_must_be_ordered_by_direction():
    with pytest.raises(ValueError, match="critical threshold must be below warning"):
        KpiDefinition(
            id="x.y",
            name={"vi": "a", "en": "a"},
            unit="ratio",
            domain="x",
            windows=[900],
            combine="ratio",
            direction="higher",
            thresholds={"warning": 0.9, "critical": 0.95},
            source="ioc.x.kpis",
            formula="f",
        )


def test_revisions_are_declared_per_published_window_and_default_to_one_window():
    base = dict(
        id="x.y",
        name={"vi": "a", "en": "a"},
        unit="kWh",
        domain="x",
        windows=[900, 86400],
        combine="sum",
        source="t",
        formula="f",
    )
    d = KpiDefinition(**base, revisable_seconds={900: 7200})
    assert (d.revisable_for(900), d.revisable_for(86400)) == (7200, 86400)
    with pytest.raises(ValueError, match="does not publish: \\[3600\\]"):
        KpiDefinition(**base, revisable_seconds={3600: 60})
    with pytest.raises(ValueError, match="negative"):
        KpiDefinition(**base, revisable_seconds={900: -1})


def test_status_against_thresholds(definitions):
    avail = definitions["citytest.availability"]  # higher is better: warning 0.95, critical 0.90
    assert kpi_status(avail, 0.99) == "ok"
    assert kpi_status(avail, 0.95) == "ok"  # at the threshold is still fine
    assert kpi_status(avail, 0.94) == "warning"
    assert kpi_status(avail, 0.89) == "critical"
    assert kpi_status(avail, None) == "unknown"
    peak = definitions["citytest.peak_mw"]  # lower is better: warning 0.5, critical 0.8
    assert kpi_status(peak, 0.4) == "ok"
    assert kpi_status(peak, 0.6) == "warning"
    assert kpi_status(peak, 0.81) == "critical"
    assert kpi_status(None, 0.5) == "unknown"
    assert breach_severity("critical") == "critical" and breach_severity("warning") == "warning"
    assert breach_severity("ok") is None and breach_severity("unknown") is None


# Merging partials ------------------------------------------------------------------------------------------
def test_ratio_merges_sum_of_numerators_over_sum_of_denominators(definitions):
    parts = {"0": {"n": 90.0, "d": 100.0, "v": 0.9}, "1": {"n": 299.0, "d": 300.0, "v": 0.9967}}
    m = merge_partials(parts, definitions["citytest.availability"])
    # (90 + 299) / (100 + 300) = 389 / 400, not the mean of the two ratios
    assert m.value == pytest.approx(0.9725)
    assert (m.numerator, m.denominator, m.partitions) == (389.0, 400.0, 2)


def test_sum_and_max_with_scale(definitions):
    energy = merge_partials(
        {"0": {"n": 12.5, "d": None}, "2": {"n": 7.5, "d": None}}, definitions["citytest.energy_kwh"]
    )
    assert energy.value == 20.0
    peak = merge_partials(
        {"0": {"n": 450.0, "d": None}, "1": {"n": 620.0, "d": None}}, definitions["citytest.peak_mw"]
    )
    assert peak.value == pytest.approx(0.62)  # max(450, 620) kW × 0.001


def test_partition_minus_one_covers_everything_and_ratio_without_denominator_is_undefined(definitions):
    avail = definitions["citytest.availability"]
    m = merge_partials({"-1": {"n": 8.0, "d": 10.0}, "0": {"n": 1.0, "d": 1.0}}, avail)
    assert m.value == pytest.approx(0.8) and m.partitions == 1
    assert merge_partials({"0": {"n": 0.0, "d": 0.0}}, avail).value is None
    assert merge_partials({}, avail).value is None


def test_unknown_kpi_merges_as_ratio_when_denominators_exist_else_sum():
    assert merge_partials({"0": {"n": 1.0, "d": 4.0}, "1": {"n": 1.0, "d": 4.0}}, None).value == 0.25
    assert merge_partials({"0": {"n": 3.0, "d": None}, "1": {"n": 4.0, "d": None}}, None).value == 7.0


def test_worst_status_of_a_district():
    assert worst_status([]) == "unknown"
    assert worst_status(["ok", "warning", "ok"]) == "warning"
    assert worst_status(["ok"], ["minor"]) == "warning"
    assert worst_status(["ok"], ["major"]) == "critical"


# Alarm lifecycle -------------------------------------------------------------------------------------------
def _change(state="raised", severity="major", at=T0, district="D01", domain="meter", source="F-12"):
    return {
        "alarm_id": f"{domain}:feeder_outage:{source}",
        "domain": domain,
        "alarm_type": "feeder_outage",
        "state": state,
        "severity": severity,
        "source_id": source,
        "district": district,
        "commune": None,
        "at": at.isoformat(),
        "message": "feeder down",
    }


def test_lifecycle_active_acknowledged_cleared_with_who_and_when():
    a = apply_source_change(None, _change(), T0)
    assert a.state == "active" and a.raised_at == T0 and a.occurrences == 1
    acked = acknowledge(a, "op-1", T0 + timedelta(minutes=2))
    assert (acked.state, acked.acknowledged_by, acked.acknowledged_at) == (
        "acknowledged",
        "op-1",
        T0 + timedelta(minutes=2),
    )
    with pytest.raises(LifecycleError):
        acknowledge(acked, "op-2", T0 + timedelta(minutes=3))
    cleared = clear(acked, "sup-1", T0 + timedelta(minutes=5))
    assert (cleared.state, cleared.cleared_by) == ("cleared", "sup-1")
    assert cleared.acknowledged_by == "op-1"  # the history of the lifecycle is kept
    with pytest.raises(LifecycleError):
        clear(cleared, "sup-1", T0 + timedelta(minutes=6))
    # the source's original raise delivered again (a replay) does not reopen what the operator cleared
    assert apply_source_change(cleared, _change(), T0) is None
    assert apply_source_change(cleared, _change(), T0 + timedelta(minutes=7)).state == "active"  # a new raise
    with pytest.raises(LifecycleError):
        acknowledge(cleared, "op-1", T0 + timedelta(minutes=6))


def test_source_changes_deduplicate_and_restart_lifecycle():
    a = apply_source_change(None, _change(), T0)
    again = apply_source_change(a, _change(severity="critical"), T0 + timedelta(minutes=1))
    assert again.state == "active" and again.severity == "critical" and again.occurrences == 1
    acked = acknowledge(again, "op-1", T0 + timedelta(minutes=2))
    # a repeated raise keeps the acknowledgement
    assert apply_source_change(acked, _change(), T0 + timedelta(minutes=3)).state == "acknowledged"
    gone = apply_source_change(acked, _change("cleared"), T0 + timedelta(minutes=4))
    assert (gone.state, gone.cleared_by) == ("cleared", "source")
    assert apply_source_change(gone, _change("cleared"), T0 + timedelta(minutes=5)) is None  # duplicate clear
    back = apply_source_change(gone, _change(), T0 + timedelta(minutes=6))
    assert back.state == "active" and back.occurrences == 2 and back.acknowledged_by is None
    # an out-of-order notice older than the last change is ignored
    assert apply_source_change(back, _change("cleared"), T0 + timedelta(minutes=5)) is None
    assert apply_source_change(None, _change("cleared"), T0) is None
    # the very same raise delivered twice changes nothing
    assert apply_source_change(back, _change(at=T0 + timedelta(minutes=6)), T0 + timedelta(minutes=6)) is None


# Correlation -----------------------------------------------------------------------------------------------
def _alarm(domain: str, district: str | None, minutes: float, source: str = "X1") -> Alarm:
    at = T0 + timedelta(minutes=minutes)
    return Alarm(f"{domain}:t:{source}", domain, "t", "major", source, district, None, "m", "active", at, at)


def test_power_failure_cascade_in_one_district_is_one_incident():
    window = timedelta(minutes=15)
    feeder = _alarm("meter", "D01", 0)
    inc = open_incident("D01", feeder)
    signals = _alarm("traffic", "D01", 4)
    assert correlate("D01", signals.raised_at, [inc], window) == inc
    inc = join_incident(inc, signals)
    kiosks = _alarm("kiosk", "D01", 12)
    assert correlate("D01", kiosks.raised_at, [inc], window) == inc
    inc = join_incident(inc, kiosks)
    assert inc.domains == ("meter", "traffic", "kiosk") and inc.alarm_count == 3
    assert inc.opened_at == T0 and inc.last_alarm_at == T0 + timedelta(minutes=12)
    # another district, a city-wide alarm, or too long after the last alarm: not this incident
    assert correlate("D02", T0 + timedelta(minutes=5), [inc], window) is None
    assert correlate(None, T0 + timedelta(minutes=5), [inc], window) is None
    assert correlate("D01", T0 + timedelta(minutes=28), [inc], window) is None


def test_correlation_prefers_the_most_recent_incident():
    old = Incident("INC-a", "D01", T0, T0 + timedelta(minutes=1))
    new = Incident("INC-b", "D01", T0 + timedelta(minutes=5), T0 + timedelta(minutes=6))
    assert (
        correlate("D01", T0 + timedelta(minutes=8), [old, new], timedelta(minutes=15)).incident_id == "INC-b"
    )


# History ---------------------------------------------------------------------------------------------------
def test_history_step_and_buckets():
    assert choose_step(T0, T0 + timedelta(hours=6)) == "raw"
    assert choose_step(T0, T0 + timedelta(days=5)) == "minute"
    assert choose_step(T0, T0 + timedelta(days=30)) == "hour"
    assert choose_step(T0, T0 + timedelta(days=365)) == "day"
    t = datetime(2024, 5, 1, 18, 47, 31, tzinfo=UTC)
    assert bucket_of(t, "minute") == datetime(2024, 5, 1, 18, 47, tzinfo=UTC)
    assert bucket_of(t, "hour") == datetime(2024, 5, 1, 18, tzinfo=UTC)
    # 18:47 UTC is 01:47 on 2 May in Hanoi: the local day starts at 17:00 UTC on 1 May
    assert bucket_of(t, "day") == datetime(2024, 5, 1, 17, tzinfo=UTC)
