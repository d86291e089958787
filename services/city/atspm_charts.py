"""The ATSPM charts of an intersection page, built from the traffic service's own measures (pure, no I/O).

The city never recomputes a signal measure: it reshapes what ``GET /v1/intersections/{id}/measures`` of the
traffic service answers (its phase measures per 15-minute bin, and its per-cycle timeline, ``kind=timeline``)
into the three charts engineers read (docs/console-assets.md):

- **Purdue coordination diagram**: per red-to-red cycle (begin red clearance to the next), the offsets of begin
  green and begin yellow and the cycle length, from the timeline; each vehicle's arrival as seconds after its
  cycle's start (``kind=pcd``: one dot per vehicle, as UDOT's diagram); and per bin the arrivals on green /
  yellow / red of the phase measures with the mean per cycle (``arrivals_on_x / cycles``) and the mean cycle
  length (``cycle_seconds / cycles``).
- **Split monitor**: the split of every cycle (begin green to end red clearance, the traffic service's
  ``splits`` rule: a cycle with exactly one begin yellow and one begin red clearance, ended by one end red
  clearance, then closed by the next begin green), from the timeline; and per bin ``splits``,
  ``split_seconds_avg`` and ``split_seconds_max`` as the phase measures give them.
- **Phase terminations**: each termination (gap-out, max-out, force-off) at its time with the cycle it ended
  (``kind=pcd``), gap-outs, max-outs and force-offs per phase per bin (the phase measures' counts) and the share
  of max-outs + force-offs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any


def _ms(v: Any) -> int | None:
    """An instant of the traffic API (ISO 8601 text, or epoch milliseconds) → epoch milliseconds."""
    if v is None:
        return None
    if isinstance(v, int | float):
        return int(v)
    t = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return round(t.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def _per_cycle(n: float, cycles: int) -> float | None:
    return n / cycles if cycles else None


def _phase_intervals(timeline: Iterable[dict[str, Any]]) -> dict[int, list[tuple[str, int, int, int | None]]]:
    """Signal intervals per phase, ordered by start: (kind, start ms, end ms, cycle start ms)."""
    out: dict[int, list[tuple[str, int, int, int | None]]] = defaultdict(list)
    for iv in timeline:
        if iv.get("phase") is None or iv["kind"] not in ("green", "yellow", "red_clearance", "red"):
            continue
        start, end = _ms(iv["start"]), _ms(iv["end"])
        assert start is not None and end is not None
        out[int(iv["phase"])].append((iv["kind"], start, end, _ms(iv.get("cycle_start"))))
    for ivs in out.values():
        ivs.sort(key=lambda x: (x[1], x[2]))
    return out


def cycle_splits(intervals: list[tuple[str, int, int, int | None]]) -> list[dict[str, Any]]:
    """Per green-to-green cycle of one phase: its split (begin green → end red clearance), for cycles holding one
    yellow and one red clearance ended by an end red clearance (a ``red`` interval starting where it ends)."""
    by_cycle: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    greens: set[int] = set()
    for kind, start, end, cycle in intervals:
        if kind == "green":
            greens.add(start)
        if cycle is not None:
            by_cycle[cycle].append((kind, start, end))
    out = []
    for green in sorted(greens):
        ivs = by_cycle.get(green, [])
        yellows = [iv for iv in ivs if iv[0] == "yellow"]
        clearances = [iv for iv in ivs if iv[0] == "red_clearance"]
        reds = [iv for iv in ivs if iv[0] == "red"]
        if len(yellows) != 1 or len(clearances) != 1 or len(reds) != 1:
            continue
        end_clearance = clearances[0][2]
        if reds[0][1] != end_clearance or not green <= yellows[0][1] <= clearances[0][1]:
            continue  # the red clearance was cut short by a green or yellow, not ended by an end red clearance
        out.append({"cycle_start": _iso(green), "split_seconds": round((end_clearance - green) / 1000, 3)})
    return out


def coordination_cycles(intervals: list[tuple[str, int, int, int | None]]) -> list[dict[str, Any]]:
    """Per red-to-red cycle of one phase (begin red clearance to the next one, the coordination diagram's
    cycle): the offsets of begin green and begin yellow and the cycle length, for cycles holding exactly one
    green and one yellow (the traffic service's completeness rule for arrivals by cycle)."""
    reds = sorted(start for kind, start, _, _ in intervals if kind == "red_clearance")
    greens = [start for kind, start, _, _ in intervals if kind == "green"]
    yellows = [start for kind, start, _, _ in intervals if kind == "yellow"]
    out = []
    for r0, r1 in pairwise(reds):
        g = [t for t in greens if r0 <= t < r1]
        y = [t for t in yellows if r0 <= t < r1]
        if len(g) != 1 or len(y) != 1 or y[0] < g[0]:
            continue
        out.append(
            {
                "cycle_start": _iso(r0),
                "green_seconds": round((g[0] - r0) / 1000, 3),
                "yellow_seconds": round((y[0] - r0) / 1000, 3),
                "cycle_seconds": round((r1 - r0) / 1000, 3),
            }
        )
    return out


def atspm_charts(
    measures: list[dict[str, Any]], timeline: list[dict[str, Any]], pcd: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The three charts per phase from the traffic API's ``measures`` (phase rows), ``timeline`` and ``pcd``
    (``kind=pcd``: per cycle each arrival's offset and the termination; None from a traffic service without it)."""
    intervals = _phase_intervals(timeline)
    vehicles: dict[int, list[dict[str, Any]]] = defaultdict(list)
    ended: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for c in (pcd or {}).get("cycles") or ():
        vehicles[int(c["phase"])].append(
            {
                "cycle_start": _iso(_ms(c["cycle_start"]) or 0),
                "green_seconds": c["green_offset_seconds"],
                "yellow_seconds": c["yellow_offset_seconds"],
                "cycle_seconds": c["cycle_seconds"],
                "arrival_offsets_seconds": c["arrival_offsets_seconds"],
                "termination": c["termination"],
            }
        )
    for x in (pcd or {}).get("terminations") or ():
        ended[int(x["phase"])].append(
            {
                "at": _iso(_ms(x["at"]) or 0),
                "termination": x["termination"],
                "cycle_start": _iso(_ms(x["cycle_start"]) or 0) if x.get("cycle_start") else None,
            }
        )
    rows: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for m in measures:
        rows[int(m["phase"])].append(m)
    phases = []
    for phase in sorted({*rows, *intervals, *vehicles, *ended}):
        bins = sorted(rows.get(phase, []), key=lambda m: _ms(m["bin_start"]) or 0)
        ivs = intervals.get(phase, [])
        coordination = []
        splits = []
        terminations = []
        for m in bins:
            start = _iso(_ms(m["bin_start"]) or 0)
            cycles = int(m.get("cycles") or 0)
            coordination.append(
                {
                    "bin_start": start,
                    "cycles": cycles,
                    "arrivals": m.get("arrivals", 0),
                    "arrivals_on_green": m.get("arrivals_on_green", 0),
                    "arrivals_on_yellow": m.get("arrivals_on_yellow", 0),
                    "arrivals_on_red": m.get("arrivals_on_red", 0),
                    "pct_arrivals_on_green": m.get("pct_arrivals_on_green"),
                    "arrivals_on_green_per_cycle": _per_cycle(m.get("arrivals_on_green", 0), cycles),
                    "arrivals_on_red_per_cycle": _per_cycle(m.get("arrivals_on_red", 0), cycles),
                    "cycle_seconds_avg": _per_cycle(m.get("cycle_seconds", 0.0), cycles),
                    "green_seconds_avg": _per_cycle(m.get("green_seconds", 0.0), cycles),
                }
            )
            splits.append(
                {
                    "bin_start": start,
                    "splits": m.get("splits", 0),
                    "split_seconds_avg": m.get("split_seconds_avg"),
                    "split_seconds_max": m.get("split_seconds_max"),
                }
            )
            gap, mx, force = m.get("gap_outs", 0), m.get("max_outs", 0), m.get("force_offs", 0)
            total = gap + mx + force
            terminations.append(
                {
                    "bin_start": start,
                    "gap_outs": gap,
                    "max_outs": mx,
                    "force_offs": force,
                    "pct_max_or_force": (mx + force) / total if total else None,
                }
            )
        phases.append(
            {
                "phase": phase,
                "coordination": {
                    "cycles": coordination_cycles(ivs),
                    "bins": coordination,
                    "vehicles": vehicles.get(phase, []),
                },
                "split_monitor": {"cycles": cycle_splits(ivs), "bins": splits},
                "terminations": {"bins": terminations, "cycles": ended.get(phase, [])},
            }
        )
    return {"phases": phases}


def latest_phase_states(timeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last signal interval the timeline holds per phase (the latest phase events the traffic service
    published: its colour and when it began and ended)."""
    last: dict[int, tuple[str, int, int]] = {}
    for phase, ivs in _phase_intervals(timeline).items():
        kind, start, end, _ = max(ivs, key=lambda x: x[2])
        last[phase] = (kind, start, end)
    return [
        {"phase": p, "kind": k, "start": _iso(s), "end": _iso(e)} for p, (k, s, e) in sorted(last.items())
    ]
