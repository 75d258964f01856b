"""The demo's quiet-day figure: alerts that normal simulated traffic raised, per 100 device-hours.

Run a demo whose simulated clock starts in the past and catches up with the wall clock
(so event times stay behind ``CITYBRAIN_MAX_FUTURE_SKEW_S``), then count::

    citybrain demo --speed 20 --start-ago 10 &      # 10 simulated hours in ~32 wall minutes
    .venv/bin/python -m bench.quiet_day <database-url> --size city --seed 42 --start <ISO start>

Device-hours = located devices of the fleet × simulated hours covered (from ``--start`` to the
newest air reading stored). Alerts of the demo's injected pollution episode (one national
station, :func:`simulators.xiamen.demo_drivers`) are its scenario, not normal traffic, and
are counted apart. Not part of ``make bench``: it reads a demo someone ran.
"""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import datetime

import psycopg

from core.records import Severity
from simulators.xiamen import city_fleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database_url")
    parser.add_argument("--size", default="city")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--start", type=datetime.fromisoformat, required=True, help="the fleet's simulated start")
    args = parser.parse_args()
    sites = city_fleet(args.size, args.seed)
    codes = [s.code for s in sites]
    episode = next(s.code for s in sites if "national" in s.tags)
    with psycopg.connect(args.database_url) as conn:
        newest = conn.execute("select max(ts) from readings_air where device_code = any(%s)", (codes,)).fetchone()
        rows = conn.execute(
            "select rule, severity, device_code, opened_at from alerts where device_code = any(%s) order by opened_at",
            (codes,),
        ).fetchall()
    end = newest[0] if newest and newest[0] else args.start
    hours = (end - args.start).total_seconds() / 3600
    device_hours = len(sites) * hours
    normal = [r for r in rows if r[2] != episode]
    by_sev = Counter(Severity(r[1]).label for r in normal)
    by_rule = Counter((r[0], Severity(r[1]).label) for r in normal)
    print(f"fleet {args.size}: {len(sites)} devices × {hours:.2f} simulated h = {device_hours:,.0f} device-hours")
    print(f"alerts of normal traffic: {dict(by_sev) or 'none'}")
    for (rule, sev), n in by_rule.most_common():
        print(f"  {n:5d}  {sev:8s} {rule}")
    warnings = by_sev.get("warning", 0)
    print(f"warnings per 100 device-hours: {100 * warnings / device_hours:.4f}" if device_hours else "no data yet")
    injected = Counter(r[0] for r in rows if r[2] == episode)
    print(f"injected pollution episode ({episode}): {dict(injected) or 'no alert yet'}")


if __name__ == "__main__":
    main()
