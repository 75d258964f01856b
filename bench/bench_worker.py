"""The stream worker's own cost per message on city-like traffic, in one process.

What ``e2e_city`` measures through MQTT, the gateway and Faust, this measures on
the pipeline alone, so a profiler sees only the worker's work and a change can be
judged in seconds: :class:`streams.pipeline.Pipeline` exactly as ``citybrain
worker`` builds it (shipped rules and anomaly detectors, graded views, the debug
ring on demand with ``--debugged`` devices captured, retention), on embedded
PostgreSQL (fsync on) and noida-db, publishing with aiokafka (acks=all, as Faust's
producer).

City-like: ``--devices`` air stations (20,000), each sends one message (6 metrics)
per round, five minutes of event time apart; gateway records of ``--record``
messages (500, as the gateway packs them), ``--records`` records per worker batch.
Round 1 is the warm-up (activation of every device, first state rows, partitions);
the next ``--rounds`` are measured. Before it, every device's detector state is seeded
with ``--history`` minutes of samples (90 by default: robust_z's window is full and
every chart past its warm-up), so the rounds cost what a worker's steady state costs,
not a fresh deployment's with near-empty windows. Figures: messages per CPU-second of this process
(the worker's share: decoding, normalising, rules, detectors, psycopg and aiokafka
client work), PostgreSQL's CPU-seconds for the same rounds, and wall time.

Run: ``.venv/bin/python -m bench.bench_worker [--devices 20000] [--rounds 2]``; profile
with ``py-spy record -r 200 -f raw -o worker.txt -- .venv/bin/python -m bench.bench_worker``.
It asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.anomaly.config import AnomalyConfig, shipped_anomaly_config
from alerts.anomaly.stream import SeriesDevice, evaluate_anomalies, peer_entry
from alerts.rules import shipped_rules
from bench._common import drop_pg
from citybrain.harness import start_kafka, start_postgres
from citybrain.migrations import upgrade
from citybrain.platform import demo_device_codes, register_demo_devices
from core.jsonio import dumps_text
from core.procstat import cpu_seconds
from core.records import RawMessage, Transport
from core.topics import KafkaTopics
from devices.models import shipped_models
from ingest.adapters.json.codec import encode
from ingest.batch import encode_batch
from streams.app import tune_gc
from streams.debug import VIEW_CAPTURE, Capture, start_capture
from streams.pipeline import Pipeline, PipelineConfig, PipelineMetrics
from streams.store import ReadingStore, StoreMetrics

__all__ = ["main"]


def city_records(codes: list[str], t: datetime, per_record: int, seed: int) -> list[bytes]:
    """One message per device at event time ``t``, packed ``per_record`` to a raw-topic record."""
    out = []
    for start in range(0, len(codes), per_record):
        msgs = []
        for k, code in enumerate(codes[start : start + per_record]):
            i = start + k + seed
            metrics = {
                "pm25": 20.0 + i % 17,
                "pm10": 40.0 + i % 23,
                "no2": 30.0 + i % 11,
                "co": 0.6,
                "o3": 60.0 + i % 13,
                "so2": 8.0,
            }
            msgs.append(
                RawMessage(
                    f"citybrain/up/{code}/telemetry", encode(t, metrics), t + timedelta(seconds=1), Transport.MQTT, code
                )
            )
        out.append(encode_batch(msgs))
    return out


def seed_history(url: str, codes: list[str], config: AnomalyConfig, before: datetime, minutes: int) -> None:
    """Give every device the detector state of ``minutes`` one-minute samples ending before ``before``.

    One device's history is computed with the production detectors and copied to all
    (the device code is not part of the state), in one statement.
    """
    if minutes <= 0:
        return
    dev = SeriesDevice(codes[0], codes[0][:6], "air", "air-station")
    states: dict[str, dict[str, Any]] = {}
    for m in range(minutes):
        t = before - timedelta(minutes=minutes - m)
        values = {"pm25": 25.0, "pm10": 45.0, "no2": 30.0, "co": 0.6, "o3": 60.0, "so2": 8.0}
        wobble = 1 + 0.05 * ((m * 7) % 5 - 2)  # a small deterministic variation: the charts have a variance
        evaluate_anomalies(config, [(dev, k, t, v * wobble) for k, v in values.items()], states)
    doc = states[dev.code]
    with psycopg.connect(url) as conn:
        conn.execute(
            "insert into anomaly_state (device_code, states, peers, version)"
            " select c, %s::json, %s::jsonb, 1 from unnest(%s::text[]) as u(c)",
            (dumps_text(doc), dumps_text(peer_entry(doc)), codes),
        )


async def _run(url: str, bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    models = shipped_models()
    codes = demo_device_codes(args.devices)
    t0 = time.perf_counter()
    register_demo_devices(url, codes)
    print(f"registered {len(codes):,} devices in {time.perf_counter() - t0:.1f}s", flush=True)
    prefix = f"bw{uuid.uuid4().hex[:6]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    pool = AsyncConnectionPool(url, min_size=1, max_size=4, open=False)
    await pool.open(wait=True)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(minutes=5 * (args.rounds + 1))
    t0 = time.perf_counter()
    seed_history(url, codes, shipped_anomaly_config(), start, args.history)
    print(f"seeded {args.history} minutes of detector history in {time.perf_counter() - t0:.1f}s", flush=True)
    async with pool.connection() as aconn:
        # A few integrators each have a device's debug view open (on demand capture).
        debugged = codes[:: max(1, len(codes) // max(1, args.debugged))][: args.debugged]
        await start_capture(aconn, debugged, now + VIEW_CAPTURE, "bench")

    async def publish(topic: str, key: bytes | None, value: bytes, headers: Any = None) -> None:
        await producer.send(topic, value, key=key, headers=list(headers or []))

    reg = CollectorRegistry()
    store = ReadingStore(pool, models, StoreMetrics(reg))
    pipe = Pipeline(
        PipelineConfig(
            topics=KafkaTopics(prefix),
            rules=shipped_rules(),
            anomaly=shipped_anomaly_config(),
            retention_days=180,
            debug_capture=Capture(args.debug),
        ),
        pool,
        models,
        publish,
        PipelineMetrics(reg),
        store,
        clock=lambda: now,
        flush_producer=producer.flush,
    )
    await pipe.refresh_index(force=True)
    rounds = [city_records(codes, start + timedelta(minutes=5 * r), args.record, r) for r in range(args.rounds + 1)]
    per_batch = args.records
    try:
        for r, records in enumerate(rounds):
            if r == 1:
                await producer.flush()
                cpu0, pg0, wall0 = time.process_time(), _pg_cpu(url), time.perf_counter()
            for i in range(0, len(records), per_batch):
                await pipe.process(records[i : i + per_batch])
            await producer.flush()
            print(f"round {r} done ({'warm-up' if r == 0 else 'measured'})", flush=True)
        cpu, pg, wall = time.process_time() - cpu0, _pg_cpu(url) - pg0, time.perf_counter() - wall0
    finally:
        await pool.close()
        await producer.stop()
    n = args.devices * args.rounds
    with psycopg.connect(url) as conn:
        stored = conn.execute("select count(*) from readings_air").fetchone()[0]  # type: ignore[index]
    return {
        "devices": args.devices,
        "history_min": args.history,
        "debug_capture": args.debug,
        "messages": n,
        "messages_per_batch": args.record * per_batch,
        "stored_rows": stored,
        "worker_cpu_s": round(cpu, 2),
        "postgres_cpu_s": round(pg, 2),
        "wall_s": round(wall, 2),
        "msg_per_worker_cpu_s": round(n / cpu),
        "msg_per_postgres_cpu_s": round(n / pg) if pg else None,
        "worker_us_per_msg": round(cpu / n * 1e6, 1),
    }


def _pg_cpu(url: str) -> float:
    """CPU seconds of every PostgreSQL process of the server (backends, walwriter, checkpointer…)."""
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [r[0] for r in conn.execute("select pid from pg_stat_activity").fetchall()]
    return sum(cpu_seconds(p) for p in pids)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns ``{"results": {"worker_city": {...}}}`` for the summary."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=20_000, help="registered devices, one message each per round")
    ap.add_argument("--rounds", type=int, default=2, help="measured rounds after the warm-up round")
    ap.add_argument("--record", type=int, default=500, help="messages per raw-topic record (gateway batch)")
    ap.add_argument("--records", type=int, default=4, help="raw-topic records per worker batch")
    ap.add_argument(
        "--debug",
        choices=[c.value for c in Capture],
        default=Capture.ON_DEMAND.value,
        help="whose messages the debug ring keeps (CITYBRAIN_DEBUG_CAPTURE; all: every device, as before 0433)",
    )
    ap.add_argument(
        "--debugged", type=int, default=20, help="devices being debugged (a capture row each) with --debug on_demand"
    )
    ap.add_argument(
        "--history", type=int, default=90, help="minutes of detector history seeded per device (0: fresh state)"
    )
    args = ap.parse_args(argv)
    tune_gc()  # as citybrain worker does
    pg_name = f"bench-worker-{os.getpid()}"
    pg_proc, url = start_postgres(pg_name, fresh=True)
    with tempfile.TemporaryDirectory() as tmp:
        kafka_proc, bootstrap = start_kafka(Path(tmp) / "kafka")
        try:
            with psycopg.connect(url) as conn:
                upgrade(conn, shipped_models())
                conn.commit()
            res = asyncio.run(_run(url, bootstrap, args))
        finally:
            kafka_proc.stop()
            pg_proc.stop()
            drop_pg(pg_name)
    print(", ".join(f"{k}={v}" for k, v in res.items()), flush=True)
    return {"results": {"worker_city": res}}


if __name__ == "__main__":
    main()
