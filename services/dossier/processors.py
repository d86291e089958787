"""Dossier KPI processor: one-stop-shop throughput, timeliness, online shares and Decision 766 indices.

Per agency, commune/ward (when the handling unit is one), district (when the hierarchy has districts) and the
city, by local day and month (Vietnam time):

- counters by event time: dossiers received / resolved / returned, apologies, overdue notices;
- ratios by event time: early / on-time (early + on time) / late shares of resolved dossiers, online share of
  received dossiers, fully-online share of received dossiers of fully-online procedures (766: 12 points),
  online-payment share of fee payments (766: 10 points);
- a live snapshot at ``now``: open dossiers within deadline and overdue (a paused clock is never overdue), and
  the 766 progress indicator ``(finished early or on time in the period + open within deadline) /
  (finished in the period + open)`` worth 20 points, for the current day and month.

Alarms: a dossier overdue notice raises ``dossier:overdue:<code>``; it clears when the dossier is finished,
closed, or no longer past its (paused or extended) due date.
Every observation carries additive numerator / denominator so the city layer can merge partitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

from shared.areas import CITY_CODE
from shared.contracts.base import event_type_of
from shared.contracts.cloudevents import EncodedEvent, ReceivedEvent, encode, parse_time
from shared.contracts.common import kpi_key
from shared.contracts.dossier import (
    ALARM_EVENT,
    KPI_EVENT,
    LIFECYCLE_TOPIC,
    DossierApologized,
    DossierOverdue,
    DossierStatusChanged,
)
from shared.stream import State, StreamProcessor

from .domain import OPEN_STATUSES, RECEIVED, RESOLVED, RETURNED, VN_TZ, local_date, timeliness

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
    "fully_online": (("dossier.fully_online_ratio", True, 1.0, "ratio"),
                     ("dossier.fully_online_points", True, 12.0, "points")),
    "online_payment": (("dossier.online_payment_ratio", True, 1.0, "ratio"),
                       ("dossier.online_payment_points", True, 10.0, "points")),
}
PROGRESS_POINTS = 20.0
WINDOW_KINDS = ("d", "m")


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
        start = datetime(start_day.year, start_day.month, start_day.day, tzinfo=VN_TZ)
        return start, 86400
    y, m = (int(x) for x in rest.split("-"))
    start = datetime(y, m, 1, tzinfo=VN_TZ)
    end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=VN_TZ)
    return start, int((end - start).total_seconds())


def _window_day(wid: str) -> date:
    kind, _, rest = wid.partition(":")
    return date.fromisoformat(rest if kind == "d" else rest + "-01")


class DossierKpiProcessor(StreamProcessor):
    """Folds the dossier lifecycle into KPI observations (``ioc.dossier.kpis``) and alarms."""

    name = "dossier-kpi"
    topics = (LIFECYCLE_TOPIC.name,)
    tick_seconds = 5.0

    def __init__(self, *, day_retention_days: int = 35, month_retention_days: int = 400):
        self.day_retention = timedelta(days=day_retention_days)
        self.month_retention = timedelta(days=month_retention_days)

    # apply ------------------------------------------------------------------------------------------------

    @staticmethod
    def _count(state: State, counter: str, scopes: list[tuple[str, str]], at: datetime,
               num: float, den: float) -> None:
        for kind in WINDOW_KINDS:
            wid = window_id(at, kind)
            for level, code in scopes:
                key = f"c|{counter}|{level}|{code}|{wid}"
                cur = state.get(key) or [0.0, 0.0]
                state.put(key, [cur[0] + num, cur[1] + den])
                state.put(f"x|{key}", 1)  # changed since the last emit

    def apply(self, event: ReceivedEvent, state: State) -> None:
        data = event.data
        if event.type == STATUS_TYPE:
            self._status(data, state)
        elif event.type == OVERDUE_TYPE:
            at = parse_time(data["at"])
            self._count(state, "overdue_notices", scopes_of(data), at, 1.0, 0.0)
            code = data["dossier_code"]
            if f"o|{code}" in state and f"a|{code}" not in state:
                self._alarm(state, data, "raised", at,
                            f"dossier overdue by {data['days_overdue']} day(s): procedure {data['procedure_code']}, "
                            f"agency {data['agency_code']}")
        elif event.type == APOLOGY_TYPE:
            self._count(state, "apologies", scopes_of(data), parse_time(data["at"]), 1.0, 0.0)

    def _status(self, data: dict[str, Any], state: State) -> None:
        at = parse_time(data["at"])
        scopes = scopes_of(data)
        status = data["status"]
        code = data["dossier_code"]
        if status == RECEIVED and data.get("previous_status") in (None, 1):
            online = 1.0 if data["channel"] == "online" else 0.0
            self._count(state, "received", scopes, at, 1.0, 0.0)
            self._count(state, "online", scopes, at, online, 1.0)
            if data["online_level"] == "fully_online":
                self._count(state, "fully_online", scopes, at, online, 1.0)
        elif status == RESOLVED and data.get("due_date"):
            t = timeliness(at, date.fromisoformat(data["due_date"]))
            self._count(state, "resolved", scopes, at, 1.0, 0.0)
            self._count(state, "on_time", scopes, at, 1.0 if t in ("early", "on_time") else 0.0, 1.0)
            self._count(state, "early", scopes, at, 1.0 if t == "early" else 0.0, 1.0)
            self._count(state, "late", scopes, at, 1.0 if t == "late" else 0.0, 1.0)
        elif status == RETURNED:
            self._count(state, "returned", scopes, at, 1.0, 0.0)
        if data.get("action") == "pay_fees" and data.get("paid_online") is not None:
            self._count(state, "online_payment", scopes, at, 1.0 if data["paid_online"] else 0.0, 1.0)

        open_key = f"o|{code}"
        if status in OPEN_STATUSES and data.get("due_date"):
            state.put(open_key, {"s": scopes, "due": data["due_date"], "p": bool(data.get("clock_paused"))})
            if f"a|{code}" in state and (data.get("clock_paused") or local_date(at).isoformat() <= data["due_date"]):
                self._alarm(state, data, "cleared", at, "dossier no longer overdue (due date extended or paused)")
        elif state.pop(open_key) is not None and f"a|{code}" in state:
            self._alarm(state, data, "cleared", at, f"dossier closed with status {status}")
        state.put("snap_dirty", 1)

    def _alarm(self, state: State, data: dict[str, Any], what: str, at: datetime, message: str) -> None:
        code = data["dossier_code"]
        if what == "raised":
            state.put(f"a|{code}", 1)
        else:
            state.pop(f"a|{code}")
        district = data.get("district")
        unit = data["admin_unit"]
        alarm = {
            "alarm_id": f"dossier:overdue:{code}", "domain": "dossier", "alarm_type": "dossier_overdue",
            "state": what, "severity": "minor", "source_id": code, "district": district,
            "commune": unit if unit not in (district, CITY_CODE) else None,
            "at": at.isoformat(), "message": message,
        }
        # Pending alarms keep their order (a raise and a clear in one batch are both published).
        seq = int(state.get("pa_seq", 0)) + 1
        state.put("pa_seq", seq)
        state.put(f"pa|{seq:012d}", alarm)

    # emit -------------------------------------------------------------------------------------------------

    def _observation(self, kpi: str, level: str, code: str, wid: str, num: float, den: float | None,
                     scale: float, unit: str, partition: int, now: datetime) -> EncodedEvent:
        start, seconds = window_bounds(wid)
        if den is None:
            value: float | None = num * scale
        else:
            value = num / den * scale if den else None
        payload = KPI_EVENT.model(
            kpi=kpi, scope_level=level, scope_code=code, window_start=start, window_seconds=seconds,
            value=value, numerator=float(num), denominator=None if den is None else float(den), unit=unit,
            partition=partition, observed_at=now, key=kpi_key(kpi, level, code),
        )
        return encode(KPI_EVENT, payload, source=SOURCE)

    def emit(self, state: State, now: datetime) -> Iterable[EncodedEvent]:
        out: list[EncodedEvent] = []
        p = state.partition
        for xkey, _ in state.items("x|"):
            state.pop(xkey)
            ckey = xkey[2:]
            cur = state.get(ckey)
            if cur is None:
                continue
            _, counter, level, code, wid = ckey.split("|")
            for kpi, is_ratio, scale, unit in COUNTER_KPIS[counter]:
                out.append(self._observation(kpi, level, code, wid, cur[0], cur[1] if is_ratio else None,
                                             scale, unit, p, now))
        today = local_date(now)
        if state.get("snap_dirty") or state.get("snap_day") != today.isoformat():
            out.extend(self._snapshot(state, now, today))
            state.pop("snap_dirty")
        if state.get("prune_day") != today.isoformat():
            self._prune(state, now)
            state.put("prune_day", today.isoformat())
        for key, alarm in sorted(state.items("pa|")):
            state.pop(key)
            out.append(encode(ALARM_EVENT, ALARM_EVENT.model.model_validate(alarm), source=SOURCE))
        return out

    def _snapshot(self, state: State, now: datetime, today: date) -> list[EncodedEvent]:
        """Open within deadline / overdue now, and the 766 progress points for today and this month."""
        open_n: dict[tuple[str, str], int] = {}
        overdue_n: dict[tuple[str, str], int] = {}
        for _, o in state.items("o|"):
            late = not o["p"] and today.isoformat() > o["due"]
            for level, code in o["s"]:
                sc = (level, code)
                open_n[sc] = open_n.get(sc, 0) + 1
                if late:
                    overdue_n[sc] = overdue_n.get(sc, 0) + 1
        day_w, month_w = window_id(now, "d"), window_id(now, "m")
        scopes = set(open_n)
        for wid in (day_w, month_w):
            scopes |= {(k.split("|")[2], k.split("|")[3]) for k in state.keys("c|on_time|") if k.endswith(wid)}
        values: dict[str, tuple[str, str, str, str, float, float | None, float, str]] = {}
        for level, code in scopes:
            n_open = open_n.get((level, code), 0)
            n_late = overdue_n.get((level, code), 0)
            values[f"dossier.open_within_deadline|{level}|{code}|{day_w}"] = (
                "dossier.open_within_deadline", level, code, day_w, float(n_open - n_late), None, 1.0, "dossiers")
            values[f"dossier.overdue_open|{level}|{code}|{day_w}"] = (
                "dossier.overdue_open", level, code, day_w, float(n_late), None, 1.0, "dossiers")
            for wid in (day_w, month_w):
                fin = state.get(f"c|on_time|{level}|{code}|{wid}") or [0.0, 0.0]
                values[f"dossier.progress_766_points|{level}|{code}|{wid}"] = (
                    "dossier.progress_766_points", level, code, wid, fin[0] + n_open - n_late, fin[1] + n_open,
                    PROGRESS_POINTS, "points")
        out: list[EncodedEvent] = []
        # Scopes that had something before and now have nothing get their zero.
        for lkey, last in state.items("l|"):
            key = lkey[2:]
            if key not in values:
                kpi, level, code, wid = key.split("|")
                state.pop(lkey)
                if wid in (day_w, month_w) and last[0] != 0:
                    is_ratio = kpi == "dossier.progress_766_points"
                    out.append(self._observation(kpi, level, code, wid, 0.0, 0.0 if is_ratio else None,
                                                 PROGRESS_POINTS if is_ratio else 1.0,
                                                 "points" if is_ratio else "dossiers", state.partition, now))
        for key, (kpi, level, code, wid, num, den, scale, unit) in values.items():
            pair = [num, den]
            if state.get(f"l|{key}") != pair:
                state.put(f"l|{key}", pair)
                out.append(self._observation(kpi, level, code, wid, num, den, scale, unit, state.partition, now))
        state.put("snap_day", today.isoformat())
        return out

    def _prune(self, state: State, now: datetime) -> None:
        today = local_date(now)
        for key in state.keys("c|"):
            wid = key.rsplit("|", 1)[1]
            keep = self.day_retention if wid.startswith("d:") else self.month_retention
            if _window_day(wid) < today - keep:
                state.pop(key)


def kpi_processor(settings: Any = None) -> DossierKpiProcessor:
    """Factory used by the center (``PROCESSORS``)."""
    if settings is None or not hasattr(settings, "kpi_day_retention_days"):
        return DossierKpiProcessor()
    return DossierKpiProcessor(day_retention_days=settings.kpi_day_retention_days,
                               month_retention_days=settings.kpi_month_retention_days)


PROCESSORS = [kpi_processor]
