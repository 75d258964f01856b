"""Ledger benchmark: bulk-import rate, index memory per device, lookups per second.

    .venv/bin/python -m bench.bench_ledger --rows 1000000

Generates ``--rows`` devices (seeded) as a CSV file, imports it into
PostgreSQL with :func:`devices.importer.import_file` (an embedded server
started by the harness unless ``--database-url`` is given), then builds the
compact :class:`devices.ledger.DeviceIndex` from the ledger and measures its
memory and lookup rate. With ``--compare-dict``, also a plain dict of
:class:`DeviceInfo` for reference.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
import time
import tracemalloc
from pathlib import Path

import psycopg

from citybrain.harness import start_postgres
from citybrain.migrations import upgrade
from devices.code import XIAMEN_DISTRICTS, DeviceCode
from devices.importer import import_file
from devices.ledger import DeviceIndex, DeviceInfo, IndexBuilder
from devices.models import shipped_models

# (class code, model) mix of a city roll-out: mostly manhole covers and poles.
MIX = [("0102", "manhole-cover", 4), ("0103", "manhole-cover", 3), ("0701", "smart-pole", 2), ("0308", "air-micro", 1)]


def generate(path: Path, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    districts = sorted(XIAMEN_DISTRICTS)
    weighted = [(c, m) for c, m, w in MIX for _ in range(w)]
    seq: dict[tuple[str, str], int] = {}
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["code", "model", "name", "lon", "lat", "grid", "attributes"])
        for i in range(rows):
            d = districts[i % len(districts)]
            cls, model = weighted[rng.randrange(len(weighted))]
            n = seq[(d, cls)] = seq.get((d, cls), 0) + 1
            # ~3,600 单元网格 per district: streets × communities × grids of a real city.
            grid = f"{d}{rng.randrange(1, 10):03d}{rng.randrange(1, 21):03d}{rng.randrange(1, 21):03d}"
            attrs = json.dumps({"depth_m": rng.choice([1.5, 2.0, 3.0])}) if model == "manhole-cover" else ""
            w.writerow(
                [
                    DeviceCode.build(d, cls, n).full,
                    model,
                    f"{cls}-{i}",
                    f"{rng.uniform(117.95, 118.4):.6f}",
                    f"{rng.uniform(24.42, 24.9):.6f}",
                    grid,
                    attrs,
                ]
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--database-url", default=None, help="default: start an embedded PostgreSQL")
    parser.add_argument("--compare-dict", action="store_true", help="also measure a dict of DeviceInfo")
    args = parser.parse_args(argv)

    models = shipped_models()
    proc = None
    url = args.database_url
    if url is None:
        proc, url = start_postgres("bench-ledger", fresh=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "devices.csv"
            t0 = time.perf_counter()
            generate(path, args.rows, args.seed)
            size = path.stat().st_size / 1e6
            print(f"generated {args.rows:,} rows in {time.perf_counter() - t0:.1f}s ({size:.0f} MB)")
            with psycopg.connect(url) as conn:
                upgrade(conn, models)
                conn.commit()
                with path.open(encoding="utf-8", newline="") as f:
                    report = import_file(conn, f, "csv", models, actor="bench")
        print(f"import: {report.summary()}")

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


if __name__ == "__main__":
    main()
