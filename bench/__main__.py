"""``make bench``: every benchmark, in turn; each prints its figures and asserts nothing."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def main() -> int:
    names = [
        "bench.e2e",
        *sorted(f"bench.{m.name}" for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_")),
    ]
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        try:
            mod = importlib.import_module(name)
            mod.main([])
        except Exception as exc:  # a broken benchmark must not hide the others' figures
            failed.append(name)
            print(f"{name} failed: {exc!r}", file=sys.stderr)
        print(f"({name} took {time.perf_counter() - t0:.0f}s)", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
