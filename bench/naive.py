"""The naive baseline, as a process of its own: subscribe, parse, INSERT, COMMIT, per message.

    python -m bench.naive --database-url URL --host H --port P --topic 'citybrain/up/+/telemetry'

How many city projects are built: one paho subscriber (QoS 1) that parses each
JSON message and inserts it into one wide table with a primary key, committing
every message. Prints ``ready`` once subscribed; runs until killed. The caller
counts rows in ``naive_readings`` to measure it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

METRICS = ("pm25", "pm10", "no2", "co", "o3", "so2")
TABLE = f"""
create table if not exists naive_readings (
    device_code text not null,
    ts timestamptz not null,
    {", ".join(f"{m} double precision" for m in METRICS)},
    primary key (device_code, ts)
)
"""
INSERT = (
    f"insert into naive_readings (device_code, ts, {', '.join(METRICS)})"
    f" values (%s, %s, {', '.join(['%s'] * len(METRICS))}) on conflict do nothing"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.naive", description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", default="citybrain/up/+/telemetry")
    args = parser.parse_args(argv)
    conn = psycopg.connect(args.database_url)
    conn.execute(TABLE)
    conn.commit()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def on_message(c: Any, u: Any, m: Any) -> None:
        doc = json.loads(m.payload)
        code = m.topic.split("/")[2]
        metrics = doc["metrics"]
        conn.execute(INSERT, (code, doc["ts"], *(metrics.get(k) for k in METRICS)))
        conn.commit()

    def on_subscribe(c: Any, u: Any, mid: Any, rc: Any, p: Any = None) -> None:
        print("ready", flush=True)

    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"bench-naive-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv311,
    )
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(args.topic, qos=1)
    client.connect(args.host, args.port, keepalive=60)
    client.loop_start()
    stop.wait()
    client.loop_stop()
    client.disconnect()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
