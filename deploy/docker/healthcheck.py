"""Container HEALTHCHECK: GET http://127.0.0.1:$HEALTHCHECK_PORT/healthz, exit 0 on 200.

Standard library only, so the image needs neither curl nor wget.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = int(os.environ.get("HEALTHCHECK_PORT", "8080"))
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return 0 if resp.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
