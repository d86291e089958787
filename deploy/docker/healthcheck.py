"""Container health check of the IOC image: exit 0 when ``IOC_HEALTHCHECK_URL`` answers 2xx, 1 otherwise.

One image runs every HTTP service (``/healthz`` on its port) and every stream processor (``/livez`` on
``IOC_METRICS_PORT``), so each container says what to probe; standard library only, no curl in the image.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9100/livez"


def check(url: str, timeout: float = 3.0) -> bool:
    """True when ``url`` answers with a 2xx status within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main() -> int:
    url = os.environ.get("IOC_HEALTHCHECK_URL", DEFAULT_URL)
    healthy = check(url)
    if not healthy:
        print(f"unhealthy: {url}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
