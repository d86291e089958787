"""Committed generated files (Strimzi topics and users, workloads, dashboards): write them, or check them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def generator_main(
    outputs: Callable[[], dict[Path, str]], script: str, description: str, argv: list[str] | None = None
) -> int:
    """``script [--check]``: write the files ``outputs()`` renders, or with ``--check`` exit 1 if any committed
    file differs from what the code would generate (so the two can never drift)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed files are stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale (run python {script}):", *[str(p.relative_to(ROOT)) for p in stale])
        return 1
    return 0
