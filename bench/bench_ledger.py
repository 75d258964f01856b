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
import asyncio
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
from core.procstat import cpu_seconds
from devices.code import XIAMEN_DISTRICTS, DeviceCode
from devices.importer import import_file
from devices.index import DeviceIndex, DeviceInfo, IndexBuilder
from devices.ledger import IndexFeed
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


def _fill(url: str, rows: int, seed: int) -> None:
    """COPY ``rows`` more devices into the ledger (codes from sequence 500,000 up), to size it for the index."""
    rng = random.Random(seed + 1)
    districts = sorted(XIAMEN_DISTRICTS)
    with psycopg.connect(url) as conn:
        kinds = conn.execute(
            "select distinct on (substr(code, 7, 4)) substr(code, 7, 4), model, device_class from devices"
        ).fetchall()
        seq: dict[tuple[str, str], int] = {}
        with (
            conn.cursor() as cur,
            cur.copy(
                "copy devices (code, alias, model, device_class, district, grid, attributes, name) from stdin"
            ) as copy,
        ):
            for i in range(rows):
                d = districts[i % len(districts)]
                cls, model, device_class = kinds[rng.randrange(len(kinds))]
                n = seq[(d, cls)] = seq.get((d, cls), 500_000) + 1
                code = DeviceCode.build(d, cls, n)
                attrs = json.dumps({"depth_m": rng.choice([1.5, 2.0, 3.0])}) if i % 2 else "{}"
                copy.write_row((code.full, code.body, model, device_class, d, f"{d}{i % 997:09d}", attrs, ""))
        conn.commit()
        conn.execute("analyze devices")
        conn.commit()


def _build(url: str) -> DeviceIndex:
    builder = IndexBuilder()
    with psycopg.connect(url) as conn, conn.transaction():
        cur = conn.cursor(name="bench_index")
        cur.itersize = 50_000
        cur.execute("select code, model, device_class, district, grid, state, attributes from devices")
        for row in cur:
            builder.add(row)
    return builder.finish()


async def _feed(url: str, codes: list[str], seed: int, deltas: list[int]) -> dict[str, Any]:
    """Full load through the change feed, then the time of a refresh after N changed devices."""
    from psycopg_pool import AsyncConnectionPool

    out: dict[str, Any] = {}
    rng = random.Random(seed)
    async with AsyncConnectionPool(url, min_size=1, max_size=2) as pool:
        feed = IndexFeed(pool)
        t0 = time.perf_counter()
        await feed.load()
        out["index_feed_load_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        await feed.refresh()
        out["index_refresh_0_ms"] = round((time.perf_counter() - t0) * 1e3, 1)
        for k, n in enumerate(deltas):
            changed = rng.sample(codes, min(n, len(codes)))
            state = "suspended" if k % 2 == 0 else "active"
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("update devices set state = %s where code = any(%s)", (state, changed))
            t0 = time.perf_counter()
            applied = await feed.refresh()
            ms = (time.perf_counter() - t0) * 1e3
            out[f"index_refresh_{n}_ms"] = round(ms, 1)
            got = feed.index.get(changed[0])
            assert applied == len(changed) and got is not None and got.state == state, (applied, got)
            print(f"index refresh after {n:,} changed devices: {ms:,.1f} ms ({applied:,} applied)")
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print (and return, for ``make bench``'s summary) import rate, index memory, refresh and lookup rates."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--import-rows",
        type=int,
        default=None,
        help="rows imported through the importer (default: --rows); the rest are copied straight in",
    )
    parser.add_argument(
        "--deltas",
        default="10,1000,10000",
        type=lambda v: [int(x) for x in v.split(",") if x.strip()],
        help="changed devices per measured index refresh, comma-separated",
    )
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
            imported = min(args.rows, args.import_rows or args.rows)
            generate(path, imported, args.seed)
            size = path.stat().st_size / 1e6
            print(f"generated {imported:,} rows in {time.perf_counter() - t0:.1f}s ({size:.0f} MB)")
            # Only passed when asked, so the bench also runs an importer without the option.
            placing = {"place": False} if args.no_place else {}
            with psycopg.connect(url) as conn:
                upgrade(conn, models)
                conn.commit()
                backend = conn.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]
                conn.commit()
                with path.open(encoding="utf-8", newline="") as f:
                    # Client CPU (parse, validate, place, COPY encode) is what this process
                    # controls; wall time also counts PostgreSQL and whatever else runs on a
                    # shared machine, so the server's own CPU is counted too.
                    cpu0, server0 = time.process_time(), cpu_seconds(backend)
                    report = import_file(conn, f, "csv", models, actor="bench", **placing)
                    cpu, server = time.process_time() - cpu0, cpu_seconds(backend) - server0
        print(f"import: {report.summary()}")
        if args.rows > imported:
            t0 = time.perf_counter()
            _fill(url, args.rows - imported, args.seed)
            print(f"copied {args.rows - imported:,} more devices straight in: {time.perf_counter() - t0:.1f}s")
        per_cpu_s = report.rows / max(cpu + server, 1e-9)
        print(
            f"import CPU: client {cpu:.1f} s = {cpu / max(report.rows, 1) * 1e6:.1f} µs/row, "
            f"server {server:.1f} s = {server / max(report.rows, 1) * 1e6:.1f} µs/row; "
            f"{per_cpu_s:,.0f} rows per CPU-second (client + server)"
        )

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
            f"({index.memory_bytes() / n:.1f} B/device by its own count), "
            f"{kept / n * 18_300_000 / 2**20:,.0f} MB at 18.3M devices"
        )
        with psycopg.connect(url) as conn:
            codes = [r[0] for r in conn.execute("select code from devices")]
        feed_figures = asyncio.run(_feed(url, codes, args.seed, args.deltas))
        per_device = kept / n

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
            "import_client_s": round(cpu, 1),
            "import_server_s": round(server, 1),
            "import_rows_per_cpu_s": round(per_cpu_s),
            "index_devices": n,
            "index_full_build_s": round(built, 2),
            # tracemalloc: what the index keeps, interned tables included.
            "index_bytes_per_device": round(per_device, 1),
            "index_mb_at_18_3m": round(per_device * 18_300_000 / 2**20),
            **feed_figures,
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
    # Rows of the summary table (python -m bench): the import, and the index and its feed.
    import_keys = (
        "rows",
        "import_rows_per_s",
        "import_client_us_per_row",
        "placed",
        "import_client_s",
        "import_server_s",
        "import_rows_per_cpu_s",
    )
    return {
        "results": {
            "ledger_import": {k.removeprefix("import_"): figures[k] for k in import_keys},
            "ledger_index": {k: v for k, v in figures.items() if k not in import_keys},
        }
    }


if __name__ == "__main__":
    main()
