"""``make bench``: every benchmark, in turn; each prints its figures and asserts nothing.

At the end one summary table is printed and written, with the machine's core count
and each benchmark's wall time, as JSON to ``bench/results/bench-<UTC time>.json``.
Benchmarks whose ``main`` returns a dict contribute their figures to it; the others'
figures are in their own printed output above the table.

Knobs (environment; defaults keep the whole run under 10 minutes on 2 cores):

* ``CITYBRAIN_BENCH_MESSAGES`` (10000): messages of the side-by-side rows;
* ``CITYBRAIN_BENCH_CITY_DEVICES`` (20000): devices of the city-like end-to-end run (one message each);
* ``CITYBRAIN_BENCH_LEDGER_DEVICES`` (1000000): devices registered for ``e2e_city_1m`` (0: no such row);
* ``CITYBRAIN_BENCH_NAIVE_RATE`` (1000) / ``CITYBRAIN_BENCH_NAIVE_S`` (20): the naive baseline's paced load;
* ``CITYBRAIN_BENCH_RATE`` (500,3000) / ``CITYBRAIN_BENCH_LATENCY_S`` (10): the latency
  runs' offered loads in msg/s (one run each; empty: none) and their duration;
* ``CITYBRAIN_BENCH_SCALING_MESSAGES`` (6000): messages per worker count in the scaling run;
* ``CITYBRAIN_BENCH_MEMORY_DEVICES`` (100000,1000000): ledger sizes of the memory run;
* ``CITYBRAIN_BENCH_NODERED`` (1): 0 skips the Node-RED comparison;
* ``CITYBRAIN_BENCH_ONLY``: comma-separated module names (``e2e,bench_scaling``) to run only those.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench

RESULTS = Path(__file__).resolve().parent / "results"
# bench.bench_latency runs inside bench.e2e, on the platform e2e has already started.
INSIDE_E2E = {"bench.bench_latency"}
# Arguments make bench passes, to stay under 10 minutes on 2 cores. bench_ledger's figures
# (import rows/s, index bytes and lookups per device) are per row and barely move between
# 200k and 1M rows, and bench_memory measures the 1M ledger; run
# `python -m bench.bench_ledger` alone for its 1M default (about 3 minutes).
ARGS = {
    "bench.e2e": ["--no-json"],  # its figures go into the one summary file
    "bench.bench_ledger": ["--rows", "200000", "--lookups", "200000"],
    # The worker alone (pipeline on PostgreSQL and Kafka), at steady state (90 minutes of detector
    # history seeded): one warm-up and two measured rounds.
    "bench.bench_worker": ["--devices", "10000", "--rounds", "2"],
}


#: Figures the side-by-side table must have (issue 17); a run names those it lacks.
REQUIRED = (
    "e2e_city.msg_per_s",
    "e2e_city.msg_per_worker_cpu_s",
    "e2e_city.msg_per_gateway_cpu_s",
    "e2e_city_1m.msg_per_s",
    "mqtt_native.msg_per_s",
    "naive_baseline.msg_per_s",
    "nodered.msg_per_s",
    "latency_3000.event_to_stored_p99_ms",
    "latency_3000.event_to_alert_feed_p99_ms",
    "ledger_import.rows_per_s",
)


def missing(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The :data:`REQUIRED` figures (``row.column``) that ``rows`` lacks."""
    out = []
    for key in REQUIRED:
        row, col = key.split(".", 1)
        if col not in rows.get(row, {}):
            out.append(key)
    return out


def _rows(name: str, result: Any) -> dict[str, dict[str, Any]]:
    """Flatten a benchmark's result into table rows (``{row: {column: value}}``)."""
    if not isinstance(result, dict):
        return {}
    if isinstance(result.get("results"), dict):
        # Rows named by the benchmark itself (e2e_city, ledger_import, ...).
        return {k: v for k, v in result["results"].items() if isinstance(v, dict)}
    if all(isinstance(v, dict) for v in result.values()):
        return {f"{name}.{k}": v for k, v in result.items()}
    return {name: result}


def _table(rows: dict[str, dict[str, Any]]) -> str:
    width = max([len(r) for r in rows] + [9]) + 2
    lines = [f"{'benchmark':<{width}}figures"]
    for name, res in rows.items():
        lines.append(f"{name:<{width}}" + ", ".join(f"{k}={v}" for k, v in res.items()))
    return "\n".join(lines)


def main() -> int:
    """Run every benchmark module, then print and write the summary."""
    names = [
        "bench.e2e",
        *sorted(
            f"bench.{m.name}"
            for m in pkgutil.iter_modules(bench.__path__)
            if m.name.startswith("bench_") and f"bench.{m.name}" not in INSIDE_E2E
        ),
    ]
    only = {n.strip() for n in os.environ.get("CITYBRAIN_BENCH_ONLY", "").split(",") if n.strip()}
    if only:
        names = [n for n in names if n.removeprefix("bench.") in only]
    failed = []
    rows: dict[str, dict[str, Any]] = {}
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        short = name.removeprefix("bench.")
        try:
            mod = importlib.import_module(name)
            result = mod.main(ARGS.get(name, []))
            rows.update(_rows(short, result))
        except Exception as exc:  # a broken benchmark must not hide the others' figures
            failed.append(name)
            print(f"{name} failed: {exc!r}", file=sys.stderr)
        seconds[short] = round(time.perf_counter() - t0, 1)
        print(f"({name} took {seconds[short]:.0f}s)", flush=True)
    total = time.perf_counter() - began
    doc = {
        "when": datetime.now(UTC).isoformat(),
        "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "total_seconds": round(total, 1),
        "seconds": seconds,
        "failed": failed,
        "results": rows,
        "missing": missing(rows),  # required figures this run did not measure
    }
    print(f"\n=== summary: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, {total:.0f}s in all ===")
    print(_table(rows))
    lacking = missing(rows)
    if lacking:
        print("not measured in this run: " + ", ".join(lacking))
    print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"written to {path}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
