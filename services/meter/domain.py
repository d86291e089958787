"""Meter domain logic: OBIS codes, reading validation (VEE), event normalisation, interruption pairing and the
utility KPI formulas (IEEE 1366). Pure: no I/O, no clock (callers pass ``now``).

Facts and formulas: domain-notes.md §2.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from struct import Struct
from typing import Annotated, Any, NamedTuple, NotRequired

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, WithJsonSchema
from typing_extensions import TypedDict

from shared.areas import CITY_CODE, HANOI_OFFSET_S, Hierarchy
from shared.contracts.base import AreaCode, EntityId, StrictFloat, StrictInt
from shared.contracts.meter import IntervalSeconds, ReadingQuality
from shared.ingest import ItemError
from shared.reliability import DayIndices, indices_with_and_without_meds

# IEEE 1366-2012: an interruption of 5 minutes or less is momentary (MAIFI); sustained means longer than that.
MOMENTARY_LIMIT_SECONDS = 300
# Power-downs and power-ups are paired by event time within this horizon: an unmatched power-up waits this long
# for its power-down (head-ends store and forward), a closed interruption is remembered this long to recognise
# repeated last gasps inside it.
DEFAULT_PAIRING_HORIZON_SECONDS = 7 * 86400
# A cumulative register that has not moved for this many intervals is flagged frozen (a day of quarter hours).
DEFAULT_FROZEN_INTERVALS = 96
# A gap longer than this many intervals is not spread as estimates (its delta stays on the reading, flagged).
MAX_GAP_ESTIMATES = 2 * 96
# Per register: how many accepted (interval end, value) pairs before the newest are kept to check a late
# reading against both its neighbours (fixed fields of the register state: a flat tuple of numbers).
RECENT_VALUES = 2
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
    decommissioned_on: date | None = Field(
        None, description="the day the meter was removed from service (no reading after it is accepted)"
    )
    effective_on: date | None = Field(
        None,
        description="the day this entry takes effect for customers served (a move to another district, a "
        "change of customers); null: since installed_on",
    )
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
    decommissioned_on: date | None = None
    installed_epoch: int = 0
    # Readings whose interval ends after this are refused (the meter was removed); None: in service.
    decommissioned_epoch: int | None = None

    def __post_init__(self):
        self.installed_epoch = int(
            datetime(
                self.installed_on.year, self.installed_on.month, self.installed_on.day, tzinfo=UTC
            ).timestamp()
        )
        if self.decommissioned_on is not None:
            self.decommissioned_epoch = hanoi_day_start(self.decommissioned_on)


def hanoi_day_start(day: date) -> int:
    """Unix time of Hanoi's midnight starting ``day`` (registry dates are Hanoi dates; day windows start
    there too, so a registry change dated ``day`` takes effect exactly at a window boundary)."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) - HANOI_OFFSET_S


class MeterProfile(NamedTuple):
    """What a registry entry holds besides its id and installation: shared by every meter with the same values
    (a city's meters have a few thousand districts, communes, feeders, transformers and gateways)."""

    interval_seconds: int
    decommissioned_epoch: int | None
    district: str
    commune: str
    feeder: str
    customers: int
    transformer: str | None
    gateway: str | None
    decommissioned_on: date | None


class MeterTable(Mapping[str, MeterInfo]):
    """The registry in columns: meter id → row; per row a profile code and the installation time (Unix time of
    its UTC midnight, as :attr:`MeterInfo.installed_epoch`); the profiles themselves once each.

    A city registers millions of meters: a row costs its id string, its dict slot, the row number and 12 bytes
    of arrays, with no per-meter object for the allocator to scatter (docs/performance-targets.md). Reading
    validation reads the columns (:func:`validate_readings`); everything else gets a :class:`MeterInfo` built
    on request (:meth:`get`).
    """

    __slots__ = ("_codes", "_dates", "_values", "ids", "installed", "profile_of", "profiles", "rows")

    def __init__(self, entries: Iterable[MeterInfo] = ()):
        self.rows: dict[str, int] = {}
        self.ids: list[str] = []  # row → the dict's own id string
        self.profile_of = array("I")  # row → profile code
        self.installed = array("q")  # row → installation, Unix time
        self.profiles: list[MeterProfile] = []  # code → profile
        self._codes: dict[MeterProfile, int] = {}
        self._values: dict[Any, Any] = {}  # one object per distinct field value
        self._dates: dict[int, date] = {}  # installation epoch → one shared date
        for m in entries:
            self.put(m)

    def put(self, m: MeterInfo) -> tuple[MeterProfile | None, MeterProfile] | None:
        """Store ``m``: ``(profile before or None when new, profile now)``, or None when the table held ``m``
        already (a registry refresh re-reading what this replica wrote)."""
        shared = self._values.setdefault
        profile = MeterProfile(
            shared(m.interval_seconds, m.interval_seconds),
            m.decommissioned_epoch,
            shared(m.district, m.district),
            shared(m.commune, m.commune),
            shared(m.feeder, m.feeder),
            m.customers,
            None if m.transformer is None else shared(m.transformer, m.transformer),
            None if m.gateway is None else shared(m.gateway, m.gateway),
            m.decommissioned_on,
        )
        code = self._codes.get(profile)
        if code is None:
            code = self._codes[profile] = len(self.profiles)
            self.profiles.append(profile)
        self._dates.setdefault(m.installed_epoch, m.installed_on)
        row = self.rows.get(m.meter_id)
        if row is None:
            self.rows[m.meter_id] = len(self.ids)
            self.ids.append(m.meter_id)
            self.profile_of.append(code)
            self.installed.append(m.installed_epoch)
            return None, profile
        if self.profile_of[row] == code and self.installed[row] == m.installed_epoch:
            return None
        before = self.profiles[self.profile_of[row]]
        self.profile_of[row] = code
        self.installed[row] = m.installed_epoch
        return before, profile

    def gateway(self, meter_id: str) -> tuple[bool, str | None]:
        """``(registered, gateway)`` of a meter, without building its entry (the authorisation check)."""
        row = self.rows.get(meter_id)
        if row is None:
            return False, None
        return True, self.profiles[self.profile_of[row]].gateway

    def _info(self, row: int) -> MeterInfo:
        p = self.profiles[self.profile_of[row]]
        return MeterInfo(
            self.ids[row],
            p.customers,
            p.district,
            p.commune,
            p.feeder,
            p.transformer,
            self._dates[self.installed[row]],
            p.interval_seconds,
            p.gateway,
            p.decommissioned_on,
        )

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        row = self.rows.get(key)
        return default if row is None else self._info(row)

    def __getitem__(self, key: str) -> MeterInfo:
        return self._info(self.rows[key])

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)


def as_table(registry: Mapping[str, MeterInfo]) -> MeterTable:
    """``registry`` as a :class:`MeterTable` (a plain mapping, as tests pass, is copied into one)."""
    if isinstance(registry, MeterTable):
        return registry
    return MeterTable(m if m.meter_id == k else _renamed(m, k) for k, m in registry.items())


def _renamed(m: MeterInfo, meter_id: str) -> MeterInfo:
    return MeterInfo(
        meter_id,
        m.customers,
        m.district,
        m.commune,
        m.feeder,
        m.transformer,
        m.installed_on,
        m.interval_seconds,
        m.gateway,
        m.decommissioned_on,
    )


def may_report(reporter: str, meter_id: str, registry: Mapping[str, MeterInfo]) -> bool:
    """Whether a non-privileged ``reporter`` (a principal id) may report for ``meter_id``: a registered meter
    only when its ``gateway`` is this principal (one without a gateway: ``meter:admin`` only). An unregistered
    meter is not this rule's business: validation reports it as unknown, item by item."""
    if isinstance(registry, MeterTable):
        registered, gateway = registry.gateway(meter_id)
        return not registered or gateway == reporter
    info = registry.get(meter_id)
    return info is None or info.gateway == reporter


def check_meter_areas(items: Iterable[tuple[int, MeterIn]], areas: Hierarchy) -> list[ItemError]:
    """District must be a top area of the hierarchy (a district in 2019, a commune or ward in the two-tier
    structure) and the commune one of its communes (or, two-tier, the area itself)."""
    errors = []
    for i, m in items:
        d = areas.areas.get(m.district)
        if d is None or d.parent != CITY_CODE:
            errors.append(ItemError(i, m.meter_id, "district", "unknown district code", "unknown_area"))
            continue
        if not areas.contains(m.district, m.commune):
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
    momentary_limit_seconds: float = MOMENTARY_LIMIT_SECONDS
    pairing_horizon_seconds: int = DEFAULT_PAIRING_HORIZON_SECONDS
    frozen_intervals: int = DEFAULT_FROZEN_INTERVALS


# Per (meter, OBIS): (last interval end, seen-bitmask (bit k = interval k before last end), last value,
# interval end of that value, intervals the register has not moved for, then the two accepted values before the
# last one as end, value, end, value (oldest first; end 0: none)). A flat tuple of numbers, replaced on every
# change (the old one is what undo restores): the garbage collector stops tracking such tuples, so a cache of
# millions of registers costs no GC walks (a nested tuple would keep it tracked: measured ~0.8 µs a reading).
# States of an older version have 4 fields: ``register_state`` completes them.
RegisterState = tuple
_NO_RECENT = (0, 0.0, 0, 0.0)


def register_state(st: tuple) -> RegisterState:
    """``st`` with every field (an older 4-field state gets no zero run and no recent values)."""
    return st if len(st) == 9 else (*st[:4], 0, *_NO_RECENT)


# One register state as a fixed 72-byte record (the tuple's nine fields in order; no value: NaN, which JSON
# cannot carry, so no reading's value is ever NaN).
_RECORD = Struct("<qQdqqqdqd")
_RECORD_SIZE = _RECORD.size
_unpack_record, _pack_record = _RECORD.unpack_from, _RECORD.pack_into
_NO_VALUE = float("nan")


class RegisterTable(MutableMapping[tuple[str, str], RegisterState]):
    """The last register state per (meter, OBIS code) in columns: per OBIS code an ``array('i')`` from the meter's
    row in a :class:`MeterTable` to a record number, the records packed in one ``bytearray`` (72 bytes each).

    A mapping of ``(meter id, OBIS code)`` → :data:`RegisterState` tuple like the dict it replaces: lookups
    build the tuple, assignments pack it. A city's millions of registers then cost 72 bytes and an array slot
    each instead of a key tuple, a tuple of nine and its numbers (docs/performance-targets.md); the id strings
    are the registry's own. Reading validation reads and writes the records by row (:func:`validate_readings`).
    Registers of meters ``meters`` does not hold (yet) are kept as tuples in a plain dict.
    """

    __slots__ = ("_count", "_free", "data", "meters", "other", "slots")

    def __init__(
        self,
        meters: MeterTable | None = None,
        states: Iterable[tuple[tuple[str, str], RegisterState]] = (),
    ):
        self.meters = MeterTable() if meters is None else meters
        self.slots: dict[str, array] = {}  # OBIS code → row → record number (-1: none)
        self.data = bytearray()  # the records
        self._free: list[int] = []  # record numbers of removed registers, reused first
        self._count = 0  # registers held in records
        self.other: dict[tuple[str, str], RegisterState] = {}  # registers of meters not in ``meters``
        for key, st in states:
            self[key] = st

    # -- records
    def slot(self, meter_row: int, obis: str) -> int:
        """The record number of the register, -1 when there is none."""
        rows = self.slots.get(obis)
        return rows[meter_row] if rows is not None and meter_row < len(rows) else -1

    def new_slot(self, meter_row: int, obis: str) -> int:
        """A record for a register that has none (its bytes are written next, by the caller)."""
        rows = self.slots.get(obis)
        if rows is None:
            rows = self.slots[obis] = array("i")
        if meter_row >= len(rows):  # the registry grew: cover every row it has now
            rows.extend(array("i", [-1]) * (max(len(self.meters.ids), meter_row + 1) - len(rows)))
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self.data) // _RECORD_SIZE
            self.data += bytes(_RECORD_SIZE)
        rows[meter_row] = slot
        self._count += 1
        return slot

    def read(self, slot: int) -> RegisterState:
        st = _RECORD.unpack_from(self.data, slot * _RECORD_SIZE)
        return st if st[2] == st[2] else (st[0], st[1], None, *st[3:])

    def write(self, slot: int, st: RegisterState) -> None:
        if st[2] is None:
            st = (st[0], st[1], _NO_VALUE, *st[3:])
        _RECORD.pack_into(self.data, slot * _RECORD_SIZE, *st)

    def _drop(self, meter_row: int, obis: str) -> bool:
        rows = self.slots.get(obis)
        if rows is None or meter_row >= len(rows) or rows[meter_row] < 0:
            return False
        self._free.append(rows[meter_row])
        rows[meter_row] = -1
        self._count -= 1
        return True

    def drop_meter(self, meter_id: str) -> None:
        """Forget every register of ``meter_id`` (a replaced meter's new registers start afresh)."""
        row = self.meters.rows.get(meter_id)
        if row is not None:
            for obis in self.slots:
                self._drop(row, obis)
        if self.other:
            for key in [k for k in self.other if k[0] == meter_id]:
                del self.other[key]

    def rebind(self, meters: MeterTable) -> None:
        """Index the registers by ``meters``'s rows (the registry was reloaded into a new table)."""
        if meters is self.meters:
            return
        states = list(self.items())
        self.__init__(meters, states)  # type: ignore[misc]

    # -- the mapping
    def __getitem__(self, key: tuple[str, str]) -> RegisterState:
        row = self.meters.rows.get(key[0])
        if row is not None:
            slot = self.slot(row, key[1])
            if slot >= 0:
                return self.read(slot)
        return self.other[key]

    def __setitem__(self, key: tuple[str, str], st: RegisterState) -> None:
        st = register_state(st)
        row = self.meters.rows.get(key[0])
        if row is None:
            self.other[key] = st
            return
        slot = self.slot(row, key[1])
        if slot < 0:
            slot = self.new_slot(row, key[1])
        self.write(slot, st)
        if self.other:
            self.other.pop(key, None)

    def __delitem__(self, key: tuple[str, str]) -> None:
        row = self.meters.rows.get(key[0])
        if row is not None and self._drop(row, key[1]):
            return
        del self.other[key]

    def __len__(self) -> int:
        return self._count + len(self.other)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        ids = self.meters.ids
        for obis, rows in list(self.slots.items()):
            for row, slot in enumerate(rows):
                if slot >= 0:
                    yield ids[row], obis
        yield from list(self.other)


@dataclass(slots=True)
class ReadingOutcome:
    accepted: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    duplicates: int = 0
    # Estimated readings of the intervals of gaps (VEE estimation), published with the accepted ones.
    estimates: list[dict[str, Any]] = field(default_factory=list)
    # key → state before this batch (None when new): what to restore if publishing fails.
    previous: dict[tuple[str, str], RegisterState | None] = field(default_factory=dict)
    # key → state after this batch: what to persist once published.
    applied: dict[tuple[str, str], RegisterState] = field(default_factory=dict)


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
    registers: MutableMapping[tuple[str, str], RegisterState],
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
    table = as_table(registry)
    get_row, profile_of, profiles, installed = (
        table.rows.get,
        table.profile_of,
        table.profiles,
        table.installed,
    )
    get_register, get_obis_unit = registers.get, obis_units.get
    applied = out.applied
    # Registers in columns indexed by this registry's rows: records read and written in place.
    columns = registers if isinstance(registers, RegisterTable) and registers.meters is table else None
    if columns is not None:
        slot_rows, records, other, new_slot = columns.slots, columns.data, columns.other, columns.new_slot
    slot = -1
    for i, r in items:
        mid = r["meter_id"]
        row = get_row(mid)
        if row is None:
            errors.append(ItemError(i, mid, "meter_id", "meter is not registered", "unknown_entity"))
            continue
        meter = profiles[profile_of[row]]
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
        parsed = ends.get(raw_end)
        if parsed is None:
            parsed = ends[raw_end] = parse_interval_end(raw_end)
        if isinstance(parsed, str):
            errors.append(ItemError(i, mid, "interval_end", parsed, "invalid"))
            continue
        end = parsed
        step = meter.interval_seconds
        if end > horizon_limit:
            errors.append(ItemError(i, mid, "interval_end", "interval end is in the future", "future"))
            continue
        if end <= installed[row]:
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
        if meter.decommissioned_epoch is not None and end > meter.decommissioned_epoch:
            errors.append(
                ItemError(
                    i,
                    mid,
                    "interval_end",
                    "interval end is after the meter's decommissioning",
                    "after_decommissioning",
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
        if columns is None:
            st = get_register(key)
        else:
            rows_of = slot_rows.get(spec.code)
            slot = rows_of[row] if rows_of is not None and row < len(rows_of) else -1
            if slot >= 0:
                st = _unpack_record(records, slot * _RECORD_SIZE)
                if st[2] != st[2]:  # NaN: no value
                    st = (st[0], st[1], None, *st[3:])
            else:
                st = other.get(key) if other else None
        flags: list[str] = []
        delta: float | None = None
        if quality != "measured":
            flags.append(quality)
        if st is None:
            new = (end, 1, value, end if value is not None else 0, 0, 0, 0.0, 0, 0.0)
            if spec.cumulative and value is not None:
                flags.append("first_read")
        else:
            if len(st) != 9:
                st = register_state(st)
            last_end, mask, last_value, value_end, zero_run, e1, v1, e2, v2 = st
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
                if spec.cumulative and value is not None:
                    problem = _neighbour_problem(end, value, st[5:], last_value, value_end, modulus)
                    if problem is not None:
                        errors.append(ItemError(i, mid, "value", problem, "register_backwards"))
                        continue
                    if value_end > end:
                        e1, v1, e2, v2 = _with_recent(st[5:], end, value)
                new = (last_end, mask | (1 << k), last_value, value_end, zero_run, e1, v1, e2, v2)
                flags.append("late")
            else:
                shift = (end - last_end) // step
                mask = ((mask << shift) | 1) & mask_all if shift <= 64 else 1
                if value is None:
                    new = (end, mask, last_value, value_end, zero_run, e1, v1, e2, v2)
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
                        spanned = (end - value_end) // step
                        zero_run = zero_run + spanned if d == 0 else 0
                        if zero_run >= limits.frozen_intervals:
                            flags.append("frozen_register")
                        if spanned > 1:
                            # VEE estimation: the consumption across the gap is spread evenly over its
                            # intervals; the missing ones are published as estimated readings.
                            flags.append("gap")
                            if spanned <= MAX_GAP_ESTIMATES:
                                d = d / spanned
                                _estimate_gap(
                                    out.estimates, mid, meter, spec, step, value_end, last_value, d, spanned
                                )
                        delta = d
                    if value_end:
                        new = (end, mask, value, end, zero_run, e2, v2, value_end, last_value)
                    else:
                        new = (end, mask, value, end, zero_run, e1, v1, e2, v2)
        if key not in previous:
            previous[key] = st
        if columns is None:
            registers[key] = new
        else:
            if slot < 0:
                slot = new_slot(row, spec.code)
                if other:
                    other.pop(key, None)
            if new[2] is None:
                _pack_record(records, slot * _RECORD_SIZE, new[0], new[1], _NO_VALUE, *new[3:])
            else:
                _pack_record(records, slot * _RECORD_SIZE, *new)
        applied[key] = new
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


def _neighbour_problem(
    end: float, value: float, recent: tuple, last_value: float | None, value_end: float, modulus: float
) -> str | None:
    """Why a late register value does not fit between its neighbours (the accepted values just before and just
    after its interval end that the register state still knows), or None. A register never goes backwards: the
    value must be at least the earlier neighbour's and at most the later one's (a rollover between them, a
    drop of more than half the modulus, is let through)."""
    before: float | None = None
    after: float | None = last_value if value_end > end else None
    for j in range(0, len(recent), 2):
        e, v = recent[j], recent[j + 1]
        if not e:
            continue
        if e < end:
            before = v
        elif e > end:
            after = v
            break
    if after is not None and value > after and value - after < modulus / 2:
        return "late register value is above a later accepted one (register going backwards)"
    if before is not None and value < before and before - value < modulus / 2:
        return "late register value is below an earlier accepted one (register going backwards)"
    return None


def _with_recent(recent: tuple, end: float, value: float) -> tuple:
    """``recent`` with (end, value) inserted in time order, the oldest dropped beyond ``RECENT_VALUES``."""
    pairs = sorted(
        [(recent[j], recent[j + 1]) for j in range(0, len(recent), 2) if recent[j]] + [(end, value)]
    )
    flat = tuple(x for pair in pairs[-RECENT_VALUES:] for x in pair)
    return _NO_RECENT[: 2 * RECENT_VALUES - len(flat)] + flat


def _estimate_gap(
    out: list[dict[str, Any]],
    meter_id: str,
    meter: MeterProfile,
    spec: ObisSpec,
    step: int,
    value_end: int,
    last_value: float,
    share: float,
    spanned: int,
) -> None:
    """Estimated readings for the ``spanned - 1`` missing intervals after ``value_end``: the register
    interpolated linearly, each interval's delta ``share`` of the consumption across the gap."""
    for j in range(1, spanned):
        end = value_end + j * step
        out.append(
            {
                "meter_id": meter_id,
                "obis": spec.code,
                "interval_end": iso_utc(end),
                "interval_seconds": step,
                "value": last_value + share * j,
                "unit": spec.unit,
                "quality": "estimated",
                "flags": ["gap_estimate"],
                "delta": share,
                "district": meter.district,
                "commune": meter.commune,
                "feeder": meter.feeder,
                "customers": meter.customers,
            }
        )


def undo_registers(
    registers: MutableMapping[tuple[str, str], RegisterState],
    previous: Mapping[tuple[str, str], RegisterState | None],
    applied: Mapping[tuple[str, str], RegisterState],
) -> None:
    """Restore register states after a failed publish, unless another batch has moved them on since."""
    for key, before in previous.items():
        # Equal, not identical: a register table builds its tuples on request. A batch that moved a register
        # on changed its state (an accepted reading always moves the last end, the seen-mask or the values).
        if registers.get(key) != applied.get(key):
            continue
        if before is None:
            registers.pop(key, None)
        else:
            registers[key] = before


# ------------------------------------------------------------------------------------- events/outages
# A meter's power timeline (what interruption pairing remembers, JSON-serialisable): "p" the power events not
# paired yet, [time in ms, "d" (power-down) or "u" (power-up)] in time order; "c" the interruptions closed within
# the pairing horizon, [start ms, end ms]. No entry: nothing pending.
PowerTimeline = dict


@dataclass(slots=True)
class EventOutcome:
    accepted: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    interruptions: list[dict[str, Any]] = field(default_factory=list)
    supply_changes: list[dict[str, Any]] = field(default_factory=list)
    errors: list[ItemError] = field(default_factory=list)
    duplicates: int = 0
    # meter → its power timeline after this batch (None: nothing pending), for persisting and undo.
    timelines: dict[str, PowerTimeline | None] = field(default_factory=dict)
    seen: list[tuple[str, int, str]] = field(default_factory=list)
    # power-ups that found no power-down within the horizon and no missing reads to infer one from
    unpaired_power_ups: int = 0
    # power events inside an interruption already closed (a repeated last gasp or power-up)
    repeated_power_events: int = 0


def classify_interruption(duration_seconds: float, limit_seconds: float = MOMENTARY_LIMIT_SECONDS) -> str:
    """``momentary`` up to and including ``limit_seconds`` (IEEE 1366-2012: 5 minutes or less), else
    ``sustained`` (longer than 5 minutes)."""
    return "momentary" if duration_seconds <= limit_seconds else "sustained"


def open_outage_ms(timeline: PowerTimeline | None) -> int | None:
    """Start of the meter's open outage: its first pending power-down not followed by a pending power-up."""
    if not timeline:
        return None
    down = None
    for t, kind in timeline["p"]:
        if kind == "d":
            if down is None:
                down = t
        elif down is not None:
            down = None
    return down


def pair_power_events(timeline: PowerTimeline) -> tuple[list[tuple[int, int]], PowerTimeline]:
    """Pair the pending power events of one meter by event time: each power-down (the first of a run of
    repeated last gasps) with the next power-up. Returns the interruptions closed (start, end in ms) and what
    stays pending: power-ups with no earlier power-down (they wait for theirs), and the open outage's
    power-downs."""
    closed: list[tuple[int, int]] = []
    waiting: list[list] = []
    run: list[list] = []  # the power-downs of the outage open so far
    for ev in sorted(timeline["p"]):
        if ev[1] == "d":
            run.append(ev)
        elif run:
            closed.append((run[0][0], ev[0]))
            run = []
        else:
            waiting.append(ev)
    return closed, {"p": waiting + run, "c": timeline["c"]}


def validate_events(
    items: Sequence[tuple[int, MeterEventIn]],
    registry: Mapping[str, MeterInfo],
    timelines: Mapping[str, PowerTimeline],
    seen: Mapping[tuple[str, int, str], Any],
    feeder_sizes: Mapping[str, int],
    now: datetime,
    limits: Limits = Limits(),
) -> EventOutcome:
    """Validate meter events, normalise their codes, and pair power-downs with power-ups by event time.

    Head-ends store and forward, so arrival order is not event order: per meter, power events wait in its
    timeline until paired, whatever order they arrive in. A power-down followed (in event time) by a
    power-up closes an interruption (momentary up to ``limits.momentary_limit_seconds``); repeated last gasps
    before that power-up belong to the same interruption; a power event inside an interruption already closed is
    a repeat and ignored. ``seen`` holds recently accepted (meter, time in ms, raw code) to drop duplicate
    deliveries. Nothing here mutates the inputs.
    """
    out = EventOutcome()
    horizon_limit = int(now.timestamp()) + limits.future_tolerance_seconds
    batch_seen: set[tuple[str, int, str]] = set()
    ordered = sorted(items, key=lambda p: (p[1].meter_id, p[1].at))
    accepted: list[tuple[int, dict[str, Any]]] = []
    power: dict[str, list[list]] = {}  # meter → its new power events of this batch
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
        if canon.event in ("power_down", "power_up"):
            power.setdefault(e.meter_id, []).append([at_ms, "d" if canon.event == "power_down" else "u"])
    supply: list[tuple[int, dict[str, Any]]] = []
    for mid, events in power.items():
        meter = registry[mid]
        before = timelines.get(mid) or {"p": [], "c": []}
        pending = list(before["p"])
        for ev in events:
            if any(s <= ev[0] <= e for s, e in before["c"]):
                out.repeated_power_events += 1
            else:
                pending.append(ev)
        was_open = open_outage_ms(before)
        closed, after = pair_power_events({"p": pending, "c": before["c"]})
        for start, end in closed:
            out.interruptions.append(_interruption(meter, start, end, limits, inferred=False))
        after["c"] = sorted(after["c"] + [[s, e] for s, e in closed])
        is_open = open_outage_ms(after)
        for start, end in closed:
            if start != was_open:  # its loss was not published yet (paired within this batch)
                supply.append((start, _supply(meter, "lost", _iso_ms(start), feeder_sizes)))
            supply.append((end, _supply(meter, "restored", _iso_ms(end), feeder_sizes)))
        if is_open is not None and is_open != was_open:
            supply.append((is_open, _supply(meter, "lost", _iso_ms(is_open), feeder_sizes)))
        out.timelines[mid] = after if after["p"] or after["c"] else None
    out.accepted = sorted(accepted, key=lambda p: p[0])
    # A feeder's consumer needs its meters' supply changes in time order, not grouped by meter.
    out.supply_changes = [s for _, s in sorted(supply, key=lambda p: p[0])]
    out.errors.sort(key=lambda e: e.index)
    return out


def _interruption(meter: MeterInfo, start_ms: int, end_ms: int, limits: Limits, *, inferred: bool) -> dict:
    duration = (end_ms - start_ms) / 1000.0
    return {
        "meter_id": meter.meter_id,
        "started_at": _iso_ms(start_ms),
        "ended_at": _iso_ms(end_ms),
        "duration_seconds": duration,
        "kind": classify_interruption(duration, limits.momentary_limit_seconds),
        "customers": meter.customers,
        "district": meter.district,
        "commune": meter.commune,
        "feeder": meter.feeder,
        "inferred": inferred,
    }


def expire_power_timelines(
    timelines: Mapping[str, PowerTimeline],
    registry: Mapping[str, MeterInfo],
    registers: Mapping[tuple[str, str], RegisterState],
    now: datetime,
    limits: Limits = Limits(),
) -> EventOutcome:
    """What the pairing horizon ends: closed interruptions older than it are forgotten, and a power-up that
    waited that long for its power-down becomes an interruption *inferred from missing reads* (started at the
    end of the meter's last interval read before the power-up, when at least one interval after it is missing),
    or, without such reads, is counted as unpaired. Returns interruptions and the changed timelines."""
    out = EventOutcome()
    cut = (int(now.timestamp()) - limits.pairing_horizon_seconds) * 1000
    for mid, tl in timelines.items():
        pending = tl["p"]
        closed = [c for c in tl["c"] if c[1] >= cut]
        expired = [ev for ev in pending if ev[1] == "u" and ev[0] < cut]
        if not expired and len(closed) == len(tl["c"]):
            continue
        meter = registry.get(mid)
        for up_ms, _ in expired:
            last_read = _last_read_before(registers.get((mid, ENERGY_IMPORT)), up_ms // 1000, meter)
            # A power-up soon after an interruption closed, with no read since, repeats that restoration.
            restored = max((e for _s, e in tl["c"] if e <= up_ms), default=None)
            if meter is None or last_read is None or (restored is not None and last_read * 1000 < restored):
                out.unpaired_power_ups += 1
                continue
            out.interruptions.append(_interruption(meter, last_read * 1000, up_ms, limits, inferred=True))
            closed.append([last_read * 1000, up_ms])
        rest = [ev for ev in pending if not (ev[1] == "u" and ev[0] < cut)]
        out.timelines[mid] = {"p": rest, "c": sorted(closed)} if rest or closed else None
    return out


def _last_read_before(st: RegisterState | None, up: int, meter: MeterInfo | None) -> int | None:
    """End of the last interval read before ``up`` (Unix time) when the interval after it is missing, from the
    register's seen-mask; None when the register does not reach back that far or nothing is missing."""
    if st is None or meter is None:
        return None
    last_end, mask = st[0], st[1]
    step = meter.interval_seconds
    for k in range(DEDUP_HORIZON_INTERVALS + 1):
        end = last_end - k * step
        if end < up and mask >> k & 1:
            return end if end + step < up else None
    return None


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
    """IEEE 1366 MAIFI = Σ IM_i × N_mi / N_T (momentary interruptions, 5 minutes or less)."""
    return momentary_customer_interruptions / customers_served if customers_served else None


def momentary_event_starts(
    interruption: tuple[float, float, str], event_starts: Sequence[float], limit_seconds: float
) -> bool:
    """Whether a meter's interruption (start, end in Unix time, kind) opens a new *momentary interruption
    event* (IEEE 1366-2012 MAIFI_E): a momentary interruption starts one unless it begins within
    ``limit_seconds`` (5 min) of the first interruption of an event already counted for the meter (reclosing
    operations within 5 minutes of the first interruption are one event). Sustained interruptions never do."""
    start, _end, kind = interruption
    if kind != "momentary":
        return False
    return not any(s <= start <= s + limit_seconds for s in event_starts)


@dataclass(frozen=True, slots=True)
class DailyReliability:
    """One day of an area's reliability figures (additive, as the city view merges them)."""

    day: date
    customers_interrupted: float  # Σ N_i (sustained)
    customer_minutes: float  # Σ r_i N_i
    momentary: float  # Σ IM_i N_mi
    customers_served: float  # N_T

    def indices(self) -> DayIndices:
        """The day's SAIFI, SAIDI, MAIFI (0 on a day without customers served: it adds nothing)."""
        n = self.customers_served
        if not n:
            return DayIndices(self.day, 0.0, 0.0, 0.0)
        return DayIndices(
            self.day, self.customers_interrupted / n, self.customer_minutes / n, self.momentary / n
        )


def reliability_with_and_without_meds(
    days: Sequence[DailyReliability], history_saidi: Iterable[float]
) -> dict[str, Any]:
    """SAIFI, SAIDI, CAIDI, MAIFI over ``days``, with every day and without its major event days (the 2.5β
    method of :mod:`shared.reliability`, T_MED from ``history_saidi``)."""
    return indices_with_and_without_meds([d.indices() for d in days], history_saidi)


def feeder_in_outage(
    meters_down: int, feeder_meters: int, *, fraction: float = 0.5, minimum: int = 3
) -> bool:
    """A feeder is out when at least ``minimum`` meters and ``fraction`` of its meters have no supply."""
    return meters_down >= minimum and meters_down >= fraction * max(feeder_meters, 1)
