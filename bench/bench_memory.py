"""Memory per registered device, for 100k and 1M devices: the ledger and the in-process caches.

* **ledger (PostgreSQL)**: ``pg_total_relation_size('devices')`` (heap, TOAST and every
  index the migrations create) after ``VACUUM ANALYZE``, divided by the device count.
  Rows are realistic: a mix of classes over the six districts, a name, a location,
  a grid cell, manhole attributes, and both credential hashes (device secret and the
  Mosquitto PBKDF2 line), because every production device has them.
* **stream worker enrichment cache**: the :class:`devices.index.DeviceIndex` each worker
  keeps (code → model, class, district, grid, state, attributes), built from the ledger
  as the worker builds it; measured with ``tracemalloc`` (what the index keeps, not the
  driver's transient buffers) and as the process RSS delta.
* **gateway**: it keeps no per-device lookup (the device code is in the topic and the
  ledger is consulted by the workers), only its flood limiter's map, which holds
  devices whose bucket is not full again (``ingest.throttle``) — measured here
  for every device at once, its worst case.

Rows are generated in Python and COPied (the importer's rate is bench_ledger's subject).
Run: ``python -m bench.bench_memory --devices 100000,1000000``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import time
import tracemalloc
from typing import Any

import psycopg

from bench._common import drop_pg
from citybrain.harness import start_postgres
from citybrain.migrations import upgrade
from devices.code import XIAMEN_DISTRICTS, DeviceCode
from devices.index import DeviceIndex, IndexBuilder
from devices.models import shipped_models

__all__ = ["main"]

# (class code, model, class) of a city roll-out: mostly manhole covers and poles.
MIX = [
    ("0102", "manhole-cover@1", "manhole", 7),
    ("0701", "smart-pole@1", "pole", 2),
    ("0308", "air-micro@1", "air", 1),
]


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fill(url: str, start: int, stop: int, seed: int) -> None:
    """COPY devices ``start`` … ``stop - 1`` into the ledger."""
    rng = random.Random(seed + start)
    districts = sorted(XIAMEN_DISTRICTS)
    weighted = [(c, m, k) for c, m, k, w in MIX for _ in range(w)]
    cols = (
        "code, alias, model, device_class, name, district, grid, lon, lat, state, attributes,"
        " secret_hash, mosquitto_hash, owner_unit, install_date"
    )
    with psycopg.connect(url) as conn, conn.cursor() as cur, cur.copy(f"copy devices ({cols}) from stdin") as cp:
        for i in range(start, stop):
            d = districts[i % len(districts)]
            cls, model, klass = weighted[rng.randrange(len(weighted))]
            code = DeviceCode.build(d, cls, 1 + i // len(districts))
            attrs = {"depth_m": rng.choice([1.5, 2.0, 3.0])} if klass == "manhole" else {}
            cp.write_row(
                (
                    code.full,
                    code.body,
                    model,
                    klass,
                    f"{cls}-{i}",
                    d,
                    f"{d}{rng.randrange(2000):06d}",
                    118.0 + rng.random() * 0.4,
                    24.4 + rng.random() * 0.4,
                    "active",
                    json.dumps(attrs),
                    "$argon2id$v=19$m=65536,t=3,p=4$" + "x" * 22 + "$" + "y" * 43,
                    "$7$101$" + "a" * 16 + "$" + "b" * 88,
                    "市政园林局",
                    "2026-01-15",
                )
            )


def _index(url: str, limit: int | None = None, *, trace: bool = True) -> tuple[DeviceIndex, float | None, int]:
    """Build the worker's index from the ledger; returns it, tracemalloc bytes kept (if traced), RSS delta.

    tracemalloc slows every allocation several times over, so the larger sizes are
    built untraced: the index's own count (``memory_bytes``) agrees with tracemalloc
    within a few percent where both are measured.
    """
    gc.collect()
    rss0 = _rss()
    if trace:
        tracemalloc.start()
    builder = IndexBuilder()
    query = "select code, model, device_class, district, grid, state, attributes from devices"
    with psycopg.connect(url) as conn, conn.transaction():
        cur = conn.cursor(name="bench_memory")
        cur.itersize = 50_000
        cur.execute(query + (f" limit {int(limit)}" if limit else ""))
        for row in cur:
            builder.add(row)
    index = builder.finish()
    del builder
    gc.collect()
    kept: float | None = None
    if trace:
        kept, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return index, kept, _rss() - rss0


def _throttle_bytes(codes: list[str]) -> float:
    """Bytes per device of the gateway's flood limiter with every device in its map."""
    from ingest.throttle import DeviceThrottle, ThrottleConfig, profiles_for

    cfg = ThrottleConfig(factor=100.0, burst=120, window_s=60.0, max_devices=len(codes) + 1)
    profiles, default = profiles_for(shipped_models().all(), cfg)
    throttle = DeviceThrottle(profiles, default, max_devices=cfg.max_devices)
    gc.collect()
    tracemalloc.start()
    for code in codes:
        throttle.admit(code)
    kept, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return kept / len(codes)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.bench_memory", description=__doc__)
    parser.add_argument(
        "--devices",
        default=os.environ.get("CITYBRAIN_BENCH_MEMORY_DEVICES", "100000,1000000"),
        help="comma-separated ledger sizes, ascending",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    sizes = sorted(int(x) for x in args.devices.split(","))
    pg_name = f"bench-memory-{os.getpid()}"
    proc, url = start_postgres(pg_name, fresh=True)
    results: dict[str, Any] = {}
    try:
        with psycopg.connect(url) as conn:
            upgrade(conn, shipped_models())
            conn.commit()
        have = 0
        for n in sizes:
            t0 = time.perf_counter()
            _fill(url, have, n, args.seed)
            have = n
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("vacuum analyze devices")
                row = conn.execute(
                    "select pg_total_relation_size('devices'), pg_relation_size('devices'),"
                    " pg_indexes_size('devices'), count(*) from devices"
                ).fetchone()
            assert row is not None
            total, heap, indexes, count = (int(x) for x in row)
            filled = time.perf_counter() - t0
            first = n == sizes[0]
            if first:
                # Warm-up: the first build also allocates one-off things (driver type
                # caches, interned model names) that are not per device.
                _index(url, limit=1000)
            index, kept, rss = _index(url, trace=first)
            res: dict[str, Any] = {
                "devices": count,
                "ledger_pg_b_per_device": round(total / count),
                "ledger_heap_b": round(heap / count),
                "ledger_indexes_b": round(indexes / count),
                "worker_index_b_per_device": round(kept / len(index), 1) if kept is not None else None,
                "worker_index_own_count_b_per_device": round(index.memory_bytes() / len(index), 1),
                # RSS growth includes the build's transient peak (cursor pages, builder arrays)
                # that the allocator keeps: an upper bound, not what stays in use.
                "worker_index_rss_b_per_device": round(rss / len(index), 1),
                "fill_seconds": round(filled, 1),
            }
            del index
            try:
                if first:
                    # Per device and traced: one size is enough (a map entry does not grow with n).
                    with psycopg.connect(url) as conn:
                        codes = [c for (c,) in conn.execute("select code from devices").fetchall()]
                    res["gateway_throttle_b_per_device"] = round(_throttle_bytes(codes), 1)
                    del codes
            except (ImportError, AttributeError, TypeError) as exc:  # the limiter's API is young; never fail here
                res["gateway_throttle_b_per_device"] = f"n/a ({exc.__class__.__name__})"
            results[f"devices_{n}"] = res
            print(", ".join(f"{k}={v}" for k, v in res.items()), flush=True)
    finally:
        proc.stop()
        drop_pg(pg_name)
    return results


if __name__ == "__main__":
    main()
