"""The production topic catalogue as a fresh interpreter sees it.

Some test modules register private test domains (stream fixtures, city tests) in the test process's
registries; tests that compare the catalogue with committed artefacts must not see those.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from shared.contracts.base import TopicSpec

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def production_topics() -> dict[str, TopicSpec]:
    code = (
        "import json; from dataclasses import asdict; from shared.contracts import TOPICS; "
        "print(json.dumps({k: asdict(v) for k, v in TOPICS.items()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {k: TopicSpec(**v) for k, v in json.loads(out).items()}


_ = asdict
