"""Meter domain logic: OBIS codes, reading validation (VEE), event normalisation, interruption pairing and the
utility KPI formulas (IEEE 1366). Pure: no I/O, no clock (callers pass ``now``).

Facts and formulas: domain-notes.md §2.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Annotated, Any, NotRequired

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, WithJsonSchema
from typing_extensions import TypedDict

from shared.areas import HANOI_OFFSET_S, Hierarchy
from shared.contracts.base import AreaCode, EntityId, StrictFloat, StrictInt
from shared.contracts.meter import IntervalSeconds, ReadingQuality
from shared.ingest import ItemError

# IEEE 1366 / domain notes: interruptions shorter than 5 minutes are momentary (MAIFI), the rest sustained.
MOMENTARY_LIMIT_SECONDS = 300
# Readings with an interval end up to this far ahead of the service clock are tolerated (meter clock drift).
DEFAULT_FUTURE_TOLERANCE_SECONDS = 120
# De-duplication memory per meter and OBIS code: the last accepted interval plus the 62 before it, as bits.
DEDUP_HORIZON_INTERVALS = 62


# --------------------------------------------------------------------------------------------------- OBIS
@dataclass(frozen=True, slots=True)
class ObisSpec:
    """What an OBIS code measures, its canonical unit, accepted units (with factors) and plausible range."""

    code: str
    quantity: str
    unit: str
    units: Mapping[str, float]
    cumulative: bool = False
    minimum: float = 0.0
    maximum: float | None = None


def _energy(code: str, quantity: str, unit: str) -> ObisSpec:
    return ObisSpec(code, quantity, unit, {unit: 1.0, unit.replace("k", "", 1): 0.001}, cumulative=True)


OBIS: dict[str, ObisSpec] = {
    s.code: s
    for s in (
        _energy("1-0:1.8.0", "active energy import", "kWh"),
        _energy("1-0:2.8.0", "active energy export", "kWh"),
        _energy("1-0:3.8.0", "reactive energy import", "kvarh"),
        _energy("1-0:4.8.0", "reactive energy export", "kvarh"),
        ObisSpec("1-0:1.7.0", "active power import", "W", {"W": 1.0, "kW": 1000.0}, maximum=2_000_000.0),
        ObisSpec("1-0:2.7.0", "active power export", "W", {"W": 1.0, "kW": 1000.0}, maximum=2_000_000.0),
        ObisSpec("1-0:32.7.0", "voltage L1", "V", {"V": 1.0}, maximum=500.0),
        ObisSpec("1-0:52.7.0", "voltage L2", "V", {"V": 1.0}, maximum=500.0),
        ObisSpec("1-0:72.7.0", "voltage L3", "V", {"V": 1.0}, maximum=500.0),
        ObisSpec("1-0:31.7.0", "current L1", "A", {"A": 1.0}, maximum=2000.0),
        ObisSpec("1-0:51.7.0", "current L2", "A", {"A": 1.0}, maximum=2000.0),
        ObisSpec("1-0:71.7.0", "current L3", "A", {"A": 1.0}, maximum=2000.0),
        # Load-profile channel value: the interval's consumption (kWh), not a register.
        ObisSpec(
            "1-0:99.1.0", "load profile interval energy", "kWh", {"kWh": 1.0, "Wh": 0.001}, maximum=None
        ),
    )
}
ENERGY_IMPORT = "1-0:1.8.0"


# ------------------------------------------------------------------------------------------------- events
@dataclass(frozen=True, slots=True)
class CanonicalEvent:
    event: str
    category: str


def _ev(event: str, category: str) -> CanonicalEvent:
    return CanonicalEvent(event, category)


# DLMS/COSEM standard event log codes (IEC 62056 / IDIS), domain notes §2.
DLMS_EVENTS: dict[int, CanonicalEvent] = {
    1: _ev("power_down", "power"),
    2: _ev("power_up", "power"),
    4: _ev("clock_adjusted", "clock"),
    5: _ev("clock_adjusted", "clock"),
    6: _ev("clock_invalid", "clock"),
    7: _ev("battery_low", "battery"),
    8: _ev("battery_low", "battery"),
    **{c: _ev("hardware_error", "hardware") for c in range(12, 17)},
    40: _ev("terminal_cover_opened", "tamper"),
    41: _ev("terminal_cover_closed", "tamper"),
    42: _ev("magnetic_field_detected", "tamper"),
    43: _ev("magnetic_field_cleared", "tamper"),
    44: _ev("meter_cover_opened", "tamper"),
    45: _ev("meter_cover_closed", "tamper"),
    46: _ev("login_failed", "security"),
    47: _ev("configuration_changed", "configuration"),
    60: _ev("disconnected", "disconnector"),
    61: _ev("connected", "disconnector"),
    62: _ev("disconnected", "disconnector"),
    63: _ev("connected", "disconnector"),
}
# Vendor-specific codes seen from Hanoi's HES vendors (normalised: upper case, '-' and ' ' → '_').
# Reverse energy has no standard code, so it only arrives this way. Unverified beyond the common spellings.
VENDOR_EVENTS: dict[str, CanonicalEvent] = {
    **{
        k: _ev("power_down", "power")
        for k in ("LAST_GASP", "LASTGASP", "PWR_FAIL", "POWER_FAIL", "POWER_DOWN", "POWER_OFF")
    },
    **{
        k: _ev("power_up", "power")
        for k in ("PWR_RESTORE", "POWER_RESTORE", "POWER_RESTORED", "POWER_UP", "POWER_ON", "FIRST_BREATH")
    },
    **{
        k: _ev("reverse_energy_detected", "tamper")
        for k in ("REV_ENERGY", "REVERSE_ENERGY", "REVERSE_FLOW", "RE_ON", "REV_ENERGY_START")
    },
    **{
        k: _ev("reverse_energy_cleared", "tamper")
        for k in ("REV_ENERGY_END", "REVERSE_ENERGY_END", "RE_OFF", "REVERSE_FLOW_END")
    },
    **{k: _ev("magnetic_field_detected", "tamper") for k in ("MAG_TAMPER", "MAGNETIC_TAMPER", "MAGNET_ON")},
    **{k: _ev("magnetic_field_cleared", "tamper") for k in ("MAG_TAMPER_END", "MAGNET_OFF")},
    **{k: _ev("meter_cover_opened", "tamper") for k in ("COVER_OPEN", "METER_COVER_OPEN")},
    **{k: _ev("meter_cover_closed", "tamper") for k in ("COVER_CLOSE", "COVER_CLOSED", "METER_COVER_CLOSE")},
    **{k: _ev("terminal_cover_opened", "tamper") for k in ("TERMINAL_COVER_OPEN", "TC_OPEN")},
    **{k: _ev("terminal_cover_closed", "tamper") for k in ("TERMINAL_COVER_CLOSE", "TC_CLOSE")},
    **{k: _ev("disconnected", "disconnector") for k in ("RELAY_OFF", "REMOTE_DISCONNECT", "DISCONNECT")},
    **{k: _ev("connected", "disconnector") for k in ("RELAY_ON", "REMOTE_CONNECT", "RECONNECT", "CONNECT")},
    **{k: _ev("clock_adjusted", "clock") for k in ("TIME_SYNC", "CLOCK_SET")},
}
# Tamper events that raise an alarm, and the event that clears each one.
TAMPER_RAISE: dict[str, str] = {
    "terminal_cover_opened": "terminal_cover",
    "meter_cover_opened": "meter_cover",
    "magnetic_field_detected": "magnetic_field",
    "reverse_energy_detected": "reverse_energy",
}
TAMPER_CLEAR: dict[str, str] = {
    "terminal_cover_closed": "terminal_cover",
    "meter_cover_closed": "meter_cover",
    "magnetic_field_cleared": "magnetic_field",
    "reverse_energy_cleared": "reverse_energy",
}


def normalise_event(code: int | None, raw_code: str) -> CanonicalEvent | None:
    """The canonical event for a DLMS code or, failing that, a vendor code; ``None`` when unknown."""
    if code is not None and code in DLMS_EVENTS:
        return DLMS_EVENTS[code]
    raw = raw_code.strip().upper().replace("-", "_").replace(" ", "_")
    if code is None and raw.isdigit() and int(raw) in DLMS_EVENTS:
        return DLMS_EVENTS[int(raw)]
    return VENDOR_EVENTS.get(raw)


# ----------------------------------------------------------------------------------------- input models
class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MeterIn(_Input):
    """A registry entry as the utility sends it."""

    meter_id: EntityId
    customers: StrictInt = Field(1, ge=0, le=10000)
    district: AreaCode
    commune: AreaCode
    feeder: EntityId
    transformer: EntityId | None = None
    installed_on: date
    interval_seconds: IntervalSeconds = 900
    gateway: EntityId | None = Field(
        None,
        description="principal id of the head-end system that reports for this meter; without one, only a "
        "meter:admin principal may report for it",
    )


# Readings are schema-checked in one pydantic-core call per batch (TypedDicts: no model per reading); the
# rules a schema cannot say (value required unless quality is 'missing', the time itself) are in
# validate_readings.
class ReadingItem(TypedDict):
    """One interval reading as the head-end system sends it; ``value`` may be null only when ``quality`` is
    ``missing``."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    meter_id: EntityId
    obis: Annotated[str, Field(max_length=24)]
    # Parsed by validate_readings (once per distinct value in a batch: a batch shares few interval ends).
    interval_end: Annotated[
        str,
        Field(max_length=40),
        WithJsonSchema(
            {
                "type": "string",
                "format": "date-time",
                "description": "RFC 3339 with offset, e.g. 2024-05-01T10:15:00Z",
            }
        ),
    ]
    value: StrictFloat | None
    unit: Annotated[str, Field(max_length=8)]
    quality: NotRequired[ReadingQuality]


class ReadingsBody(TypedDict):
    """Readings as the head-end system collected them (up to 10,000 a request)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    items: Annotated[list[ReadingItem], Field(min_length=1, max_length=10_000)]


class MeterEventIn(_Input):
    """One meter event as the head-end system sends it."""

    meter_id: EntityId
    at: AwareDatetime
    code: StrictInt | None = Field(None, ge=0, le=65535)
    raw_code: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_\- .:]+$")


# ------------------------------------------------------------------------------------------- registry
@dataclass(slots=True)
class MeterInfo:
    """A cached registry entry plus what every event payload carries about the meter."""

    meter_id: str
    customers: int
    district: str
    commune: str
    feeder: str
    transformer: str | None
    installed_on: date
    interval_seconds: int
    gateway: str | None = None  # the principal that may report for the meter (None: meter:admin only)
    installed_epoch: int = 0

    def __post_init__(self):
        self.installed_epoch = int(
            datetime(
                self.installed_on.year, self.installed_on.month, self.installed_on.day, tzinfo=UTC
            ).timestamp()
        )


def may_report(reporter: str, meter_id: str, registry: Mapping[str, MeterInfo]) -> bool:
    """Whether a non-privileged ``reporter`` (a principal id) may report for ``meter_id``: a registered meter
    only when its ``gateway`` is this principal (one without a gateway: ``meter:admin`` only). An unregistered
    meter is not this rule's business: validation reports it as unknown, item by item."""
    info = registry.get(meter_id)
    return info is None or info.gateway == reporter


def check_meter_areas(items: Iterable[tuple[int, MeterIn]], areas: Hierarchy) -> list[ItemError]:
    """District must be a district of the hierarchy and the commune one of its communes."""
    errors = []
    for i, m in items:
        d = areas.areas.get(m.district)
        if d is None or d.level != "district":
            errors.append(ItemError(i, m.meter_id, "district", "unknown district code", "unknown_area"))
            continue
        c = areas.areas.get(m.commune)
        if c is None or c.parent != m.district:
            errors.append(
                ItemError(i, m.meter_id, "commune", "commune is not in the given district", "unknown_area")
            )
    return errors


# ----------------------------------------------------------------------------------- reading validation
@dataclass(frozen=True, slots=True)
class Limits:
    """Validation limits (from settings)."""

    max_demand_kw: float = 250.0
    register_modulus: float = 1_000_000.0  # a 6-digit kWh register rolls over to 0 here
    future_tolerance_seconds: int = DEFAULT_FUTURE_TOLERANCE_SECONDS


# Per (meter, OBIS): (last interval end, seen-bitmask (bit k = interval k before last end), last value,
# interval end of that value). A tuple of numbers, replaced on every change (the old one is what undo restores):
# the garbage collector stops tracking such tuples, so a cache of millions of registers costs no GC walks.
RegisterState = tuple


@dataclass(slots=True)
class ReadingOutcome:
    accepted: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    duplicates: int = 0
    # key → state before this batch (None when new): what to restore if publishing fails.
    previous: dict[tuple[str, str], RegisterState | None] = field(default_factory=dict)


@lru_cache(maxsize=4096)
def iso_utc(epoch: int) -> str:
    """RFC 3339 UTC string of a Unix time (cached: a batch shares few interval ends)."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


_AWARE_DATETIME = TypeAdapter(AwareDatetime)
# (OBIS code, unit) → (spec, factor to the canonical unit): one lookup per reading on the hot path.
_OBIS_UNITS: dict[tuple[str, str], tuple[ObisSpec, float]] = {
    (code, unit): (spec, factor) for code, spec in OBIS.items() for unit, factor in spec.units.items()
}


def parse_interval_end(text: str) -> int | float | str:
    """Unix time of an RFC 3339 timestamp with offset (an ``int`` when whole seconds), or why it is invalid."""
    try:
        ts = _AWARE_DATETIME.validate_python(text).timestamp()
    except ValidationError as exc:
        return exc.errors(include_input=False, include_url=False)[0]["msg"]
    return int(ts) if ts == int(ts) else ts


def validate_readings(
    items: Sequence[tuple[int, Mapping[str, Any]]],
    registry: Mapping[str, MeterInfo],
    registers: dict[tuple[str, str], RegisterState],
    now: datetime,
    limits: Limits = Limits(),
) -> ReadingOutcome:
    """Validate a batch of schema-valid readings (:class:`ReadingItem` dicts) against the registry and the last
    registers (VEE).

    Checks, in order: unknown meter, unknown OBIS code, unit, interval end not a timestamp with offset / in the
    future / before installation / not on the meter's interval grid, value missing though quality is not
    'missing', value out of range, duplicate (same meter, OBIS and interval end: a resend with the same value
    counts as duplicate, a different value is a conflict), too late to de-duplicate, cumulative register going
    backwards (a rollover past ``register_modulus`` is accepted), implausible jump (more than ``max_demand_kw``
    over the elapsed time).

    ``registers`` is updated in place for accepted readings; ``outcome.previous`` holds what to restore.
    Returns accepted payloads (ready for the reading event) in batch order.
    """
    out = ReadingOutcome()
    errors = out.errors
    previous = out.previous
    horizon_limit = int(now.timestamp()) + limits.future_tolerance_seconds
    modulus = limits.register_modulus
    max_kwh_per_second = limits.max_demand_kw / 3600.0
    obis_table = OBIS
    mask_all = (1 << (DEDUP_HORIZON_INTERVALS + 1)) - 1
    accept = out.accepted.append
    ends: dict[str, int | float | str] = {}  # interval end as sent → Unix time or error (parsed once a batch)
    iso_ends: dict[int | float, str] = {}  # Unix time → canonical RFC 3339 (once a batch)
    obis_units = _OBIS_UNITS
    get_meter, get_register, get_obis_unit = registry.get, registers.get, obis_units.get
    for i, r in items:
        mid = r["meter_id"]
        meter = get_meter(mid)
        if meter is None:
            errors.append(ItemError(i, mid, "meter_id", "meter is not registered", "unknown_entity"))
            continue
        spec_factor = get_obis_unit((r["obis"], r["unit"]))
        if spec_factor is None:
            spec = obis_table.get(r["obis"])
            if spec is None:
                errors.append(
                    ItemError(i, mid, "obis", "OBIS code is not one the service accepts", "unknown_obis")
                )
            else:
                errors.append(
                    ItemError(
                        i,
                        mid,
                        "unit",
                        f"unit must be one of {sorted(spec.units)} for {spec.code}",
                        "invalid_unit",
                    )
                )
            continue
        spec, factor = spec_factor
        raw_end = r["interval_end"]
        end = ends.get(raw_end)
        if end is None:
            end = ends[raw_end] = parse_interval_end(raw_end)
        if type(end) is str:
            errors.append(ItemError(i, mid, "interval_end", end, "invalid"))
            continue
        step = meter.interval_seconds
        if end > horizon_limit:
            errors.append(ItemError(i, mid, "interval_end", "interval end is in the future", "future"))
            continue
        if end <= meter.installed_epoch:
            errors.append(
                ItemError(
                    i,
                    mid,
                    "interval_end",
                    "interval end is before the meter's installation",
                    "before_installation",
                )
            )
            continue
        if end % step:
            errors.append(
                ItemError(
                    i,
                    mid,
                    "interval_end",
                    f"interval end is not on the meter's {step // 60}-minute grid",
                    "misaligned",
                )
            )
            continue
        quality = r.get("quality", "measured")
        value = r["value"]
        if value is None:
            if quality != "missing":
                errors.append(
                    ItemError(i, mid, "value", "value is required unless quality is 'missing'", "invalid")
                )
                continue
        else:
            value = value * factor
        if value is not None and (
            value < spec.minimum or (spec.maximum is not None and value > spec.maximum)
        ):
            errors.append(
                ItemError(
                    i,
                    mid,
                    "value",
                    f"value outside the plausible range of {spec.quantity}",
                    "implausible_value",
                )
            )
            continue
        key = (mid, spec.code)
        st = get_register(key)
        flags: list[str] = []
        delta: float | None = None
        if quality != "measured":
            flags.append(quality)
        if st is None:
            new = (end, 1, value, end if value is not None else 0)
            if spec.cumulative and value is not None:
                flags.append("first_read")
        else:
            last_end, mask, last_value, value_end = st
            if end <= last_end:
                k = (last_end - end) // step
                if k > DEDUP_HORIZON_INTERVALS:
                    errors.append(
                        ItemError(
                            i,
                            mid,
                            "interval_end",
                            "reading is older than the de-duplication "
                            f"horizon ({DEDUP_HORIZON_INTERVALS} intervals)",
                            "too_late",
                        )
                    )
                    continue
                if mask >> k & 1:
                    if (
                        k == 0
                        and value is not None
                        and last_value is not None
                        and value_end == end
                        and abs(value - last_value) > 1e-9
                    ):
                        errors.append(
                            ItemError(
                                i,
                                mid,
                                "value",
                                "a different value was already accepted for "
                                "this meter, OBIS code and interval",
                                "conflict",
                            )
                        )
                        continue
                    out.duplicates += 1
                    continue
                if (
                    spec.cumulative
                    and value is not None
                    and last_value is not None
                    and value > last_value
                    and value - last_value < modulus / 2
                ):
                    errors.append(
                        ItemError(
                            i,
                            mid,
                            "value",
                            "late register value is above a later accepted one (register going backwards)",
                            "register_backwards",
                        )
                    )
                    continue
                new = (last_end, mask | (1 << k), last_value, value_end)
                flags.append("late")
            else:
                shift = (end - last_end) // step
                mask = ((mask << shift) | 1) & mask_all if shift <= 64 else 1
                if value is None:
                    new = (end, mask, last_value, value_end)
                else:
                    if spec.cumulative and last_value is not None:
                        d = value - last_value
                        limit = max_kwh_per_second * (end - value_end)
                        if d < 0:
                            wrapped = value + modulus - last_value
                            if last_value >= 0.9 * modulus and wrapped <= limit:
                                d = wrapped
                                flags.append("rollover")
                            else:
                                errors.append(
                                    ItemError(
                                        i,
                                        mid,
                                        "value",
                                        "cumulative register went backwards "
                                        "(not a rollover; register a meter replacement first)",
                                        "register_backwards",
                                    )
                                )
                                continue
                        elif d > limit:
                            errors.append(
                                ItemError(
                                    i,
                                    mid,
                                    "value",
                                    f"implausible jump: more than {limits.max_demand_kw:g} kW "
                                    "average demand since the previous reading",
                                    "implausible_jump",
                                )
                            )
                            continue
                        delta = d
                    new = (end, mask, value, end)
        if key not in previous:
            previous[key] = st
        registers[key] = new
        iso_end = iso_ends.get(end)
        if iso_end is None:
            iso_end = iso_ends[end] = iso_utc(end)
        accept(
            (
                i,
                {
                    "meter_id": mid,
                    "obis": spec.code,
                    "interval_end": iso_end,
                    "interval_seconds": step,
                    "value": value,
                    "unit": spec.unit,
                    "quality": quality,
                    "flags": flags,
                    "delta": delta,
                    "district": meter.district,
                    "commune": meter.commune,
                    "feeder": meter.feeder,
                    "customers": meter.customers,
                },
            )
        )
    return out


def undo_registers(
    registers: dict[tuple[str, str], RegisterState],
    previous: Mapping[tuple[str, str], RegisterState | None],
    applied: Mapping[tuple[str, str], RegisterState],
) -> None:
    """Restore register states after a failed publish, unless another batch has moved them on since."""
    for key, before in previous.items():
        if registers.get(key) is not applied.get(key):
            continue
        if before is None:
            registers.pop(key, None)
        else:
            registers[key] = before


# ------------------------------------------------------------------------------------- events/outages
@dataclass(slots=True)
class EventOutcome:
    accepted: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    interruptions: list[dict[str, Any]] = field(default_factory=list)
    supply_changes: list[dict[str, Any]] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    duplicates: int = 0
    # meter → open power-down time after this batch (None: closed), for persisting and undo.
    outages: dict[str, int | None] = field(default_factory=dict)
    seen: list[tuple[str, int, str]] = field(default_factory=list)


def classify_interruption(duration_seconds: float) -> str:
    """``momentary`` below 5 minutes, else ``sustained`` (domain notes §2)."""
    return "momentary" if duration_seconds < MOMENTARY_LIMIT_SECONDS else "sustained"


def validate_events(
    items: Sequence[tuple[int, MeterEventIn]],
    registry: Mapping[str, MeterInfo],
    open_outages: Mapping[str, int],
    seen: Mapping[tuple[str, int, str], Any],
    feeder_sizes: Mapping[str, int],
    now: datetime,
    limits: Limits = Limits(),
) -> EventOutcome:
    """Validate meter events, normalise their codes, and pair power-downs with power-ups.

    Per meter, events are taken in time order. A power-down opens an outage (a repeated power-down while one is
    open keeps the first); a power-up closes it as an interruption record (momentary under 5 minutes). A
    power-up without an open outage (last gasp lost) yields no interruption. ``seen`` holds recently accepted
    (meter, time in ms, raw code) to drop duplicate deliveries. Nothing here mutates the inputs.
    """
    out = EventOutcome()
    horizon_limit = int(now.timestamp()) + limits.future_tolerance_seconds
    batch_seen: set[tuple[str, int, str]] = set()
    ordered = sorted(items, key=lambda p: (p[1].meter_id, p[1].at))
    accepted: list[tuple[int, dict[str, Any]]] = []
    supply: list[tuple[int, dict[str, Any]]] = []
    for i, e in ordered:
        meter = registry.get(e.meter_id)
        if meter is None:
            out.errors.append(
                ItemError(i, e.meter_id, "meter_id", "meter is not registered", "unknown_entity")
            )
            continue
        at_ms = int(e.at.timestamp() * 1000)
        if at_ms // 1000 > horizon_limit:
            out.errors.append(ItemError(i, e.meter_id, "at", "event time is in the future", "future"))
            continue
        canon = normalise_event(e.code, e.raw_code)
        if canon is None:
            out.errors.append(
                ItemError(
                    i,
                    e.meter_id,
                    "code" if e.code is not None else "raw_code",
                    "event code is neither a DLMS standard code nor a known vendor code",
                    "unknown_code",
                )
            )
            continue
        dedup = (e.meter_id, at_ms, e.raw_code)
        if dedup in seen or dedup in batch_seen:
            out.duplicates += 1
            continue
        batch_seen.add(dedup)
        out.seen.append(dedup)
        at_iso = (
            iso_utc(at_ms // 1000)
            if at_ms % 1000 == 0
            else e.at.astimezone(UTC).isoformat().replace("+00:00", "Z")
        )
        accepted.append(
            (
                i,
                {
                    "meter_id": e.meter_id,
                    "at": at_iso,
                    "event": canon.event,
                    "category": canon.category,
                    "code": e.code,
                    "raw_code": e.raw_code,
                    "district": meter.district,
                    "commune": meter.commune,
                    "feeder": meter.feeder,
                    "customers": meter.customers,
                },
            )
        )
        if canon.event not in ("power_down", "power_up"):
            continue
        down_ms = out.outages[e.meter_id] if e.meter_id in out.outages else open_outages.get(e.meter_id)
        if canon.event == "power_down":
            if down_ms is None:
                out.outages[e.meter_id] = at_ms
                supply.append((at_ms, _supply(meter, "lost", at_iso, feeder_sizes)))
        elif down_ms is not None and down_ms <= at_ms:
            duration = (at_ms - down_ms) / 1000.0
            out.outages[e.meter_id] = None
            supply.append((at_ms, _supply(meter, "restored", at_iso, feeder_sizes)))
            out.interruptions.append(
                {
                    "meter_id": e.meter_id,
                    "started_at": _iso_ms(down_ms),
                    "ended_at": at_iso,
                    "duration_seconds": duration,
                    "kind": classify_interruption(duration),
                    "customers": meter.customers,
                    "district": meter.district,
                    "commune": meter.commune,
                    "feeder": meter.feeder,
                }
            )
    out.accepted = sorted(accepted, key=lambda p: p[0])
    # A feeder's consumer needs its meters' supply changes in time order, not grouped by meter.
    out.supply_changes = [s for _, s in sorted(supply, key=lambda p: p[0])]
    out.errors.sort(key=lambda e: e.index)
    return out


def _iso_ms(ms: int) -> str:
    if ms % 1000 == 0:
        return iso_utc(ms // 1000)
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _supply(meter: MeterInfo, supply: str, at_iso: str, feeder_sizes: Mapping[str, int]) -> dict[str, Any]:
    return {
        "feeder": meter.feeder,
        "meter_id": meter.meter_id,
        "supply": supply,
        "at": at_iso,
        "district": meter.district,
        "feeder_meters": feeder_sizes.get(meter.feeder, 0),
    }


# ------------------------------------------------------------------------------------------ KPI formulas
def window_start(epoch: int, window_seconds: int) -> int:
    """Start of the window holding ``epoch``: windows shorter than a day are aligned to the Unix epoch, day
    windows to Hanoi's local midnight (17:00 UTC; Vietnam keeps UTC+7 all year), the day the operations centre
    reports and the kiosk, dossier and city day windows use."""
    offset = HANOI_OFFSET_S if window_seconds % 86400 == 0 else 0
    local = epoch + offset
    return local - local % window_seconds - offset


def expected_intervals(
    window_seconds: int, window_start_epoch: int, meters_by_interval: Mapping[int, int]
) -> int:
    """Intervals expected in a window from meters grouped by reading interval (an interval belongs to the
    window its start falls in)."""
    total = 0
    for interval, n in meters_by_interval.items():
        if interval <= window_seconds:
            total += n * (window_seconds // interval)
        elif window_start_epoch % interval == 0:
            total += n
    return total


def saifi(customers_interrupted: float, customers_served: float) -> float | None:
    """IEEE 1366 SAIFI = Σ N_i / N_T (sustained interruptions)."""
    return customers_interrupted / customers_served if customers_served else None


def saidi_minutes(customer_minutes: float, customers_served: float) -> float | None:
    """IEEE 1366 SAIDI = Σ (N_i × D_i) / N_T, minutes."""
    return customer_minutes / customers_served if customers_served else None


def caidi_minutes(customer_minutes: float, customers_interrupted: float) -> float | None:
    """IEEE 1366 CAIDI = SAIDI / SAIFI = Σ (N_i × D_i) / Σ N_i, minutes."""
    return customer_minutes / customers_interrupted if customers_interrupted else None


def maifi(momentary_customer_interruptions: float, customers_served: float) -> float | None:
    """MAIFI = Σ N_mi / N_T (momentary interruptions, < 5 minutes)."""
    return momentary_customer_interruptions / customers_served if customers_served else None


def feeder_in_outage(
    meters_down: int, feeder_meters: int, *, fraction: float = 0.5, minimum: int = 3
) -> bool:
    """A feeder is out when at least ``minimum`` meters and ``fraction`` of its meters have no supply."""
    return meters_down >= minimum and meters_down >= fraction * max(feeder_meters, 1)
