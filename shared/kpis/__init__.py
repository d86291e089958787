"""KPI definitions as data: ``shared/kpis/<domain>.yaml``, versioned with the code.

Each domain owns its file; the city layer loads them all. A definition says what the KPI is (names in
Vietnamese and English, unit, windows and how long late data may still revise each), how partial observations
combine across partitions and areas (``sum``, ``max`` or ``ratio`` of summed numerators and denominators,
optionally ``scale``d), whether higher or lower is better, the target, and the warning / critical thresholds.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

DIR = Path(__file__).parent


class LocalizedName(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vi: str
    en: str


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid")
    warning: float | None = None
    critical: float | None = None


class KpiDefinition(BaseModel):
    """One KPI."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9_]+\.[a-z0-9_.]+$")
    name: LocalizedName
    unit: str
    domain: str
    windows: list[int] = Field(min_length=1, description="window lengths in seconds the domain publishes")
    combine: Literal["sum", "max", "ratio"]
    scale: float = 1.0
    direction: Literal["higher", "lower", "none"] = "none"
    target: float | None = None
    thresholds: Thresholds = Field(default_factory=Thresholds)
    source: str = Field(description="the topic that feeds it")
    formula: str = Field(description="how it is computed, for people")
    headline: bool = False
    revisable_seconds: dict[int, int] = Field(
        default_factory=dict,
        description="per window length: how long after the window's end, in its source's event time, the source "
        "may still publish a revised partial of it (late data). The city keeps a window while its "
        "end plus this (and a margin for lagging partitions) has not fallen behind its series' newest "
        "window, and ignores partials of windows older than that. A length not listed: one window.",
    )

    @model_validator(mode="after")
    def _revisions_of_published_windows(self):
        unknown = sorted(set(self.revisable_seconds) - set(self.windows))
        if unknown:
            raise ValueError(f"{self.id}: revisable_seconds for windows it does not publish: {unknown}")
        if any(s < 0 for s in self.revisable_seconds.values()):
            raise ValueError(f"{self.id}: revisable_seconds must not be negative")
        return self

    def revisable_for(self, window_seconds: int) -> int:
        """Seconds after a window's end during which its source may still revise it (default: one window)."""
        return self.revisable_seconds.get(window_seconds, window_seconds)

    @model_validator(mode="after")
    def _thresholds_ordered(self):
        w, c = self.thresholds.warning, self.thresholds.critical
        if w is not None and c is not None and self.direction != "none":
            if self.direction == "higher" and c > w:
                raise ValueError(
                    f"{self.id}: for higher-is-better the critical threshold must be below warning"
                )
            if self.direction == "lower" and c < w:
                raise ValueError(
                    f"{self.id}: for lower-is-better the critical threshold must be above warning"
                )
        return self

    def status(self, value: float | None) -> str:
        """ok, warning, critical or unknown."""
        if value is None:
            return "unknown"
        w, c = self.thresholds.warning, self.thresholds.critical
        if self.direction == "higher":
            if c is not None and value < c:
                return "critical"
            if w is not None and value < w:
                return "warning"
        elif self.direction == "lower":
            if c is not None and value > c:
                return "critical"
            if w is not None and value > w:
                return "warning"
        return "ok"


def load_file(path: Path) -> list[KpiDefinition]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    return [KpiDefinition.model_validate(item) for item in raw]


@lru_cache(maxsize=1)
def all_definitions() -> dict[str, KpiDefinition]:
    """Every KPI of every domain file, by id (ids must be unique)."""
    defs: dict[str, KpiDefinition] = {}
    for path in sorted(DIR.glob("*.yaml")):
        for d in load_file(path):
            if d.id in defs:
                raise ValueError(f"KPI {d.id} defined twice")
            defs[d.id] = d
    return defs
