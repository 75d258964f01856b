"""The demo's quiet-day figure: alerts that normal simulated traffic raised, per 100 device-hours.

Run a demo whose simulated clock starts in the past and catches up with the wall clock
(so event times stay behind ``CITYBRAIN_MAX_FUTURE_SKEW_S``), then count::

    citybrain demo --speed 20 --start-ago 20 &      # 30 wall minutes after warm-up: ~10 simulated h
    .venv/bin/python -m bench.quiet_day <database-url> --size city --seed 42 --start <ISO start> --warmup-h 2.5

Alerts are counted from ``--start`` + ``--warmup-h`` (the detectors' warm-up, docs/anomaly.md)
to the newest air reading stored; device-hours = devices of the fleet × those simulated
hours. Rule and anomaly alerts carry event (simulated) times; liveness alerts
(``device.stale``, ``device.offline``) are judged on receive times, i.e. the wall clock, and
say how the platform kept up rather than what the traffic was: they are listed apart.
Alerts of the demo's injected pollution episode (one national station,
:func:`simulators.xiamen.demo_drivers`) are its scenario, not normal traffic, and are
counted apart. Not part of ``make bench``: it reads a demo someone ran.
"""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import datetime, timedelta

import psycopg

from core.records import Severity
from simulators.xiamen import city_fleet

#: Judged on receive times (the wall clock), not on the simulated traffic.
LIVENESS_RULES = ("device.stale", "device.offline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database_url")
    parser.add_argument("--size", default="city", help="fleet size the demo ran (small, city, large)")
    parser.add_argument("--seed", type=int, default=42, help="fleet seed the demo ran")
    parser.add_argument("--start", type=datetime.fromisoformat, required=True, help="the fleet's simulated start")
    parser.add_argument(
        "--warmup-h", type=float, default=0.0, help="simulated hours after --start left out (detectors' warm-up)"
    )
    args = parser.parse_args()
    sites = city_fleet(args.size, args.seed)
    codes = [s.code for s in sites]
    episode = next(s.code for s in sites if "national" in s.tags)
    since = args.start + timedelta(hours=args.warmup_h)
    with psycopg.connect(args.database_url) as conn:
        newest = conn.execute("select max(ts) from readings_air where device_code = any(%s)", (codes,)).fetchone()
        rows = conn.execute(
            "select rule, severity, device_code, opened_at, device_class from alerts"
            " where device_code = any(%s) order by opened_at",
            (codes,),
        ).fetchall()
    end = newest[0] if newest and newest[0] else since
    hours = max(0.0, (end - since).total_seconds() / 3600)
    device_hours = len(sites) * hours
    liveness = [r for r in rows if r[0] in LIVENESS_RULES]
    traffic = [r for r in rows if r[0] not in LIVENESS_RULES and since <= r[3] <= end]
    normal = [r for r in traffic if r[2] != episode]
    by_sev = Counter(Severity(r[1]).label for r in normal)
    by_rule = Counter((r[0], Severity(r[1]).label, r[4]) for r in normal)
    per = 100 / device_hours if device_hours else 0.0
    print(
        f"fleet {args.size}: {len(sites)} devices × {hours:.2f} simulated h "
        f"({since.isoformat()} → {end.isoformat()}) = {device_hours:,.0f} device-hours"
    )
    print(f"alerts of normal traffic: {dict(by_sev) or 'none'}")
    for (rule, sev, cls), n in sorted(by_rule.items(), key=lambda kv: (-Severity.parse(kv[0][1]), -kv[1])):
        print(f"  {n:5d}  {sev:8s} {rule:28s} {cls or '':8s} {n * per:.3f} per 100 device-hours")
    for sev in ("critical", "major", "warning"):
        print(f"{sev}s per 100 device-hours: {by_sev.get(sev, 0) * per:.4f}" if device_hours else "no data yet")
    injected = Counter(r[0] for r in traffic if r[2] == episode)
    print(f"injected pollution episode ({episode}): {dict(injected) or 'no alert yet'}")
    early = Counter((r[0], Severity(r[1]).label) for r in rows if r[0] not in LIVENESS_RULES and r[3] < since)
    print(f"in the warm-up (not counted): {dict(early) or 'none'}")
    live = Counter((r[0], Severity(r[1]).label) for r in liveness)
    print(f"liveness (wall clock, whole run): {dict(live) or 'none'}")


if __name__ == "__main__":
    main()
