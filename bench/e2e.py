"""End-to-end and side-by-side throughput, on the servers the harness starts.

Figures (printed as a table, written as JSON to bench/results/; nothing asserted):

* ``mqtt_qos1_pubsub``: bare MQTT QoS 1, paho publisher → paho subscriber.
* ``kafka_produce``: raw aiokafka produce (acks=all), 200-byte records.
* ``pg_copy``: raw PostgreSQL COPY of narrow rows into an unlogged table.
* ``naive_paho_one_process``: paho subscriber → one INSERT per message, publisher and
  subscriber in this interpreter (the old row, kept for comparison).
* ``e2e_city``: MQTT QoS 1 → gateway → Kafka → stream worker (normalise, COPY merge,
  rules) → stored, counted in PostgreSQL; messages/s, readings/s and messages per
  CPU-second of the gateway and the worker. City-like traffic: ``CITYBRAIN_BENCH_CITY_DEVICES``
  (20,000) devices send one message each (paho publisher: ``mosquitto_pub -l`` has
  one topic per connection, and every device has its own topic), in two rounds five
  minutes of event time apart: the first (every device's first message: activation,
  state rows created) is reported as ``first_*``, the second is the measured row;
  worker CPU is counted until every device's rules have evaluated the round.
* ``e2e_city_1m``: the same with ``CITYBRAIN_BENCH_LEDGER_DEVICES`` (1,000,000) devices
  registered before the worker starts (goal: within 10% of ``e2e_city``; ``vs_e2e_city``).
* ``mqtt_native``: the MQTT ceiling, native ``mosquitto_pub -l -q 1`` connections →
  ``mosquitto_sub``, same JSON payloads (:mod:`bench.native`).
* ``naive_baseline``: :mod:`bench.naive` in its own process (parse, INSERT into a wide
  table with a primary key, COMMIT per message) under a paced native load for a fixed
  time (``CITYBRAIN_BENCH_NAIVE_RATE`` msg/s for ``CITYBRAIN_BENCH_NAIVE_S`` s).
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
from bench._common import drop_pg, mqtt_broker_url, mqtt_client, platform_settings, publish_qos1, telemetry_messages
from citybrain.harness import ManagedProcess, MqttEndpoint, Services
from citybrain.kafka_compat import install_empty_fetch_backoff
from core.procstat import cpu_seconds

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


def _native_streams(n: int, connections: int, hours_ago: int = 2) -> list[tuple[str, list[bytes]]]:
    """City telemetry for the native rows: one device topic per connection, ``n`` messages in all."""
    from citybrain.platform import demo_device_codes

    codes = demo_device_codes(connections)
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours_ago)
    items = telemetry_messages(codes, base, max(1, n // connections))
    return [(f"citybrain/up/{code}/telemetry", [p for t, p in items if code in t]) for code in codes]


def bench_mqtt_native(ep: MqttEndpoint, n: int, connections: int = 4) -> dict[str, Any]:
    """The MQTT ceiling: native ``mosquitto_pub`` connections → one ``mosquitto_sub``, QoS 1, same payloads."""
    from bench.native import count_native, publish_native

    streams = _native_streams(n, connections)
    total = sum(len(p) for _, p in streams)
    ready = threading.Event()
    got: list[int] = []
    sub = threading.Thread(
        target=lambda: got.append(count_native(ep, "citybrain/up/+/telemetry", total, ready=ready, timeout=120))
    )
    sub.start()
    ready.wait(30)
    t0 = time.perf_counter()
    pub = publish_native(ep, streams, timeout=60)
    sub.join(180)
    dt = time.perf_counter() - t0
    received = got[0] if got else 0
    return {
        "messages": total,
        "acked": pub.acked,
        "received": received,
        "connections": connections,
        "seconds": round(dt, 2),
        "msg_per_s": round(received / dt),
    }


def bench_naive_native(
    ep: MqttEndpoint, url: str, *, rate: float, seconds: float, connections: int = 4
) -> dict[str, Any]:
    """The naive baseline (:mod:`bench.naive`, its own process) under a paced native load for a fixed time."""
    import subprocess
    import sys

    from bench.native import publish_native

    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.naive", "--database-url", url, "--host", ep.host, "--port", str(ep.port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("bench.naive did not start")

        def stored() -> int:
            with psycopg.connect(url, autocommit=True) as conn:
                row = conn.execute("select count(*) from naive_readings").fetchone()
                return int(row[0]) if row else 0

        # Warm-up: a first batch stored end to end (connections, plans, caches).
        publish_native(ep, _native_streams(40 * connections, connections, hours_ago=3), timeout=60)
        deadline = time.monotonic() + 60
        while stored() < 40 * connections and time.monotonic() < deadline:
            time.sleep(0.1)
        n = int(rate * seconds)
        streams = _native_streams(n, connections)  # event times after the warm-up's (primary key)
        before = stored()
        t0 = time.perf_counter()
        pub = publish_native(ep, streams, rate=rate, timeout=60)
        window = time.perf_counter() - t0
        done = stored() - before
    finally:
        proc.terminate()
        proc.wait(10)
    return {
        "offered_msg_per_s": round(rate),
        "offered_seconds": round(window, 1),
        "acked": pub.acked,
        "stored_in_window": done,
        "connections": connections,
        "msg_per_s": round(done / window),
    }


def bench_e2e(
    data_dir: Path,
    n: int,
    devices: int,
    mqtt_url: str | None,
    *,
    registered: int = 0,
    latency_rates: tuple[int, ...] = (),
    latency_seconds: float = bench_latency.DEFAULT_SECONDS,
    latency_devices: int = 500,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Throughput, then latency at each offered load in ``latency_rates``, on one platform.

    City-like traffic in two rounds over the same ``devices``, five minutes of event
    time apart: the first round is every device's first message (ledger activation,
    state rows created) and is reported as ``first_msg_per_s``; once it is stored and
    evaluated, the second round is measured (the sustained figures). ``registered``
    devices (at least ``devices``) are in the ledger when the worker starts.
    """
    from citybrain.platform import Platform, demo_device_codes

    settings = platform_settings(data_dir, f"bench{uuid.uuid4().hex[:6]}", mqtt_url)
    platform = Platform.from_settings(settings, data_dir=data_dir)
    # The latency run's devices are registered too (the throughput run uses the first ones).
    registered = max(registered, devices, latency_devices + bench_latency.PROBES * len(latency_rates))
    t0 = time.perf_counter()
    platform.start(simulate=False, devices=registered, progress=False)
    started_s = time.perf_counter() - t0
    try:
        assert platform.services.mqtt and platform.services.database_url
        codes = demo_device_codes(devices)
        base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        steps = max(1, n // devices)
        first = _round(platform, telemetry_messages(codes, base, steps), codes, base)
        later = base + timedelta(minutes=5)
        second = _round(platform, telemetry_messages(codes, later, steps), codes, later)
        latency = bench_latency.measure_all(
            platform.services.mqtt,
            platform.services.database_url,
            demo_device_codes(registered),
            latency_rates,
            latency_seconds,
        )
        return {
            "registered": registered,
            "platform_start_s": round(started_s, 1),
            **second,
            "first_msg_per_s": first["msg_per_s"],
            "first_msg_per_worker_cpu_s": first["msg_per_worker_cpu_s"],
        }, latency
    finally:
        platform.stop()
        if settings.database_url is None:
            drop_pg(platform.services.pg_name)


def _round(platform: Any, items: list[tuple[str, bytes]], codes: list[str], since: datetime) -> dict[str, Any]:
    """Publish ``items`` (QoS 1, 4 connections, event times from ``since``); wait until stored and evaluated."""
    url = platform.services.database_url
    total = len(items)
    gw_metrics = f"http://127.0.0.1:{platform.gateway_port}/metrics"
    forwarded0 = _forwarded(gw_metrics)
    gateway_s: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:

        def count(sql: str, *params: Any) -> int:
            row = conn.execute(sql, params or None).fetchone()
            return int(row[0]) if row else 0

        stored0 = count("select count(*) from readings_air")

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
        threads0 = _gateway_threads(gw_metrics)
        t0 = time.perf_counter()
        watcher = threading.Thread(target=watch_gateway, daemon=True)
        watcher.start()
        pub_s = publish_qos1(platform.services.mqtt, items, connections=4)
        stored = 0
        last_change = time.monotonic()
        while True:
            now_stored = count("select count(*) from readings_air") - stored0
            if now_stored != stored:
                stored, last_change = now_stored, time.monotonic()
            # A device's first message activates it: batches are slow on a busy machine,
            # so a stall is 120 s without a new row.
            if stored >= total or time.monotonic() - last_change > 120:
                break  # done, or stalled: report what arrived
            time.sleep(0.2)
        dt = time.perf_counter() - t0
        # The worker stores a batch before it evaluates it (rules, detectors, activation):
        # its CPU is counted once every device's rule state has moved on by this round, and
        # the next round (and the latency runs) start only then, or they would measure
        # this round's tail.
        settle = time.monotonic()
        sql = "select count(*) from rule_state where device_code = any(%s) and watermark_us >= %s"
        since_us = int(since.timestamp() * 1_000_000)
        while time.monotonic() - settle < 120 and count(sql, codes, since_us) < len(codes):
            time.sleep(0.05)
        evaluated_s = time.perf_counter() - t0
        cpu = {name: cpu_seconds(platform.process(name).pid) - cpu0[name] for name in cpu0}
        threads = {k: v - threads0.get(k, 0.0) for k, v in _gateway_threads(gw_metrics).items()}
    watcher.join(5)
    # Goal 5: where paho's own time ends and ours begins (core.procstat.ThreadCpuCollector).
    paho_share = threads.get("mqtt", 0.0) / sum(threads.values()) if sum(threads.values()) else None
    return {
        "messages": total,
        "stored_rows": stored,
        "readings": stored * 6,
        "publish_seconds": round(pub_s, 2),
        "seconds": round(dt, 2),
        "evaluated_seconds": round(evaluated_s, 2),
        "msg_per_s": round(stored / dt),
        "readings_per_s": round(stored * 6 / dt),
        "gateway_msg_per_s": round(total / gateway_s[0]) if gateway_s else None,
        "msg_per_gateway_cpu_s": round(stored / cpu["gateway"]) if cpu["gateway"] else None,
        "gateway_paho_thread_share": round(paho_share, 3) if paho_share is not None else None,
        "msg_per_worker_cpu_s": round(stored / cpu["worker"]) if cpu["worker"] else None,
    }


def _scrape(url: str) -> dict[str, float]:
    """A Prometheus text page as ``{series: value}`` (series with its labels, as printed)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as r:
        out = {}
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                out[series] = float(value)
        return out


def _forwarded(url: str) -> float:
    return _scrape(url).get("citybrain_gateway_messages_forwarded_total", 0.0)


def _gateway_threads(url: str) -> dict[str, float]:
    """The gateway's CPU seconds by thread: paho's network thread ("mqtt"), its asyncio loop, others."""
    prefix = 'citybrain_gateway_thread_cpu_seconds_total{thread="'
    return {k[len(prefix) : -2]: v for k, v in _scrape(url).items() if k.startswith(prefix)}


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
    naive_rate = float(os.environ.get("CITYBRAIN_BENCH_NAIVE_RATE", "1000"))
    naive_s = float(os.environ.get("CITYBRAIN_BENCH_NAIVE_S", "20"))
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
            ("naive_paho_one_process", lambda s: bench_naive(mqtt_ep, url, min(messages, 5000))),
        ]
        if mqtt_url is not None:  # a private Mosquitto: the native rows
            steps += [
                ("mqtt_native", lambda s: bench_mqtt_native(mqtt_ep, max(messages * 5, 20_000))),
                ("naive_baseline", lambda s: bench_naive_native(mqtt_ep, url, rate=naive_rate, seconds=naive_s)),
            ]
        for name, fn in steps:
            print(f"running {name}…", flush=True)
            results[name] = fn(svc)
    drop_pg(svc.pg_name)
    print("running e2e (platform: gateway, worker, store)…", flush=True)
    try:
        # City-like traffic: every message from another device (one each), as a city sends it.
        city = int(os.environ.get("CITYBRAIN_BENCH_CITY_DEVICES", "20000"))
        results["e2e_city"], latency = bench_e2e(
            root / "platform",
            city,
            devices=city,
            mqtt_url=mqtt_url,
            latency_rates=rates,
            latency_seconds=latency_seconds,
        )
        results.update(latency)
        # Goal 2: the same traffic with a million devices in the ledger (the worker's index,
        # activation lookups and the change feed at that size).
        ledger = int(os.environ.get("CITYBRAIN_BENCH_LEDGER_DEVICES", "1000000"))
        if ledger:
            print(f"running e2e_city_1m ({ledger:,} registered)…", flush=True)
            results["e2e_city_1m"], _ = bench_e2e(
                root / "platform-1m", city, devices=city, mqtt_url=mqtt_url, registered=ledger
            )
            # msg/s over a round of a few seconds moves ±30% here; the worker's CPU per
            # message is the steadier comparison of the two ledger sizes.
            for col in ("msg_per_s", "msg_per_worker_cpu_s"):
                if results["e2e_city"].get(col) and results["e2e_city_1m"].get(col):
                    results["e2e_city_1m"][f"vs_e2e_city_{col}"] = round(
                        results["e2e_city_1m"][col] / results["e2e_city"][col], 3
                    )
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


def city_only(devices: int, registered: int = 0) -> dict[str, Any]:
    """Only ``e2e_city`` (two rounds over ``devices``), on a private Mosquitto; printed and returned."""
    install_empty_fetch_backoff(0.05)
    root = Path(tempfile.mkdtemp(prefix="citybrain-bench-"))
    extra: list[ManagedProcess] = []
    try:
        row, _ = bench_e2e(root / "platform", devices, devices, mqtt_broker_url(root, extra), registered=registered)
    finally:
        for p in extra:
            p.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(row))
    return row


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
    parser.add_argument(
        "--city",
        type=int,
        default=0,
        metavar="DEVICES",
        help="only the city-like row with this many devices (an A/B of the gateway or worker), printed",
    )
    parser.add_argument(
        "--registered", type=int, default=0, help="with --city: devices in the ledger (default: --city)"
    )
    args = parser.parse_args(argv)
    if args.city:
        return {"results": {"e2e_city": city_only(args.city, args.registered)}}
    rates = tuple(int(x) for x in args.rate.split(",") if x.strip())
    return run_all(args.messages, None if args.no_json else args.out, rates=rates, latency_seconds=args.latency_seconds)


if __name__ == "__main__":
    main()
