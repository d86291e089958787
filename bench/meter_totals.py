"""Exact totals of the meter aggregation, so peers are compared on the same work: every import-energy reading of
the readings topic counted once, its energy in its district's 15-minute window (by the interval's start).

``expected_quarters`` computes them from the topic content itself (the reference); ``ioc_quarters`` reads them
from IOC's meter processor state; the peers report theirs. ``compare`` says whether two agree, window by window.
Keys are ``"<district>|<window start, epoch ms>"``; values ``[readings, kWh]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

ENERGY_IMPORT = "1-0:1.8.0"
QUARTER_S = 900
VALID_QUALITY = "measured"


def _epoch_s(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def quarter_key(district: str, start_s: int) -> str:
    return f"{district}|{(start_s - start_s % QUARTER_S) * 1000}"


def expected_quarters(payloads: Iterable[Mapping], *, valid_only: bool = False) -> dict[str, list]:
    """The reference totals from reading payloads: readings and energy per district and quarter hour.
    ``valid_only``: count only the readings IOC counts as valid intervals (quality "measured" with a value); the
    energy is every reading's delta either way (an estimated interval's energy was used all the same: the meter
    KPI processor adds it to ``meter.energy_kwh``)."""
    out: dict[str, list] = {}
    for d in payloads:
        if d.get("obis") != ENERGY_IMPORT:
            continue
        counted = not valid_only or (d.get("quality") == VALID_QUALITY and d.get("value") is not None)
        start = _epoch_s(d["interval_end"]) - int(d["interval_seconds"])
        t = out.setdefault(quarter_key(d["district"], start), [0, 0.0])
        t[0] += counted
        t[1] += d.get("delta") or 0.0
    return out


def ioc_quarters(states: Iterable[Mapping[str, object]]) -> dict[str, list]:
    """The 15-minute totals in IOC's meter processor state (one mapping per partition; ``agg:900:<ws>:<district>``
    keys, ``valid`` and ``kwh``), summed over partitions. IOC keeps the count of valid intervals, not of every
    reading: compare it with ``expected_quarters(..., valid_only=True)``."""
    out: dict[str, list] = {}
    prefix = f"agg:{QUARTER_S}:"
    for state in states:
        for key, agg in state.items():
            if not key.startswith(prefix):
                continue
            _, _, ws, district = key.split(":", 3)
            t = out.setdefault(f"{district}|{int(ws) * 1000}", [0, 0.0])
            t[0] += agg["valid"]  # type: ignore[index]
            t[1] += agg["kwh"]  # type: ignore[index]
    return out


def compare(expected: Mapping[str, list], got: Mapping[str, list], *, rel: float = 1e-9) -> dict:
    """Whether ``got`` has every window of ``expected`` with the same reading count and energy (energy to
    ``rel``: sums in another order round differently), and nothing else. Summarised for a result row."""
    missing = [k for k in expected if k not in got]
    extra = [k for k, v in got.items() if k not in expected and (v[0] or v[1])]
    wrong = [
        k
        for k, (n, kwh) in expected.items()
        if k in got and (got[k][0] != n or abs(got[k][1] - kwh) > rel * max(1.0, abs(kwh)))
    ]
    readings = sum(v[0] for v in expected.values())
    counted = sum(v[0] for k, v in got.items() if k in expected)
    return {
        "exact": not (missing or extra or wrong),
        "windows": len(expected),
        "windows_missing": len(missing),
        "windows_extra": len(extra),
        "windows_wrong": len(wrong),
        "readings_expected": readings,
        "readings_counted": counted,
        "kwh_expected": round(sum(v[1] for v in expected.values()), 6),
        "kwh_counted": round(sum(v[1] for k, v in got.items() if k in expected), 6),
        "examples": (missing + extra + wrong)[:3],
    }
