"""``make soak``: the platform under half its measured capacity for 30 minutes; does anything creep?

City-like traffic (thousands of air stations, one message each per round, QoS 1, a few
polluters opening and clearing alerts) plus a district-wide pollution episode every few
minutes, on a supervised platform with a private Mosquitto (the ``make chaos`` rig). Once
a minute it samples each process's RSS and open file descriptors (PostgreSQL's backends
together, by their own memory), the stream workers'
Kafka consumer lag on the raw topic, the end-to-end backlog (sent, not yet stored) and
PostgreSQL's table and index sizes, and prints a row.

It passes when, after the warm-up, every process's RSS grows less than 10 % (median of
the first samples after the warm-up against the median of the last ones), the backlog
never exceeds a minute of traffic and drains to nothing, and every message sent is
stored exactly once::

    python -m bench.soak [--minutes WARMUP+30] [--warmup auto] [--rate 0 (measure; half of it)] [--devices 3000]

``--minutes 3 --warmup 1`` is a quick check.

**The warm-up** is the time state that is bounded by design takes to fill, so that what
grows after it is a leak: (1) the anomaly detectors' windows, up to the longest window of
the shipped config (``alerts/data/anomaly/detectors.yaml``: robust_z keeps 90 samples per
air series) at the load's report interval per device (devices / rate): 3,000 devices at
80 msg/s report every 37 s, so 90 samples take 56 minutes; 300 devices, 5.6 minutes;
(2) the embedded Kafka-protocol broker's log, which noida-db keeps in memory up to the
topics' ``retention.ms`` (the rig sets ``--kafka-retention`` minutes,
``CITYBRAIN_EMBEDDED_KAFKA_RETENTION_S``). The default warm-up is the longer of the two.

**What is measured.** RSS per process; for PostgreSQL's backends their *private* memory
summed (``Anonymous`` in ``/proc/<pid>/smaps_rollup``: catalog and plan caches, sort and
hash memory). Their USS would also count the pages of shared buffers that only one backend
has touched so far, which grows with the data read until shared_buffers is full: a
cache filling, not a leak. The private memory does grow, by the catalog, relation and plan
caches of long-lived connections, until the pool replaces the connection
(``CITYBRAIN_DB_POOL_MAX_LIFETIME_S``, 600 s by default): a saw-tooth with a period of the
pool lifetime, which a median over a few minutes cannot judge. So the soak runs the pools
with ``--pool-lifetime`` minutes (2 by default), several lifetimes within the measured span.
The broker's retained log (records on the raw topic) is printed beside its RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg

from alerts.anomaly.config import shipped_anomaly_config
from bench.chaos import Rig, _check, _stored, _wait
from citybrain.harness import ManagedProcess
from devices.models import shipped_models
from simulators.load import CityLoad, LoadConfig

#: Parameters of a detector that count samples (its window, or its warm-up before scoring).
_SAMPLE_COUNTS = ("window", "min_samples", "samples")


def longest_window(device_class: str = "air") -> int:
    """The most samples any shipped anomaly detector keeps (or waits for) on a series of the class."""
    config = shipped_anomaly_config()
    longest = 0
    for model in shipped_models().all():
        if model.device_class != device_class:
            continue
        for metric, spec in model.metrics.items():
            for det in config.plan(device_class, model.id, metric, gauge=spec.kind == "gauge"):
                counts = [getattr(det.params, n, 0) for n in _SAMPLE_COUNTS]
                longest = max([longest, *(c for c in counts if isinstance(c, int))])
    return longest


def default_warmup_min(devices: int, rate: float, kafka_retention_min: float) -> float:
    """Minutes until the detectors' windows and the embedded broker's log are full (module docstring)."""
    windows = longest_window() * devices / rate / 60
    return max(windows, kafka_retention_min) + 1


@dataclass
class Sample:
    """One minute's row."""

    minute: float
    sent: int
    stored: int
    lag: int
    #: Records the broker still holds on the raw topic (end − beginning offsets).
    retained: int = -1
    rss_mb: dict[str, float] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    pg_table_mb: float = 0.0
    pg_index_mb: float = 0.0


def _processes(rig: Rig) -> dict[str, ManagedProcess]:
    assert rig.platform is not None and rig.mosquitto is not None
    procs = {p.name: p for p in rig.platform.processes}
    for p in rig.platform.services.processes:
        procs[p.name.split(" ")[0]] = p
    procs["mosquitto"] = rig.mosquitto
    return procs


def _memory(proc: ManagedProcess) -> tuple[float, int]:
    """RSS (MB) and open fds of the process."""
    try:
        p = psutil.Process(proc.pid)
        return p.memory_info().rss / 1e6, p.num_fds()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0, 0


def _private_anon(pid: int) -> int:
    """Bytes of private anonymous memory (heap) of a process; shared memory not counted."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024
    return 0


def _backends(proc: ManagedProcess) -> tuple[float, int]:
    """PostgreSQL's backends together: their private memory (module docstring) and fds."""
    own, fds = 0, 0
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0, 0
    for child in children:
        try:
            own += _private_anon(child.pid)
            fds += child.num_fds()
        except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            continue
    return own / 1e6, fds


async def _lag(bootstrap: str, group: str, topic: str) -> tuple[int, int]:
    """The group's lag on the topic and the records the broker holds on it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()  # no public refresh
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        lag = 0
        for tp in tps:
            committed = await consumer.committed(tp)
            lag += ends[tp] - max(committed or 0, begins[tp])
        return lag, sum(ends[tp] - begins[tp] for tp in tps)
    finally:
        await consumer.stop()


def _pg_sizes(url: str) -> tuple[float, float]:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute(
                "select coalesce(sum(pg_table_size(c.oid)), 0), coalesce(sum(pg_indexes_size(c.oid)), 0)"
                " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
                " where c.relkind in ('r', 'm') and n.nspname not in ('pg_catalog', 'information_schema')"
            ).fetchone()
    except psycopg.OperationalError:
        return 0.0, 0.0
    return (float(row[0]) / 1e6, float(row[1]) / 1e6) if row else (0.0, 0.0)


def sample(rig: Rig, load: CityLoad, t0: float) -> Sample:
    """Everything the soak watches, now."""
    assert rig.platform is not None
    services = rig.platform.services
    keys = list(load.keys())
    s = Sample(minute=(time.monotonic() - t0) / 60, sent=len(keys), stored=max(0, _stored(rig.url, keys)), lag=-1)
    prefix = rig.platform.settings.topic_prefix
    try:
        assert services.kafka_bootstrap
        s.lag, s.retained = asyncio.run(
            asyncio.wait_for(_lag(services.kafka_bootstrap, f"{prefix}-streams", f"{prefix}.raw"), 30)
        )
    except Exception as exc:  # a sample is skipped, never the soak
        print(f"    (lag not sampled: {exc})", flush=True)
    for name, proc in _processes(rig).items():
        s.rss_mb[name], s.fds[name] = _memory(proc)
        if name == "postgres":
            s.rss_mb["pg backends"], s.fds["pg backends"] = _backends(proc)
    s.pg_table_mb, s.pg_index_mb = _pg_sizes(rig.url)
    return s


def measure_capacity(rig: Rig, seconds: float = 20.0) -> float:
    """Stored messages per second with the platform saturated (the sender offers more than it takes)."""
    assert rig.mqtt is not None
    cfg = LoadConfig(rig.mqtt.host, rig.mqtt.port, rig.codes, rate=1500.0, base=datetime.now(UTC))
    span = cfg.step * cfg.messages_per_device(int(1500 * (seconds + 10)))
    cfg = dataclasses.replace(cfg, base=rig.next_window(span))
    load = CityLoad(cfg).start()
    time.sleep(5)  # past the start-up transient
    n0, t0 = _stored(rig.url, list(load.keys())), time.monotonic()
    time.sleep(seconds)
    n1, t1 = _stored(rig.url, list(load.keys())), time.monotonic()
    load.finish(timeout=120)
    keys = list(load.keys())
    _wait(lambda: _stored(rig.url, keys) >= len(keys), 300, 2.0)
    return max(1.0, (n1 - n0) / (t1 - t0))


def _table(samples: list[Sample], names: list[str]) -> list[str]:
    head = "| min | sent | stored | backlog | lag (records) | raw topic holds | "
    head += " | ".join(f"{n} MB / fds" for n in names) + " | PG tables / indexes MB |"
    lines = [head, "|" + "---|" * (7 + len(names))]
    for s in samples:
        procs = " | ".join(f"{s.rss_mb.get(n, 0):.0f} / {s.fds.get(n, 0)}" for n in names)
        lines.append(
            f"| {s.minute:.1f} | {s.sent:,} | {s.stored:,} | {s.sent - s.stored:,} | {s.lag} | {s.retained:,} "
            f"| {procs} | {s.pg_table_mb:.0f} / {s.pg_index_mb:.0f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=0.0, help="length of the soak (0: the warm-up + 30)")
    ap.add_argument(
        "--warmup", type=float, default=0.0, help="minutes before RSS growth is measured (0: auto, module docstring)"
    )
    ap.add_argument(
        "--kafka-retention", type=float, default=5.0, help="retention.ms of the embedded broker's topics, minutes"
    )
    ap.add_argument(
        "--pool-lifetime",
        type=float,
        default=2.0,
        help="minutes before pooled PostgreSQL connections are replaced (CITYBRAIN_DB_POOL_MAX_LIFETIME_S)",
    )
    ap.add_argument("--rate", type=float, default=0.0, help="msg/s; 0: half the capacity measured first")
    ap.add_argument("--devices", type=int, default=3000)
    ap.add_argument("--sample-s", type=float, default=60.0, help="seconds between samples")
    ap.add_argument("--episode-every", type=float, default=5.0, help="minutes between pollution episodes")
    ap.add_argument("--data-dir", type=Path, default=Path("var/soak"))
    args = ap.parse_args(argv)
    root = args.data_dir.resolve() / datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    rig = Rig(root, args.devices, kafka_retention_s=args.kafka_retention * 60, pool_lifetime_s=args.pool_lifetime * 60)
    try:
        rig.start()
        assert rig.mqtt is not None and rig.platform is not None
        rate = args.rate
        if rate <= 0:
            capacity = measure_capacity(rig)
            rate = capacity / 2
            print(f"soak: measured capacity {capacity:,.0f} msg/s stored; soaking at half: {rate:,.0f} msg/s")
        if args.warmup <= 0:
            args.warmup = default_warmup_min(args.devices, rate, args.kafka_retention)
            print(
                f"soak: warm-up {args.warmup:.1f} min: detector windows of {longest_window()} samples at one "
                f"report per device every {args.devices / rate:.1f} s, broker retention {args.kafka_retention:g} min"
            )
        if args.minutes <= 0:
            args.minutes = args.warmup + 30
        print(
            f"soak: {args.devices:,} devices, {rate:,.0f} msg/s QoS 1 for {args.minutes:g} min "
            f"(warm-up {args.warmup:g} min), an episode every {args.episode_every:g} min; data in {root}",
            flush=True,
        )
        step = timedelta(minutes=1)
        cfg = LoadConfig(rig.mqtt.host, rig.mqtt.port, rig.codes, rate=rate, step=step, base=datetime.now(UTC))
        span = step * cfg.messages_per_device(int(2 * rate * args.minutes * 60))
        cfg = dataclasses.replace(cfg, base=rig.next_window(span))
        districts = sorted({c[:6] for c in rig.codes})
        load = CityLoad(cfg).start()
        t0 = time.monotonic()
        samples: list[Sample] = []
        names: list[str] = []
        next_episode = args.episode_every * 60
        n_episode = 0
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= next_episode and elapsed < args.minutes * 60:
                load.inject_episode(districts[n_episode % len(districts)], 60.0)
                n_episode += 1
                next_episode += args.episode_every * 60
            due = (len(samples) + 1) * args.sample_s
            if elapsed >= due or elapsed >= args.minutes * 60:
                s = sample(rig, load, t0)
                samples.append(s)
                names = names or list(s.rss_mb)
                if len(samples) == 1:
                    print("\n".join(_table(samples, names)[:2]), flush=True)
                print(_table([s], names)[-1], flush=True)
                if elapsed >= args.minutes * 60:
                    break
            time.sleep(1.0)
        report = load.finish(timeout=120)
        keys = list(load.keys())
        _wait(lambda: _stored(rig.url, keys) >= len(keys), 300, 2.0)
        final = sample(rig, load, t0)
        result = _check(rig, "soak", load, report, cfg.base, t0, None)
    finally:
        rig.stop()

    print("\n".join(_table([*samples, final], names)))
    failures: list[str] = []
    warm = [s for s in samples if s.minute >= args.warmup - 1e-6] or samples
    # Medians of the first and the last few samples after the warm-up: noida-db's RSS swings
    # by a factor of three minute to minute (its segment caches), one sample says little.
    k = max(1, min(5, len(warm) // 3))
    first, last = warm[:k], warm[-k:]
    growth = {
        n: (statistics.median(s.rss_mb[n] for s in last) / statistics.median(s.rss_mb[n] for s in first) - 1) * 100
        for n in names
        if all(s.rss_mb.get(n) for s in first)
    }
    print(
        f"\nRSS growth after the warm-up (median of minutes {first[0].minute:.0f}–{first[-1].minute:.0f}"
        f" → {last[0].minute:.0f}–{last[-1].minute:.0f}): " + ", ".join(f"{n} {g:+.1f} %" for n, g in growth.items())
    )
    failures += [f"{n} RSS grew {g:.1f} %" for n, g in growth.items() if g >= 10]
    backlog = max((s.sent - s.stored for s in warm), default=0)
    print(f"largest backlog after the warm-up: {backlog:,} messages ({backlog / rate:.1f} s of traffic)")
    if backlog > rate * 60:
        failures.append(f"backlog reached {backlog:,} messages, more than a minute of traffic")
    if final.lag > 0:
        failures.append(f"consumer lag {final.lag} records after the drain")
    print(
        f"sent {result.sent:,} (unacked {result.unacked}, resent {result.resent}), stored {result.stored:,}, "
        f"lost {result.lost}, stored twice {result.duplicated}; alert transitions {result.alert_transitions:,} "
        f"({result.alert_duplicates} twice); {n_episode} episodes"
    )
    if result.lost or result.duplicated or result.unacked or result.alert_duplicates:
        failures.append("not every message stored exactly once")
    print("soak: PASS" if not failures else "soak: FAIL: " + "; ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
