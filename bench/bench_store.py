"""Store throughput: the idempotent wide merge against a bare COPY.

Starts embedded PostgreSQL (``citybrain.harness.start_postgres``), or uses
``CITYBRAIN_DATABASE_URL`` when set, creates a scratch database, and prints
rows/s and metric values/s for:

* ``copy unlogged`` (text and binary): COPY into an unlogged table with the class table's
  columns, no key: the ceiling for getting bytes into PostgreSQL;
* ``merge new``: :class:`streams.store.ReadingStore` writing rows it has never
  seen (COPY into staging, ``insert … on conflict``, rollup dirty marks);
* ``merge replay``: the same rows again (every row conflicts and updates);
* ``merge + narrow``: one metric per row has no wide column, so it also goes
  to ``readings_extra``.

Run: ``.venv/bin/python -m bench.bench_store [--rows 100000] [--batch 5000]``.
It asserts nothing: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
from prometheus_client import CollectorRegistry
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from citybrain.harness import start_postgres
from citybrain.migrations import upgrade
from devices.models import ModelRegistry, shipped_models
from streams.normalise import Row
from streams.store import ReadingStore, StoreConfig, StoreMetrics


def _rows(n: int, metrics: list[str], now: datetime, seed: int = 1) -> list[Row]:
    rng = np.random.default_rng(seed)
    devices = [f"350206030800{i:05d}" for i in range(max(1, n // 60))]
    values = rng.gamma(4.0, 10.0, size=(n, len(metrics))).round(3)
    # Recent event times (the day before ``now``), well inside retention whatever the date.
    t0 = (now - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    for i in range(n):
        t = t0 + timedelta(seconds=60 * (i // len(devices)))
        out.append(Row(devices[i % len(devices)], t, t, dict(zip(metrics, values[i].tolist(), strict=True)), {}, 0))
    return out


async def _timed(fn: Callable[[], Awaitable[None]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return time.perf_counter() - t0


async def _run(url: str, models: ModelRegistry, n: int, batch: int, now: datetime) -> list[tuple[str, int, int, float]]:
    metrics = models.metrics_of_class("air")
    rows = _rows(n, metrics, now)
    results: list[tuple[str, int, int, float]] = []
    pool = AsyncConnectionPool(url, min_size=1, max_size=2, open=False)
    await pool.open(wait=True)
    try:
        async with pool.connection() as conn:
            await conn.execute("create unlogged table bench_copy (like readings_air)")
            await conn.commit()

        async def copy_unlogged(binary: bool) -> None:
            async with pool.connection() as conn, conn.cursor() as cur:
                cols = ["device_code", "ts", "rx", "quality", "flags", *metrics]
                fmt = sql.SQL(" (format binary)") if binary else sql.SQL("")
                for i in range(0, n, batch):
                    async with conn.transaction():
                        stmt = sql.SQL("copy bench_copy ({}) from stdin{}").format(
                            sql.SQL(", ").join(map(sql.Identifier, cols)), fmt
                        )
                        async with cur.copy(stmt) as copy:
                            if binary:
                                copy.set_types(
                                    ["text", "timestamptz", "timestamptz", "int2", "jsonb"] + ["float8"] * len(metrics)
                                )
                            for r in rows[i : i + batch]:
                                await copy.write_row(
                                    (
                                        r.device_code,
                                        r.event_time,
                                        r.received_at,
                                        r.quality,
                                        None,
                                        *(r.values[m] for m in metrics),
                                    )
                                )

        store = ReadingStore(pool, models, StoreMetrics(CollectorRegistry()), StoreConfig(batch_rows=batch))

        async def merge() -> None:
            for i in range(0, n, batch):
                store.add("air", rows[i : i + batch])
                await store.flush()

        results.append(("copy unlogged (text)", n, n * len(metrics), await _timed(lambda: copy_unlogged(False))))
        results.append(("copy unlogged (binary)", n, n * len(metrics), await _timed(lambda: copy_unlogged(True))))
        await merge()  # warm the partitions and staging tables on a throwaway pass
        async with pool.connection() as conn:
            await conn.execute("truncate readings_air, rollup_dirty")
        results.append(("merge new", n, n * len(metrics), await _timed(merge)))
        results.append(("merge replay", n, n * len(metrics), await _timed(merge)))
        async with pool.connection() as conn:
            await conn.execute("truncate readings_air, rollup_dirty")
            await conn.execute("alter table readings_air drop column wind_direction")
        narrow = ReadingStore(pool, models, StoreMetrics(CollectorRegistry()), StoreConfig(batch_rows=batch))

        async def merge_narrow() -> None:
            for i in range(0, n, batch):
                narrow.add("air", rows[i : i + batch])
                await narrow.flush()

        results.append(("merge + narrow (1 metric)", n, n * len(metrics), await _timed(merge_narrow)))
    finally:
        await pool.close()
    return results


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Print (and return, for ``make bench``'s summary) rows/s and values/s of each store path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=5000, help="rows per flush (StoreConfig.batch_rows)")
    args = parser.parse_args(argv)
    server = os.environ.get("CITYBRAIN_DATABASE_URL")
    proc = None
    if not server:
        proc, server = start_postgres("bench")
    name = f"cb_bench_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        p = urlsplit(server)
        url = urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))
        models = shipped_models()
        with psycopg.connect(url) as conn:
            upgrade(conn, models)
        results = asyncio.run(_run(url, models, args.rows, args.batch, datetime.now(UTC)))
        print(f"\nstore throughput, {args.rows} rows of class air, {args.batch} rows per flush\n")
        print(f"{'path':<28}{'rows/s':>12}{'values/s':>14}{'seconds':>10}")
        for label, rows, values, secs in results:
            print(f"{label:<28}{rows / secs:>12,.0f}{values / secs:>14,.0f}{secs:>10.2f}")
        base = results[1][3]
        print(
            "\ntime relative to binary COPY into an unlogged table: "
            + ", ".join(f"{lbl} {s / base:.1f}x" for lbl, _, _, s in results[2:])
        )
        return {
            label: {
                "rows": rows,
                "rows_per_s": round(rows / secs),
                "values_per_s": round(values / secs),
                "seconds": round(secs, 2),
                "x_binary_copy": round(secs / base, 2),
            }
            for label, rows, values, secs in results
        }
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        if proc is not None:
            proc.stop()


if __name__ == "__main__":
    main()
