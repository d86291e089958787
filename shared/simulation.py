"""What the simulators share: the scripted incidents ``ioc up`` hands them (``IOC_SIM_INCIDENTS``)."""

from __future__ import annotations

from datetime import datetime, timedelta


def parse_incidents(spec: str | None) -> list[tuple[str, datetime, datetime]]:
    """``"HK@2026-12-07T03:05:00Z/20,..."`` → [(district, start, end)] (20 minutes when no length is given);
    empty or "none" → []."""
    out = []
    for part in (spec or "").split(","):
        part = part.strip()
        if not part or part == "none":
            continue
        district, _, rest = part.partition("@")
        start, _, minutes = rest.partition("/")
        t0 = datetime.fromisoformat(start.replace("Z", "+00:00"))
        out.append((district, t0, t0 + timedelta(minutes=float(minutes or 20))))
    return out
