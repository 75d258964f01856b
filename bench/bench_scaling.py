"""Throughput with 1, 2 and 4 stream workers (and as many ``citybrain.raw`` partitions).

One set of servers (PostgreSQL, the Kafka-protocol broker, Mosquitto when installed)
serves every step; each step starts a fresh platform on new topics with ``k``
partitions and ``k`` stream worker processes, warms it up (one message per device,
so the consumer group has settled), then publishes ``--messages`` QoS 1 messages and
times them until all are stored. Besides wall-clock msg/s, the CPU seconds the
gateway and the workers spent are read from ``/proc``: on a shared machine
msg per CPU-second is the steadier figure, and the one sizing needs (per core).

The readings bridge to MQTT is off here, as at city scale
(``CITYBRAIN_GATEWAY_BRIDGE_READINGS=false``). On a 2-core machine every step
shares the same two cores with the publisher, the broker and PostgreSQL, so
wall-clock throughput cannot grow much past 2 workers; the per-worker CPU cost
shows whether the pipeline itself scales. Nothing is asserted.

Run: ``python -m bench.bench_scaling --messages 4000 --workers 1,2``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench._common import drop_pg, mqtt_broker_url, publish_qos1, telemetry_messages
from citybrain.harness import ManagedProcess, Services, free_port, spawn
from citybrain.kafka_compat import install_empty_fetch_backoff
from core.procstat import cpu_seconds

__all__ = ["main", "run_step"]

DEVICES = 100


def _wait_stored(url: str, since: datetime, until: datetime, want: int, stall_s: float = 30.0) -> int:
    stored, last_change = 0, time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        while stored < want and time.monotonic() - last_change < stall_s:
            row = conn.execute(
                "select count(*) from readings_air where ts >= %s and ts < %s", (since, until)
            ).fetchone()
            now = int(row[0]) if row else 0
            if now != stored:
                stored, last_change = now, time.monotonic()
            time.sleep(0.1)
    return stored


def run_step(svc: Services, root: Path, workers: int, messages: int, base: datetime) -> dict[str, Any]:
    """One platform with ``workers`` partitions and worker processes; returns its figures."""
    from citybrain.platform import Platform, demo_device_codes
    from citybrain.settings import Settings

    assert svc.database_url and svc.kafka_bootstrap and svc.mqtt
    data = root / f"workers-{workers}"
    settings = Settings(
        database_url=svc.database_url,
        kafka_bootstrap=svc.kafka_bootstrap,
        mqtt_url=svc.mqtt_url,
        data_dir=data,
        topic_prefix=f"scale{workers}{uuid.uuid4().hex[:6]}",
        partitions=workers,
        api_port=0,
        log_level="WARNING",
        # Few device codes carry the whole load, each far above its model cadence:
        # the gateway's per-device flood limit would drop most of it.
        gateway_flood_factor=0,
        gateway_bridge_readings=False,
    )
    platform = Platform.from_settings(settings, data_dir=data)
    platform.start(simulate=False, devices=DEVICES, progress=False)
    try:
        env = platform.env()
        for i in range(2, workers + 1):
            port = free_port()
            # Each worker its own data dir: Faust keeps per-process table state under it.
            wdata = data / f"worker-{i}"
            wdata.mkdir(parents=True, exist_ok=True)
            wenv = env | {"CITYBRAIN_DATA_DIR": str(wdata)}
            proc = spawn(
                f"worker-{i}",
                [sys.executable, "-m", "citybrain.cli", "worker", "--web-port", str(port)],
                platform.log_dir / f"worker-{i}.log",
                env=wenv,
            )
            platform.processes.append(proc)
            platform.wait_http(f"http://127.0.0.1:{port}/healthz", f"stream worker {i}", 90)
        codes = demo_device_codes(DEVICES)
        url = svc.database_url
        # Warm-up: one message per device through every partition, so the group has settled.
        warm = telemetry_messages(codes, base - timedelta(minutes=5), 1)
        publish_qos1(svc.mqtt, warm, connections=2)
        _wait_stored(url, base - timedelta(minutes=5), base, len(warm), stall_s=60)
        time.sleep(1.0)
        steps = max(1, messages // DEVICES)
        items = telemetry_messages(codes, base, steps)
        until = base + timedelta(seconds=steps)
        procs: list[ManagedProcess] = [p for p in platform.processes if p.name == "gateway" or "worker" in p.name]
        cpu0 = {p.name: cpu_seconds(p.pid) for p in procs}
        t0 = time.perf_counter()
        publish_qos1(svc.mqtt, items, connections=4)
        stored = _wait_stored(url, base, until, len(items))
        dt = time.perf_counter() - t0
        cpu = {p.name: cpu_seconds(p.pid) - cpu0[p.name] for p in procs}
        worker_cpu = sum(v for k, v in cpu.items() if "worker" in k)
        return {
            "workers": workers,
            "partitions": workers,
            "messages": len(items),
            "stored": stored,
            "seconds": round(dt, 2),
            "msg_per_s": round(stored / dt),
            "worker_cpu_s": round(worker_cpu, 1),
            "msg_per_worker_cpu_s": round(stored / worker_cpu) if worker_cpu else None,
            "gateway_cpu_s": round(cpu.get("gateway", 0.0), 1),
            "msg_per_gateway_cpu_s": round(stored / cpu["gateway"]) if cpu.get("gateway") else None,
        }
    finally:
        platform.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.bench_scaling", description=__doc__)
    parser.add_argument("--messages", type=int, default=int(os.environ.get("CITYBRAIN_BENCH_SCALING_MESSAGES", "6000")))
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    args = parser.parse_args(argv)
    install_empty_fetch_backoff(0.05)
    root = Path(tempfile.mkdtemp(prefix="citybrain-bench-scale-"))
    extra: list[ManagedProcess] = []
    mqtt_url = mqtt_broker_url(root, extra)
    results: dict[str, Any] = {}
    try:
        with Services(root / "servers", pg_name=f"bench-scale-{os.getpid()}", mqtt_url=mqtt_url) as svc:
            svc.start()
            now = datetime.now(UTC).replace(microsecond=0)
            for j, k in enumerate(int(x) for x in args.workers.split(",")):
                # Each step its own hour of event time, so counts never mix.
                base = now - timedelta(hours=3 - j)
                print(f"scaling: {k} worker(s), {k} partition(s)…", flush=True)
                res = run_step(svc, root, k, args.messages, base)
                results[f"workers_{k}"] = res
                print(", ".join(f"{a}={b}" for a, b in res.items()), flush=True)
        drop_pg(svc.pg_name)
    finally:
        for p in extra:
            p.stop()
        shutil.rmtree(root, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
