"""Per-domain paths (ingest over HTTP, each domain's KPI processor, the whole pipeline). Filled in as the
domain services land; each returns result rows for the report."""

from __future__ import annotations


def run_all(bootstrap: str, n: int, console) -> dict:
    return {}
