"""Latency at a fixed offered load: device event time → stored, and → the alert on the MQTT feed.

Devices publish canonical JSON at QoS 1 at a steady, configurable rate (``--rate``,
``CITYBRAIN_BENCH_RATE``, default ``500,2000``: one run per rate) for ``--seconds``
(``CITYBRAIN_BENCH_LATENCY_S``, default 10). Each message's event time is the
wall clock at publish, so:

* **event → stored** is ``stored_at − ts`` per row, where ``stored_at`` is
  ``clock_timestamp()`` taken by a row trigger the benchmark installs on
  ``readings_air`` in its own scratch database (the schema has no stored-time
  column; ``rx`` is the gateway's receive time, reported as **event → gateway**).
  The trigger fires inside the store's merge transaction, a few ms before its commit;
* **event → alert on the feed**: a few probe devices each send one PM2.5 reading
  above the ``air.pm25.high`` limit (no ``for:`` hold, so it opens at once); the
  latency is from that reading's event time until its ``open`` transition arrives
  on MQTT ``citybrain/alerts/#`` (worker → outbox → Kafka → gateway bridge → MQTT).

Everything runs on one machine, so the clocks are the same clock. Nothing is asserted.

In ``make bench`` this runs on the platform ``bench.e2e`` already started; standalone:
``python -m bench.bench_latency --rate 1000 --seconds 10``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from bench._common import drop_pg, mqtt_broker_url, platform_settings
from citybrain.harness import ManagedProcess, MqttEndpoint

__all__ = ["DEFAULT_RATES", "DEFAULT_SECONDS", "install_stored_marker", "main", "measure", "percentiles"]

#: Offered loads, msg/s, one run each: a light one (the pipeline's own latency) and the
#: issue's "fixed offered load"; a load above what the machine sustains shows as p50s
#: rising from quarter to quarter of the run (a backlog), not as a latency.
DEFAULT_RATES = tuple(int(x) for x in os.environ.get("CITYBRAIN_BENCH_RATE", "500,3000").split(",") if x.strip())
DEFAULT_SECONDS = float(os.environ.get("CITYBRAIN_BENCH_LATENCY_S", "10"))
PROBES = 20  # alert probes per run: enough for p95, few enough to be a negligible share of the load
CONNECTIONS = 4

_MARKER = """
create unlogged table if not exists bench_stored (
    device_code text not null,
    ts          timestamptz not null,
    rx          timestamptz,
    stored_at   timestamptz not null default clock_timestamp()
);
create or replace function bench_stored_mark() returns trigger language plpgsql as $$
begin
    insert into bench_stored (device_code, ts, rx) values (new.device_code, new.ts, new.rx);
    return null;
end $$;
drop trigger if exists bench_stored_mark on readings_air;
create trigger bench_stored_mark after insert on readings_air
    for each row execute function bench_stored_mark();
"""


def install_stored_marker(url: str) -> None:
    """Record when each new ``readings_air`` row is inserted (bench databases only).

    A row trigger into a side table, not a column on the readings table: the store
    reads the class table's columns from the catalog and would treat an extra one as a
    metric. An AFTER INSERT trigger fires for new rows only, not for a replay the merge
    turns into an update, so ``stored_at`` is the first time a reading was stored.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_MARKER)
        conn.execute("truncate bench_stored")


def percentiles(values: list[float], qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, float | None]:
    """Nearest-rank percentiles in milliseconds (``p50``, ``p95``, ``p99``); ``None`` when empty."""
    out: dict[str, float | None] = {}
    ordered = sorted(values)
    for q in qs:
        key = f"p{round(q * 100)}_ms"
        if not ordered:
            out[key] = None
            continue
        i = min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))
        out[key] = round(ordered[i] * 1000, 1)
    return out


def _client(ep: MqttEndpoint, inflight: int = 1000) -> mqtt.Client:
    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-lat-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    if ep.username:
        c.username_pw_set(ep.username, ep.password)
    c.max_inflight_messages_set(inflight)
    c.max_queued_messages_set(0)
    c.connect(ep.host, ep.port, keepalive=60)
    c.loop_start()
    return c


def _payload(ts: float, pm25: float) -> bytes:
    # Epoch seconds with microseconds: the event time is the publish instant itself.
    return json.dumps(
        {"v": 1, "ts": round(ts, 6), "metrics": {"pm25": pm25, "pm10": 40.0, "no2": 30.0, "co": 0.6}},
        separators=(",", ":"),
    ).encode()


def _paced(c: mqtt.Client, codes: list[str], rate: float, seconds: float, sent: list[int]) -> None:
    """Publish round-robin over ``codes`` at ``rate`` msg/s for ``seconds``; counts into ``sent[0]``."""
    t0 = time.perf_counter()
    n = 0
    k = 0
    infos = []
    while (elapsed := time.perf_counter() - t0) < seconds:
        due = int(elapsed * rate) - n
        for _ in range(max(0, due)):
            code = codes[k % len(codes)]
            k += 1
            infos.append(c.publish(f"citybrain/up/{code}/telemetry", _payload(time.time(), 20.0 + k % 7), qos=1))
            n += 1
        time.sleep(0.005)  # ticks of ~5 ms: sends in small bursts, as a fleet of devices does
    for info in infos:
        info.wait_for_publish(120)
    sent[0] = n


def measure(
    ep: MqttEndpoint,
    database_url: str,
    load_codes: list[str],
    probe_codes: list[str],
    *,
    rate: int,
    seconds: float = DEFAULT_SECONDS,
) -> dict[str, Any]:
    """Offer ``rate`` msg/s for ``seconds`` from ``load_codes`` to a running platform; return percentiles.

    Each of ``probe_codes`` sends one reading that opens an alert; an alert stays open
    for a minute of clean readings, so every run needs probe devices of its own.
    """
    install_stored_marker(database_url)
    probes = len(probe_codes)
    feed: dict[str, float] = {}
    feed_lock = threading.Lock()

    def on_alert(c: Any, u: Any, m: Any) -> None:
        now = time.time()
        try:
            doc = json.loads(m.payload)
        except ValueError:
            return
        if doc.get("transition") == "open" and doc.get("rule") == "air.pm25.high":
            with feed_lock:
                feed.setdefault(str(doc.get("device")), now)

    sub = _client(ep)
    sub.on_message = on_alert
    sub.subscribe("citybrain/alerts/#", qos=1)
    probe_client = _client(ep, inflight=10)
    clients = [_client(ep) for _ in range(CONNECTIONS)]
    time.sleep(0.5)
    probe_ts: dict[str, float] = {}

    def run_probes() -> None:
        # Spread over the run, after a short warm-up, each on its own device.
        for i, code in enumerate(probe_codes):
            time.sleep(max(0.0, t_start + seconds * (0.1 + 0.8 * i / max(1, probes)) - time.time()))
            ts = time.time()
            probe_client.publish(f"citybrain/up/{code}/telemetry", _payload(ts, 120.0), qos=1).wait_for_publish(30)
            probe_ts[code] = ts

    counts = [[0] for _ in clients]
    t_start = time.time()
    threads = [
        threading.Thread(target=_paced, args=(c, load_codes[i::CONNECTIONS], rate / CONNECTIONS, seconds, counts[i]))
        for i, c in enumerate(clients)
    ]
    threads.append(threading.Thread(target=run_probes))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    publish_s = time.time() - t_start
    offered = sum(c[0] for c in counts) + len(probe_ts)
    for c in clients:
        c.loop_stop()
        c.disconnect()
    # Wait for the store to catch up (or stall), and for the probes' alerts on the feed.
    stored, last_change = 0, time.monotonic()
    with psycopg.connect(database_url, autocommit=True) as conn:
        while stored < offered and time.monotonic() - last_change < 20:
            # Only this run's readings: a backlog of an earlier run (older event times)
            # still being stored must not count as latency.
            row = conn.execute("select count(*) from bench_stored where ts >= to_timestamp(%s)", (t_start,)).fetchone()
            now_stored = int(row[0]) if row else 0
            if now_stored != stored:
                stored, last_change = now_stored, time.monotonic()
            time.sleep(0.2)
        rows = conn.execute(
            "select extract(epoch from stored_at - ts), extract(epoch from rx - ts) from bench_stored"
            " where ts >= to_timestamp(%s) order by ts",
            (t_start,),
        ).fetchall()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with feed_lock:
            if all(code in feed for code in probe_ts):
                break
        time.sleep(0.2)
    probe_client.loop_stop()
    probe_client.disconnect()
    sub.loop_stop()
    sub.disconnect()
    to_store = [float(r[0]) for r in rows]
    to_gateway = [float(r[1]) for r in rows if r[1] is not None]
    with feed_lock:
        to_alert = [feed[c] - ts for c, ts in probe_ts.items() if c in feed]
    # p50 per quarter of the run, in send order: flat when the platform keeps up with the
    # offered load, rising when a backlog builds (then the percentiles measure the run's length).
    q = max(1, len(to_store) // 4)
    quarters = [percentiles(to_store[i * q : (i + 1) * q], (0.5,))["p50_ms"] for i in range(4)]
    return {
        "offered_msg_per_s": rate,
        "achieved_msg_per_s": round(offered / publish_s),
        "seconds": round(seconds, 1),
        "messages": offered,
        "stored": len(to_store),
        "event_to_gateway": percentiles(to_gateway),
        "event_to_stored": percentiles(to_store),
        "event_to_stored_p50_ms_by_quarter": "/".join(str(x) for x in quarters),
        "alerts": f"{len(to_alert)}/{len(probe_ts)}",
        "event_to_alert_feed": percentiles(to_alert),
    }


def flat(res: dict[str, Any]) -> dict[str, Any]:
    """One level of keys (``event_to_stored_p99_ms``) for the summary table."""
    out: dict[str, Any] = {}
    for k, v in res.items():
        if isinstance(v, dict):
            out.update({f"{k}_{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def measure_all(
    ep: MqttEndpoint, database_url: str, codes: list[str], rates: tuple[int, ...], seconds: float
) -> dict[str, dict[str, Any]]:
    """One :func:`measure` per rate, each with its own probe devices (the last codes); flat rows."""
    need = PROBES * len(rates)
    load_codes, spare = codes[:-need], codes[-need:]
    out = {}
    for i, rate in enumerate(rates):
        print(f"latency at {rate} msg/s for {seconds:.0f}s…", flush=True)
        res = measure(ep, database_url, load_codes, spare[i * PROBES : (i + 1) * PROBES], rate=rate, seconds=seconds)
        out[f"latency_{rate}"] = flat(res)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Standalone: start Mosquitto (if installed) and the platform, measure, print."""
    from citybrain.kafka_compat import install_empty_fetch_backoff
    from citybrain.platform import Platform, demo_device_codes

    parser = argparse.ArgumentParser(prog="bench.bench_latency", description=__doc__)
    parser.add_argument(
        "--rate", default=",".join(map(str, DEFAULT_RATES)), help="offered msg/s, comma-separated: one run each"
    )
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS)
    parser.add_argument("--devices", type=int, default=500)
    args = parser.parse_args(argv)
    rates = tuple(int(x) for x in args.rate.split(","))
    # Each rate needs PROBES devices of its own besides the ones carrying the load.
    least = PROBES * len(rates) + 10
    if args.devices < least:
        parser.error(f"--devices must be at least {least} for {len(rates)} rate(s) ({PROBES} alert probes each)")
    install_empty_fetch_backoff(0.05)
    root = Path(tempfile.mkdtemp(prefix="citybrain-bench-lat-"))
    extra: list[ManagedProcess] = []
    settings = platform_settings(root, f"lat{uuid.uuid4().hex[:6]}", mqtt_broker_url(root, extra))
    platform = Platform.from_settings(settings, data_dir=root)
    try:
        platform.start(simulate=False, devices=args.devices, progress=False)
        assert platform.services.mqtt and platform.services.database_url
        res = measure_all(
            platform.services.mqtt,
            platform.services.database_url,
            demo_device_codes(args.devices),
            rates,
            args.seconds,
        )
    finally:
        platform.stop()
        drop_pg(platform.services.pg_name)
        for p in extra:
            p.stop()
        shutil.rmtree(root, ignore_errors=True)
    for name, row in res.items():
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in row.items()))
    return res


if __name__ == "__main__":
    main()
