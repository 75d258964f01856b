"""Side by side: a Node-RED 4 flow doing the platform's job (mqtt in → function → PostgreSQL).

Many city projects are a Node-RED flow: an ``mqtt in`` node on ``citybrain/up/+/telemetry``
(QoS 1), a function node that parses the canonical JSON (device code from the topic,
event time, metrics), and a PostgreSQL insert, one per message. The npm registry here
has no ``node-red-contrib-postgresql``, so the insert is a second function node calling
``pg`` (node-postgres, the library that node wraps) from ``functionGlobalContext``.

Node-RED and ``pg`` are installed on demand with npm into a cache directory
(``CITYBRAIN_BENCH_CACHE``, default ``~/.cache/citybrain``; about a minute the first time)
and reused afterwards. When Node.js (≥ 18) or npm is missing, or the install fails, the
benchmark is skipped with the reason printed. ``CITYBRAIN_BENCH_NODERED=0`` skips it too.

Unlike the gateway, MQTT.js acknowledges a QoS 1 message as soon as it arrives, not
after the insert: a crash loses what is in flight, and nothing pushes back on the broker.
The figure is msg/s from first publish to all rows stored. Nothing is asserted.

Run: ``python -m bench.bench_nodered --messages 5000``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench._common import drop_pg, mqtt_broker_url, publish_qos1, telemetry_messages
from citybrain.harness import ManagedProcess, MqttEndpoint, Services, free_port, spawn

__all__ = ["ensure_node_red", "main"]

NODE_RED = "node-red@4"
PG = "pg@8"

_INSERT = """
let pool = global.get('citybrainPool');
if (!pool) {
    const pg = global.get('pg');
    pool = new pg.Pool({connectionString: env.get('CITYBRAIN_BENCH_PG_URL'), max: 4});
    global.set('citybrainPool', pool);
}
pool.query(
    'insert into nodered_readings (device_code, ts, pm25, pm10, no2, co, o3, so2)'
    + ' values ($1, $2, $3, $4, $5, $6, $7, $8)', msg.params
).then(() => node.done()).catch((err) => node.error(err, msg));
return null;
"""

_NORMALISE = """
const code = msg.topic.split('/')[2];
const doc = JSON.parse(msg.payload);
const t = typeof doc.ts === 'number' ? new Date(doc.ts * 1000) : new Date(doc.ts);
const m = doc.metrics || {};
const v = (x) => (x === undefined ? null : (typeof x === 'object' ? x.value : x));
msg.params = [code, t.toISOString(), v(m.pm25), v(m.pm10), v(m.no2), v(m.co), v(m.o3), v(m.so2)];
return msg;
"""


def _cache_dir() -> Path:
    base = os.environ.get("CITYBRAIN_BENCH_CACHE") or str(Path.home() / ".cache" / "citybrain")
    return Path(base) / "node-red-4"


def ensure_node_red(timeout: float = 420.0) -> tuple[Path | None, str]:
    """Node-RED 4 and pg in the cache dir, installed if needed; (dir, "") or (None, why not)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return None, "Node.js or npm is not installed"
    try:
        major = int(
            subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout[1:].split(".")[0]
        )
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        return None, f"cannot run node --version: {exc}"
    if major < 18:
        return None, f"Node-RED 4 needs Node.js 18 or newer, found {major}"
    root = _cache_dir()
    pkg = root / "node_modules" / "node-red" / "package.json"
    installed = pkg.exists() and (root / "node_modules" / "pg").exists()
    if installed and json.loads(pkg.read_text()).get("version", "").startswith("4."):
        return root, ""
    root.mkdir(parents=True, exist_ok=True)
    print(f"installing {NODE_RED} and {PG} into {root} (npm, once)…", flush=True)
    try:
        res = subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(root),
                "--no-audit",
                "--no-fund",
                "--omit=dev",
                "--loglevel=error",
                NODE_RED,
                PG,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None, f"npm install did not finish in {timeout:.0f}s"
    if res.returncode != 0 or not pkg.exists():
        return None, f"npm install failed: {(res.stderr or res.stdout).strip()[-300:]}"
    return root, ""


def _flow(ep: MqttEndpoint) -> list[dict[str, Any]]:
    broker = {
        "id": "broker",
        "type": "mqtt-broker",
        "name": "citybrain",
        "broker": ep.host,
        "port": str(ep.port),
        "clientid": f"nodered-{uuid.uuid4().hex[:6]}",
        "autoConnect": True,
        "usetls": False,
        "protocolVersion": "4",
        "keepalive": "60",
        "cleansession": True,
        "credentials": {"user": ep.username or "", "password": ep.password or ""},
    }
    return [
        {"id": "tab", "type": "tab", "label": "citybrain ingest"},
        broker,
        {
            "id": "in",
            "type": "mqtt in",
            "z": "tab",
            "name": "telemetry",
            "x": 120,
            "y": 80,
            "topic": "citybrain/up/+/telemetry",
            "qos": "1",
            "datatype": "utf8",
            "broker": "broker",
            "nl": False,
            "rap": True,
            "inputs": 0,
            "wires": [["normalise"]],
        },
        {
            "id": "normalise",
            "type": "function",
            "z": "tab",
            "name": "normalise",
            "x": 300,
            "y": 80,
            "func": _NORMALISE,
            "outputs": 1,
            "wires": [["insert"]],
        },
        {
            "id": "insert",
            "type": "function",
            "z": "tab",
            "name": "postgresql",
            "x": 480,
            "y": 80,
            "func": _INSERT,
            "outputs": 0,
            "wires": [],
        },
    ]


def _settings(port: int) -> str:
    # No editor, no admin API, no HTTP nodes: only the flow runs. `pg` reaches the
    # function nodes through the global context (resolved from the cache's node_modules).
    return (
        "module.exports = {\n"
        f"  uiPort: {port}, uiHost: '127.0.0.1', httpAdminRoot: false, httpNodeRoot: false,\n"
        "  flowFile: 'flows.json', credentialSecret: false,\n"
        "  functionGlobalContext: { pg: require('pg') },\n"
        "  logging: { console: { level: 'warn', metrics: false, audit: false } },\n"
        "};\n"
    )


def _count(url: str, since: datetime) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("select count(*) from nodered_readings where ts >= %s", (since,)).fetchone()
    return int(row[0]) if row else 0


def _wait(url: str, since: datetime, want: int, stall_s: float) -> int:
    stored, last = 0, time.monotonic()
    while stored < want and time.monotonic() - last < stall_s:
        now = _count(url, since)
        if now != stored:
            stored, last = now, time.monotonic()
        time.sleep(0.2)
    return stored


def run(root: Path, ep: MqttEndpoint, url: str, messages: int, workdir: Path) -> dict[str, Any]:
    """Start the flow against ``ep`` and ``url``, publish ``messages``, time until all are stored."""
    from citybrain.platform import demo_device_codes
    from ingest.adapters.json.codec import encode

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "create table if not exists nodered_readings (device_code text not null, ts timestamptz not null,"
            " pm25 float8, pm10 float8, no2 float8, co float8, o3 float8, so2 float8,"
            " primary key (device_code, ts))"
        )
    user = workdir / "node-red"
    user.mkdir(parents=True, exist_ok=True)
    (user / "flows.json").write_text(json.dumps(_flow(ep)))
    # settings.js lives in the cache dir so that require('pg') resolves against its node_modules.
    settings = root / f"settings-{uuid.uuid4().hex[:6]}.js"
    settings.write_text(_settings(free_port()))
    env = dict(os.environ) | {"CITYBRAIN_BENCH_PG_URL": url, "NODE_ENV": "production"}
    proc: ManagedProcess = spawn(
        "node-red",
        [
            "node",
            str(root / "node_modules" / "node-red" / "red.js"),
            "--userDir",
            str(user),
            "--settings",
            str(settings),
        ],
        workdir / "node-red.log",
        env=env,
    )
    try:
        codes = demo_device_codes(50)
        # Warm-up: the flow is up once a message makes it to the table. (Flow nodes need
        # x/y: Node-RED takes a node without a position for a config node.)
        warm_base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
        warm = [(f"citybrain/up/{c}/telemetry", encode(warm_base, {"pm25": 10.0})) for c in codes]
        deadline = time.monotonic() + 60
        while _count(url, warm_base) == 0 and time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"Node-RED exited: {proc.log_tail()}")
            publish_qos1(ep, warm[:1], connections=1)
            time.sleep(1.0)
        if _count(url, warm_base) == 0:
            raise RuntimeError(f"the Node-RED flow stored nothing in 60 s; its log:\n{proc.log_tail()}")
        base = warm_base + timedelta(hours=1)
        steps = max(1, messages // len(codes))
        items = telemetry_messages(codes, base, steps)
        t0 = time.perf_counter()
        publish_qos1(ep, items, connections=4)
        stored = _wait(url, base, len(items), 30)
        dt = time.perf_counter() - t0
        version = json.loads((root / "node_modules" / "node-red" / "package.json").read_text())["version"]
        return {
            "node_red": version,
            "messages": len(items),
            "stored": stored,
            "seconds": round(dt, 2),
            "msg_per_s": round(stored / dt),
        }
    finally:
        proc.stop()
        settings.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="bench.bench_nodered", description=__doc__)
    parser.add_argument("--messages", type=int, default=5000)
    args = parser.parse_args(argv)
    if os.environ.get("CITYBRAIN_BENCH_NODERED", "1") == "0":
        print("Node-RED: skipped (CITYBRAIN_BENCH_NODERED=0)")
        return {"results": {"nodered": {"skipped": "CITYBRAIN_BENCH_NODERED=0"}}}
    root, why = ensure_node_red()
    if root is None:
        print(f"Node-RED: skipped: {why}")
        return {"results": {"nodered": {"skipped": why}}}
    work = Path(tempfile.mkdtemp(prefix="citybrain-bench-nodered-"))
    extra: list[ManagedProcess] = []
    mqtt_url = mqtt_broker_url(work, extra)
    try:
        with Services(work / "servers", pg_name=f"bench-nodered-{os.getpid()}", mqtt_url=mqtt_url) as svc:
            svc.start(kafka=False)
            assert svc.mqtt and svc.database_url
            res = run(root, svc.mqtt, svc.database_url, args.messages, work)
        drop_pg(svc.pg_name)
    finally:
        for p in extra:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("Node-RED 4 flow (mqtt in → function → PostgreSQL): " + ", ".join(f"{k}={v}" for k, v in res.items()))
    return {"results": {"nodered": res}}


if __name__ == "__main__":
    main()
