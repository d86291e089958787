"""Traffic-signal contracts: hi-res controller events, the intersection registry, live signal state and the
15-minute signal performance measures (ATSPM), plus the domain's KPI and alarm topics.

Hi-res events travel in chunks: one record holds a time-ordered run of one controller's events (Indiana
enumerations), keyed by controller id, because a controller logs several events per second and one record per
event would cost more in headers than in data.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from shared.contracts.base import (
    AreaCode,
    EntityId,
    EventModel,
    StrictFloat,
    StrictInt,
    TopicSpec,
    event_type,
    register_topic,
)
from shared.contracts.common import domain_topics

# Events and registry are consumed together by the measures processor: same partition count, same key.
PARTITIONS = 3

HIRES_TOPIC = register_topic(
    TopicSpec(
        name="ioc.traffic.events",
        partitions=PARTITIONS,
        key="controller_id",
        owner="traffic",
        description="High-resolution signal controller event logs (Indiana enumerations), in time-ordered "
        "chunks per controller.",
    )
)
REGISTRY_TOPIC = register_topic(
    TopicSpec(
        name="ioc.traffic.registry",
        partitions=PARTITIONS,
        key="controller_id",
        owner="traffic",
        description="Latest configuration of every intersection (detectors, phases, district), keyed by "
        "controller id; compacted.",
        retention_ms=None,
        compacted=True,
    )
)
SIGNAL_STATE_TOPIC = register_topic(
    TopicSpec(
        name="ioc.traffic.signal_state",
        partitions=PARTITIONS,
        key="intersection_id",
        owner="traffic",
        description="Live SPaT-like signal state per intersection, derived from the hi-res event stream.",
        retention_ms=24 * 3600 * 1000,
    )
)
MEASURES_TOPIC = register_topic(
    TopicSpec(
        name="ioc.traffic.measures",
        partitions=PARTITIONS,
        key="intersection_id",
        owner="traffic",
        description="15-minute signal performance measures per intersection and phase.",
        retention_ms=30 * 24 * 3600 * 1000,
    )
)
KPI_EVENT, ALARM_EVENT = domain_topics("traffic", owner="traffic")

DetectorFunction = Literal["advance", "presence", "count", "yellow_red"]


class HiResEvent(EventModel):
    """One controller log entry."""

    t: datetime = Field(description="event time (controller clock, 0.1 s resolution)")
    code: StrictInt = Field(
        ge=0, le=65535, description="Indiana event code (0-255) or a vendor code above (carried as logged)"
    )
    param: StrictInt = Field(ge=0, le=65535, description="phase, detector channel, overlap or pattern number")


@event_type(
    "ioc.traffic.hires.logged.v1",
    topic=HIRES_TOPIC,
    key="controller_id",
    subject="intersection_id",
    description="A time-ordered chunk of one controller's high-resolution events.",
)
class HiResEventsLogged(EventModel):
    controller_id: EntityId
    intersection_id: EntityId
    district: AreaCode | None = None
    events: list[HiResEvent] = Field(min_length=1, max_length=10000)
    backfill: bool = Field(
        False,
        description="history replayed after the fact (measured apart from the live stream; no live state or "
        "alarms)",
    )
    final: bool = Field(
        False, description="the last chunk of a backfill of this controller: its measures are completed now"
    )


class DetectorConfig(EventModel):
    """One detector channel: the phase it serves and what it is."""

    channel: StrictInt = Field(ge=1, le=256)
    phase: StrictInt = Field(ge=1, le=40)
    function: DetectorFunction
    additional_functions: list[DetectorFunction] = Field(
        default_factory=list, max_length=3, description="other functions of the same channel"
    )
    distance_m: StrictFloat | None = Field(None, ge=0, le=1000, description="advance detectors: to stop bar")
    speed_kmh: StrictFloat | None = Field(None, gt=0, le=130, description="advance detectors: approach speed")


@event_type(
    "ioc.traffic.intersection.configured.v1",
    topic=REGISTRY_TOPIC,
    key="controller_id",
    subject="intersection_id",
    description="An intersection was registered or its configuration changed (full configuration).",
)
class IntersectionConfigured(EventModel):
    intersection_id: EntityId
    controller_id: EntityId
    name: str = Field(max_length=200)
    district: AreaCode
    lat: StrictFloat = Field(ge=-90, le=90)
    lon: StrictFloat = Field(ge=-180, le=180)
    phases: list[StrictInt] = Field(max_length=40)
    detectors: list[DetectorConfig] = Field(default_factory=list, max_length=256)
    revision: StrictInt = Field(ge=0)


PhaseColor = Literal["red", "yellow", "green", "flashing", "dark"]
PedIndication = Literal["walk", "flashing_dont_walk", "dont_walk", "dark"]


class PhaseState(EventModel):
    """One phase (signal group) now, NTCIP 1202 colours and the SAE J2735 movement phase state."""

    phase: StrictInt = Field(ge=1, le=40)
    color: PhaseColor
    movement_state: StrictInt = Field(
        ge=0, le=9, description="J2735 MovementPhaseState (0 unavailable ... 9)"
    )
    ped: PedIndication
    since: datetime | None = Field(description="event time the colour began")


@event_type(
    "ioc.traffic.signal_state.changed.v1",
    topic=SIGNAL_STATE_TOPIC,
    key="intersection_id",
    subject="intersection_id",
    description="The live state of an intersection's signals changed (SPaT-like).",
)
class SignalStateChanged(EventModel):
    intersection_id: EntityId
    controller_id: EntityId
    district: AreaCode | None = None
    revision: StrictInt = Field(ge=0, description="increments with every change (J2735 revision counter)")
    at: datetime = Field(description="event time of the latest change")
    flash: bool = Field(description="failure or programmed flash")
    power_failure: bool
    preempt_active: bool
    phases: list[PhaseState]


@event_type(
    "ioc.traffic.phase_measures.computed.v1",
    topic=MEASURES_TOPIC,
    key="intersection_id",
    subject="intersection_id",
    description="ATSPM measures of one intersection phase over one bin (15 minutes by default).",
)
class PhaseMeasuresComputed(EventModel):
    intersection_id: EntityId
    controller_id: EntityId
    district: AreaCode | None = None
    phase: StrictInt = Field(ge=1, le=40)
    bin_start: datetime
    bin_seconds: StrictInt = Field(gt=0)
    volume: StrictInt = Field(
        ge=0, description="detector-on events of the phase's advance and count detectors"
    )
    detector_volumes: dict[str, StrictInt] = Field(description="detector-on events per detector channel")
    gap_outs: StrictInt = Field(ge=0)
    max_outs: StrictInt = Field(ge=0)
    force_offs: StrictInt = Field(ge=0)
    cycles: StrictInt = Field(ge=0, description="red-to-red cycles whose green began in the bin")
    green_seconds: StrictFloat = Field(ge=0)
    cycle_seconds: StrictFloat = Field(ge=0)
    arrivals: StrictInt = Field(ge=0, description="advance-detector arrivals (shifted to the stop bar)")
    arrivals_on_green: StrictInt = Field(ge=0)
    arrivals_on_yellow: StrictInt = Field(ge=0)
    arrivals_on_red: StrictInt = Field(ge=0)
    total_delay_seconds: StrictFloat = Field(ge=0)
    pct_arrivals_on_green: StrictFloat | None
    pct_green: StrictFloat | None
    platoon_ratio: StrictFloat | None
    approach_delay_seconds: StrictFloat | None = Field(description="average delay per arriving vehicle")
    split_failure_cycles: StrictInt = Field(ge=0, description="cycles evaluated for split failure")
    split_failures: StrictInt = Field(ge=0)
    ped_samples: StrictInt = Field(ge=0)
    ped_delay_seconds_total: StrictFloat = Field(ge=0)
    ped_delay_seconds_avg: StrictFloat | None
    detector_faults: StrictInt = Field(ge=0)
    events: StrictInt = Field(ge=0, description="controller events of the intersection in the bin")
    data_completeness: StrictFloat = Field(ge=0, le=1, description="share of the bin's minutes with data")
    computed_at: datetime
    # Added measures (docs/traffic-measures.md), optional so that v1 stays backward compatible.
    actuations: StrictInt = Field(
        0, ge=0, description="advance-detector actuations in the bin, by their own time (atspm convention)"
    )
    actuations_on_green: StrictInt = Field(0, ge=0, description="of them, during the phase's green")
    pct_actuations_on_green: StrictFloat | None = None
    green_occupancy_avg: StrictFloat | None = Field(
        None, description="mean GOR of the cycles evaluated for split failure"
    )
    red_occupancy_avg: StrictFloat | None = Field(
        None, description="mean ROR5 (first 5 s after begin red clearance)"
    )
    split_failure_green_seconds_avg: StrictFloat | None = None
    yellow_actuations: StrictInt = Field(0, ge=0, description="yellow/red detector actuations during yellow")
    red_actuations: StrictInt = Field(
        0, ge=0, description="yellow/red detector actuations during red (red-light running)"
    )
    splits: StrictInt = Field(0, ge=0, description="complete splits (begin green to end red clearance)")
    split_seconds_avg: StrictFloat | None = None
    split_seconds_max: StrictFloat | None = None
    ped_actuations: StrictInt = Field(0, ge=0, description="pedestrian detector actuations (code 90)")
    unique_ped_actuations: StrictInt = Field(
        0, ge=0, description="ped actuations more than 15 s after the previous one"
    )
    ped_services: StrictInt = Field(0, ge=0, description="walks served (code 21)")
    phase_wait_samples: StrictInt = Field(0, ge=0)
    phase_wait_seconds_avg: StrictFloat | None = Field(
        None, description="phase call registered (43) to begin green"
    )
    phase_wait_seconds_max: StrictFloat | None = None
    ped_volume_estimate: StrictFloat | None = Field(
        None,
        ge=0,
        description="estimated pedestrians in the bin (atspm's model from unique actuations); set in the bin's "
        "revision once the hour starting with it has closed, for phases with pedestrian activity",
    )


DetectorStatus = Literal["ok", "stuck_on", "stuck_off", "chattering", "unusual"]


class DetectorBinMeasures(EventModel):
    """One detector channel seen or configured at the intersection, over one bin."""

    channel: StrictInt = Field(ge=0, le=65535)
    phase: StrictInt | None = Field(description="the configured phase; none for an unconfigured channel")
    functions: list[DetectorFunction]
    actuations: StrictInt = Field(ge=0, description="detector-on events (code 82)")
    repeated_events: StrictInt = Field(
        ge=0, description="an on after an on, or an off after an off (chatter)"
    )
    longest_on_seconds: StrictFloat = Field(ge=0)
    usual_actuations: StrictFloat | None = Field(description="the channel's usual count per bin, once known")
    status: DetectorStatus


class PreemptBinMeasures(EventModel):
    number: StrictInt = Field(ge=0, le=65535)
    calls: StrictInt = Field(ge=0, description="preempt call input on (102)")
    entries: StrictInt = Field(ge=0, description="preempt entry started (105)")
    seconds: StrictFloat = Field(ge=0, description="call durations (102 to 104) ending in the bin")


class PriorityBinMeasures(EventModel):
    number: StrictInt = Field(ge=0, le=65535)
    check_ins: StrictInt = Field(ge=0, description="TSP check in (112)")
    early_greens: StrictInt = Field(ge=0, description="TSP adjustment to early green (113)")
    extended_greens: StrictInt = Field(ge=0, description="TSP adjustment to extend green (114)")
    check_outs: StrictInt = Field(ge=0, description="TSP check out (115)")


TimelineKind = Literal[
    "green", "yellow", "red_clearance", "red", "walk", "flashing_dont_walk", "dont_walk", "preempt"
]


class TimelineInterval(EventModel):
    """One interval of the timing-and-actuation timeline: a phase's signal or pedestrian indication, or a
    preemption call, from the event that began it to the event that ended it."""

    kind: TimelineKind
    phase: StrictInt | None = Field(
        None, ge=0, le=65535, description="the phase (signal and pedestrian kinds)"
    )
    preempt: StrictInt | None = Field(None, ge=0, le=65535, description="the preempt number (kind preempt)")
    start: datetime
    end: datetime
    cycle_start: datetime | None = Field(
        None, description="begin green of the phase's cycle the interval started in; none before the first"
    )


class PcdCycle(EventModel):
    """One cycle of the Purdue coordination diagram: a complete red-to-red cycle of a phase (begin red clearance
    to the next, exactly one begin green and one begin yellow between: the cycles of ``arrivals_on_*``), with
    each advance-detector arrival (shifted to the stop bar) as seconds after the cycle's start."""

    phase: StrictInt = Field(ge=1, le=40)
    cycle_start: datetime = Field(description="begin red clearance that opened the cycle")
    green_start: datetime
    yellow_start: datetime
    cycle_end: datetime = Field(description="the next begin red clearance")
    arrival_offsets_seconds: list[StrictFloat] = Field(
        max_length=4000, description="each arrival's time after cycle_start, ascending"
    )


class PhaseTermination(EventModel):
    """One phase termination (gap out 4, max out 5, force off 6) as the controller logged it."""

    phase: StrictInt = Field(ge=1, le=40)
    at: datetime
    termination: Literal["gap_out", "max_out", "force_off"]
    cycle_start: datetime | None = Field(
        None, description="begin green of the phase's cycle it ended; none before the first green"
    )


@event_type(
    "ioc.traffic.intersection_measures.computed.v1",
    topic=MEASURES_TOPIC,
    key="intersection_id",
    subject="intersection_id",
    description="Measures of one intersection over one bin that belong to no phase: every detector channel's "
    "counts and health, preemption, transit priority and coordination.",
)
class IntersectionMeasuresComputed(EventModel):
    intersection_id: EntityId
    controller_id: EntityId
    district: AreaCode | None = None
    bin_start: datetime
    bin_seconds: StrictInt = Field(gt=0)
    events: StrictInt = Field(ge=0)
    unused_events: StrictInt = Field(ge=0, description="events of codes the measures do not use (carried)")
    data_completeness: StrictFloat = Field(ge=0, le=1)
    detectors: list[DetectorBinMeasures] = Field(max_length=1000)
    detectors_unhealthy: StrictInt = Field(ge=0)
    preempts: list[PreemptBinMeasures] = Field(max_length=1000)
    transit_priority: list[PriorityBinMeasures] = Field(max_length=1000)
    pattern_changes: StrictInt = Field(ge=0, description="coordination pattern changes (131) in the bin")
    pattern: StrictInt | None = Field(description="the coordination pattern in force at the bin's end")
    cycle_length_seconds: StrictInt | None = Field(description="the last cycle length logged (132)")
    computed_at: datetime
    timeline: list[TimelineInterval] = Field(
        default_factory=list,
        max_length=4000,
        description="intervals (signal, pedestrian, preemption) that ended in the bin, oldest first",
    )
    timeline_dropped: StrictInt = Field(0, ge=0, description="intervals beyond the bin's 4,000 left out")
    pcd: list[PcdCycle] = Field(
        default_factory=list,
        max_length=1000,
        description="Purdue coordination diagram cycles whose green began in the bin (as ``cycles`` counts them)",
    )
    terminations: list[PhaseTermination] = Field(
        default_factory=list, max_length=1000, description="phase terminations logged in the bin"
    )
    pcd_dropped: StrictInt = Field(
        0, ge=0, description="cycles or terminations beyond the bin's limits (4,000 arrivals) left out"
    )


__all__ = [
    "ALARM_EVENT",
    "HIRES_TOPIC",
    "KPI_EVENT",
    "MEASURES_TOPIC",
    "REGISTRY_TOPIC",
    "SIGNAL_STATE_TOPIC",
    "DetectorConfig",
    "HiResEvent",
    "HiResEventsLogged",
    "IntersectionConfigured",
    "IntersectionMeasuresComputed",
    "PcdCycle",
    "PhaseMeasuresComputed",
    "PhaseState",
    "PhaseTermination",
    "SignalStateChanged",
    "TimelineInterval",
]
