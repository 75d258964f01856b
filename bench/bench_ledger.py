"""Ledger benchmark: bulk-import rate, index memory per device, lookups per second.

    .venv/bin/python -m bench.bench_ledger --rows 1000000

Generates ``--rows`` devices (seeded) as a CSV file, imports it into
PostgreSQL with :func:`devices.importer.import_file` (an embedded server
started by the harness unless ``--database-url`` is given), then builds the
compact :class:`devices.index.DeviceIndex` from the ledger and measures its
memory and lookup rate. With ``--compare-dict``, also a plain dict of
:class:`DeviceInfo` for reference.

Each generated device lies inside the district its code names and the file
has no ``grid`` column, so the import includes the bulk location check and
grid-cell assignment (:func:`devices.importer.place_rows`); ``--no-place``
skips them, for comparison.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from bench._common import drop_pg
from citybrain.harness import start_postgres
from citybrain.migrations import upgrade
from devices.code import XIAMEN_DISTRICTS, DeviceCode
from devices.importer import import_file
from devices.index import DeviceIndex, DeviceInfo, IndexBuilder
from devices.models import shipped_models
from geo.districts import load_districts
from geo.sample import random_points_in

# (class code, model) mix of a city roll-out: mostly manhole covers and poles.
MIX = [("0102", "manhole-cover", 4), ("0103", "manhole-cover", 3), ("0701", "smart-pole", 2), ("0308", "air-micro", 1)]


def generate(path: Path, rows: int, seed: int) -> None:
    """Write ``rows`` devices as CSV, each at a random point inside the district its code names.

    No ``grid`` column: the importer assigns each device its 单元网格 cell from
    its location (bulk STRtree query), which is part of what is measured.
    """
    rng = random.Random(seed)
    districts = sorted(XIAMEN_DISTRICTS)
    weighted = [(c, m) for c, m, w in MIX for _ in range(w)]
    seq: dict[tuple[str, str], int] = {}
    # Positions drawn per district up front (vectorised), consumed in row order.
    outlines = {d.code: d.geometry for d in load_districts()}
    np_rng = np.random.default_rng(seed)
    points = {d: random_points_in(outlines[d], rows // len(districts) + 1, np_rng) for d in districts}
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["code", "model", "name", "lon", "lat", "attributes"])
        for i in range(rows):
            d = districts[i % len(districts)]
            cls, model = weighted[rng.randrange(len(weighted))]
            n = seq[(d, cls)] = seq.get((d, cls), 0) + 1
            lons, lats = points[d]
            k = i // len(districts)
            attrs = json.dumps({"depth_m": rng.choice([1.5, 2.0, 3.0])}) if model == "manhole-cover" else ""
            w.writerow(
                [DeviceCode.build(d, cls, n).full, model, f"{cls}-{i}", f"{lons[k]:.6f}", f"{lats[k]:.6f}", attrs]
            )


def _build(url: str) -> DeviceIndex:
    builder = IndexBuilder()
    with psycopg.connect(url) as conn, conn.transaction():
        cur = conn.cursor(name="bench_index")
        cur.itersize = 50_000
        cur.execute("select code, model, device_class, district, grid, state, attributes from devices")
        for row in cur:
            builder.add(row)
    return builder.finish()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print (and return, for ``make bench``'s summary) import rate, index memory and lookup rates."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--database-url", default=None, help="default: start an embedded PostgreSQL")
    parser.add_argument("--compare-dict", action="store_true", help="also measure a dict of DeviceInfo")
    parser.add_argument(
        "--no-place", action="store_true", help="skip the location check and grid assignment (for comparison)"
    )
    args = parser.parse_args(argv)

    models = shipped_models()
    proc = None
    url = args.database_url
    if url is None:
        # Per-process name: two runs at once must not wipe each other's data directory.
        pg_name = f"bench-ledger-{os.getpid()}"
        proc, url = start_postgres(pg_name, fresh=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "devices.csv"
            t0 = time.perf_counter()
            generate(path, args.rows, args.seed)
            size = path.stat().st_size / 1e6
            print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.1f}s ({size:.0f} MB)")
            # Only passed when asked, so the bench also runs an importer without the option.
            placing = {"place": False} if args.no_place else {}
            with psycopg.connect(url) as conn:
                upgrade(conn, models)
                conn.commit()
                with path.open(encoding="utf-8", newline="") as f:
                    # Client CPU (parse, validate, place, COPY encode) is what this process
                    # controls; wall time also counts PostgreSQL and whatever else runs.
                    cpu0 = time.process_time()
                    report = import_file(conn, f, "csv", models, actor="bench", **placing)
                    cpu = time.process_time() - cpu0
        print(f"import: {report.summary()}")
        print(f"import client CPU: {cpu:.1f} s = {cpu / max(report.rows, 1) * 1e6:.1f} µs/row")

        # tracemalloc counts exactly what the index keeps (RSS would also count
        # the driver's freed buffers); it slows the build, so time it separately.
        t0 = time.perf_counter()
        _build(url)
        built = time.perf_counter() - t0
        tracemalloc.start()
        index = _build(url)
        kept, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        n = len(index)
        print(
            f"index: {n:,} devices built in {built:.1f}s; {kept / n:.1f} B/device allocated "
            f"({index.memory_bytes() / n:.1f} B/device by its own count)"
        )
        with psycopg.connect(url) as conn:
            codes = [r[0] for r in conn.execute("select code from devices")]

        rng = random.Random(args.seed)
        probe = [codes[rng.randrange(n)] for _ in range(args.lookups)]
        t0 = time.perf_counter()
        for c in probe:
            index.get(c)
        single = args.lookups / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(0, len(probe), 1000):
            index.get_many(probe[i : i + 1000])
        batched = args.lookups / (time.perf_counter() - t0)
        print(f"lookups: {single:,.0f}/s one by one, {batched:,.0f}/s in batches of 1000")
        figures: dict[str, Any] = {
            "rows": report.rows,
            "import_rows_per_s": round(report.rows_per_second),
            "import_client_us_per_row": round(cpu / max(report.rows, 1) * 1e6, 1),
            "placed": not args.no_place,
            "index_bytes_per_device": round(index.memory_bytes() / n, 1),
            "lookups_per_s": round(single),
        }

        if args.compare_dict:
            tracemalloc.start()
            plain = {c: index.get(c) for c in codes}
            kept, _peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            t0 = time.perf_counter()
            for c in probe:
                plain.get(c)
            rate = args.lookups / (time.perf_counter() - t0)
            sample = next(iter(plain.values()))
            assert isinstance(sample, DeviceInfo)
            print(
                f"reference dict of DeviceInfo: {kept / n:.1f} B/device allocated (keys shared with the probe list), "
                f"{rate:,.0f} lookups/s"
            )
    finally:
        if proc is not None:
            proc.stop()
            drop_pg(pg_name)
    return figures


if __name__ == "__main__":
    main()
