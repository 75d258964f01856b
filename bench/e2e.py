"""End-to-end and side-by-side throughput, on the servers the harness starts.

Figures (printed as a table, written as JSON to bench/results/; nothing asserted):

* ``mqtt_qos1_pubsub``: bare MQTT QoS 1, paho publisher → paho subscriber.
* ``kafka_produce``: raw aiokafka produce (acks=all), 200-byte records.
* ``pg_copy``: raw PostgreSQL COPY of narrow rows into an unlogged table.
* ``naive_baseline``: paho subscriber → one INSERT per message (how many city
  projects are built), for comparison.
* ``e2e``: MQTT QoS 1 → gateway → Kafka → stream worker (normalise, COPY merge,
  rules) → stored, counted in PostgreSQL; messages/s and readings/s.
* ``latency``: on the same platform afterwards, p50/p95/p99 from device event time
  to stored and to the alert on the MQTT feed at a fixed offered load
  (:mod:`bench.bench_latency`; ``--rate`` / ``CITYBRAIN_BENCH_RATE``).

Run: ``python -m bench`` (all) or ``python -m bench.e2e --messages 20000 --rate 1000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench import bench_latency
from bench._common import (
    cpu_seconds,
    drop_pg,
    mqtt_broker_url,
    mqtt_client,
    platform_settings,
    publish_qos1,
    telemetry_messages,
)
from citybrain.harness import ManagedProcess, MqttEndpoint, Services
from citybrain.kafka_compat import install_empty_fetch_backoff

__all__ = ["main", "run_all"]


def bench_mqtt(ep: MqttEndpoint, n: int) -> dict[str, Any]:
    topic = f"bench/{uuid.uuid4().hex[:8]}"
    got = 0
    done = threading.Event()

    def on_msg(c: Any, u: Any, m: Any) -> None:
        nonlocal got
        got += 1
        if got >= n:
            done.set()

    sub = mqtt_client(ep)
    sub.on_message = on_msg
    sub.subscribe(topic, qos=1)
    time.sleep(0.5)
    payload = b"x" * 200
    t0 = time.perf_counter()
    publish_qos1(ep, [(topic, payload)] * n, connections=1)
    done.wait(120)
    dt = time.perf_counter() - t0
    sub.loop_stop()
    sub.disconnect()
    return {"messages": got, "seconds": round(dt, 2), "msg_per_s": round(got / dt)}


async def _kafka(bootstrap: str, n: int) -> dict[str, Any]:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await p.start()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    value = b"x" * 200
    try:
        t0 = time.perf_counter()
        futs = [await p.send(topic, value) for _ in range(n)]
        await asyncio.gather(*futs)
        dt = time.perf_counter() - t0
    finally:
        await p.stop()
    return {"records": n, "seconds": round(dt, 2), "records_per_s": round(n / dt)}


def bench_copy(url: str, n: int) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create unlogged table if not exists bench_copy (d text, m text, ts timestamptz, v float8)")
        conn.execute("truncate bench_copy")
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy("copy bench_copy (d, m, ts, v) from stdin") as cp:
            for i in range(n):
                cp.write_row((f"dev{i % 1000}", "pm25", now, float(i)))
        dt = time.perf_counter() - t0
        conn.execute("drop table bench_copy")
    return {"rows": n, "seconds": round(dt, 2), "rows_per_s": round(n / dt)}


def bench_naive(ep: MqttEndpoint, url: str, n: int) -> dict[str, Any]:
    """paho subscriber → one INSERT (autocommit) per message."""
    topic = f"bench/naive/{uuid.uuid4().hex[:8]}"
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("create table if not exists bench_naive (topic text, payload text, rx timestamptz)")
    got = 0
    done = threading.Event()

    def on_msg(c: Any, u: Any, m: Any) -> None:
        nonlocal got
        conn.execute("insert into bench_naive values (%s, %s, now())", (m.topic, m.payload.decode()))
        got += 1
        if got >= n:
            done.set()

    sub = mqtt_client(ep)
    sub.on_message = on_msg
    sub.subscribe(topic, qos=1)
    time.sleep(0.5)
    t0 = time.perf_counter()
    publish_qos1(ep, [(topic, b'{"v":1,"ts":0,"metrics":{"pm25":1}}')] * n, connections=1)
    done.wait(300)
    dt = time.perf_counter() - t0
    sub.loop_stop()
    sub.disconnect()
    conn.execute("drop table bench_naive")
    conn.close()
    return {"messages": got, "seconds": round(dt, 2), "msg_per_s": round(got / dt)}


def bench_e2e(
    data_dir: Path,
    n: int,
    devices: int,
    mqtt_url: str | None,
    *,
    latency_rates: tuple[int, ...] = (),
    latency_seconds: float = bench_latency.DEFAULT_SECONDS,
    latency_devices: int = 500,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Throughput, then latency at each offered load in ``latency_rates``, on one platform."""
    from citybrain.platform import Platform, demo_device_codes

    settings = platform_settings(data_dir, f"bench{uuid.uuid4().hex[:6]}", mqtt_url)
    platform = Platform.from_settings(settings, data_dir=data_dir)
    # The latency run's devices are registered too (the throughput run uses the first ones).
    registered = max(devices, latency_devices + bench_latency.PROBES * len(latency_rates))
    platform.start(simulate=False, devices=registered, progress=False)
    try:
        assert platform.services.mqtt and platform.services.database_url
        codes = demo_device_codes(devices)
        base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        items = telemetry_messages(codes, base, max(1, n // devices))
        total = len(items)
        gw_metrics = f"http://127.0.0.1:{platform.gateway_port}/metrics"
        forwarded0 = _forwarded(gw_metrics)
        gateway_s: list[float] = []

        def watch_gateway() -> None:
            # The gateway alone: MQTT QoS 1 in, Kafka-acknowledged batches out, PUBACK after.
            while time.perf_counter() - t0 < 600:
                if _forwarded(gw_metrics) - forwarded0 >= total:
                    gateway_s.append(time.perf_counter() - t0)
                    return
                time.sleep(0.05)

        # CPU seconds of the gateway and the worker: on a shared machine, msg per CPU-second
        # is the steadier figure, and the per-core one sizing needs (operations.md).
        cpu0 = {name: cpu_seconds(platform.process(name).pid) for name in ("gateway", "worker")}
        t0 = time.perf_counter()
        watcher = threading.Thread(target=watch_gateway, daemon=True)
        watcher.start()
        pub_s = publish_qos1(platform.services.mqtt, items, connections=4)
        url = platform.services.database_url
        stored = 0
        last_change = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                row = conn.execute("select count(*) from readings_air").fetchone()
                now_stored = int(row[0]) if row else 0
                if now_stored != stored:
                    stored, last_change = now_stored, time.monotonic()
                if stored >= total or time.monotonic() - last_change > 30:
                    break  # done, or stalled: report what arrived
                time.sleep(0.2)
            dt = time.perf_counter() - t0
        cpu = {name: cpu_seconds(platform.process(name).pid) - cpu0[name] for name in cpu0}
        watcher.join(5)
        latency = bench_latency.measure_all(
            platform.services.mqtt, url, demo_device_codes(registered), latency_rates, latency_seconds
        )
        return {
            "messages": total,
            "stored_rows": stored,
            "readings": stored * 6,
            "publish_seconds": round(pub_s, 2),
            "seconds": round(dt, 2),
            "msg_per_s": round(stored / dt),
            "readings_per_s": round(stored * 6 / dt),
            "gateway_msg_per_s": round(total / gateway_s[0]) if gateway_s else None,
            "msg_per_gateway_cpu_s": round(stored / cpu["gateway"]) if cpu["gateway"] else None,
            "msg_per_worker_cpu_s": round(stored / cpu["worker"]) if cpu["worker"] else None,
        }, latency
    finally:
        platform.stop()
        if settings.database_url is None:
            drop_pg(platform.services.pg_name)


def _forwarded(url: str) -> float:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("citybrain_gateway_messages_forwarded_total "):
                return float(line.split()[1])
    return 0.0


def _table(rows: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'benchmark':<22} result"]
    for name, res in rows.items():
        lines.append(f"{name:<22} " + ", ".join(f"{k}={v}" for k, v in res.items()))
    return "\n".join(lines)


def run_all(
    messages: int,
    out_dir: Path | None,
    *,
    rates: tuple[int, ...] = bench_latency.DEFAULT_RATES,
    latency_seconds: float = bench_latency.DEFAULT_SECONDS,
) -> dict[str, Any]:
    """Every side-by-side figure, the platform's throughput and its latency; JSON to ``out_dir`` if given."""
    install_empty_fetch_backoff(0.05)
    results: dict[str, dict[str, Any]] = {}
    root = Path(tempfile.mkdtemp(prefix="citybrain-bench-"))
    steps: list[tuple[str, Callable[[Services], dict[str, Any]]]] = []
    extra: list[ManagedProcess] = []
    mqtt_url = mqtt_broker_url(root, extra)
    with Services(root / "servers", pg_name=f"bench-{os.getpid()}", mqtt_url=mqtt_url) as svc:
        svc.start()
        assert svc.mqtt and svc.kafka_bootstrap and svc.database_url
        mqtt_ep, bootstrap, url = svc.mqtt, svc.kafka_bootstrap, svc.database_url
        steps = [
            ("mqtt_qos1_pubsub", lambda s: bench_mqtt(mqtt_ep, messages)),
            ("kafka_produce", lambda s: asyncio.run(_kafka(bootstrap, messages * 5))),
            ("pg_copy", lambda s: bench_copy(url, messages * 10)),
            ("naive_baseline", lambda s: bench_naive(mqtt_ep, url, min(messages, 5000))),
        ]
        for name, fn in steps:
            print(f"running {name}…", flush=True)
            results[name] = fn(svc)
    drop_pg(svc.pg_name)
    print("running e2e (platform: gateway, worker, store)…", flush=True)
    try:
        results["e2e"], latency = bench_e2e(
            root / "platform",
            messages,
            devices=50,
            mqtt_url=mqtt_url,
            latency_rates=rates,
            latency_seconds=latency_seconds,
        )
        results.update(latency)
    finally:
        for p in extra:
            p.stop()
    doc = {
        "when": datetime.now(UTC).isoformat(),
        "cores": os.cpu_count(),
        "mqtt_broker": mqtt_url or "amqtt (embedded)",
        "kafka_broker": "noida-db (embedded)",
        "results": results,
    }
    print(f"cores: {os.cpu_count()}, MQTT: {doc['mqtt_broker']}, Kafka: noida-db")
    print(_table(results))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"e2e-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(doc, indent=2))
        print(f"written to {path}")
    shutil.rmtree(root, ignore_errors=True)
    return doc


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.e2e", description=__doc__)
    parser.add_argument("--messages", type=int, default=int(os.environ.get("CITYBRAIN_BENCH_MESSAGES", "10000")))
    parser.add_argument(
        "--rate",
        default=",".join(map(str, bench_latency.DEFAULT_RATES)),
        help="latency runs' offered msg/s, comma-separated (empty: none)",
    )
    parser.add_argument("--latency-seconds", type=float, default=bench_latency.DEFAULT_SECONDS)
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where the JSON goes")
    parser.add_argument("--no-json", action="store_true", help="print only (python -m bench writes one JSON)")
    args = parser.parse_args(argv)
    rates = tuple(int(x) for x in args.rate.split(",") if x.strip())
    return run_all(args.messages, None if args.no_json else args.out, rates=rates, latency_seconds=args.latency_seconds)


if __name__ == "__main__":
    main()
