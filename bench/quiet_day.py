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

``--rules-day DATE`` (no database) runs instead every air unit of the fleet through the
shipped rules offline, one sample a minute for a whole simulated day (Beijing time) of
normal traffic, seeded as the demo seeds them, and counts the alerts each rule opened and
the minutes over the 75 µg/m³ PM2.5 limit, per model: a run covers both rush hours, which
30 wall minutes of the demo may not.
"""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta, timezone

import psycopg

from alerts.engine import DeviceContext, evaluate_device
from alerts.rules import shipped_rules
from core.records import Reading, Severity
from devices.models import shipped_models
from simulators.city import make_model
from simulators.xiamen import city_fleet

#: Judged on receive times (the wall clock), not on the simulated traffic.
LIVENESS_RULES = ("device.stale", "device.offline")


_BEIJING = timezone(timedelta(hours=8))


def rules_day(size: str, seed: int, day: date) -> None:
    """Every air unit of the fleet through the shipped rules for one simulated day, offline."""
    sites = [s for s in city_fleet(size, seed) if s.model_id in ("air-station", "air-micro")]
    rules = shipped_rules().for_class("air")
    models = shipped_models()
    units = {site.code: make_model(site, seed * 100_003 + i) for i, site in enumerate(city_fleet(size, seed))}
    opened: Counter[tuple[str, str, str]] = Counter()
    over: Counter[str] = Counter()
    start = datetime.combine(day, time(0), _BEIJING).astimezone(UTC)
    for site in sites:
        unit = units[site.code]
        metrics = models.get(site.model_id).metrics
        ctx = DeviceContext(site.code, site.district, "air", attributes=dict(site.attributes), model=site.model_id)
        snap: dict[str, list[float]] = {}
        states: dict[str, object] = {}
        wm = 0
        for minute in range(24 * 60):
            t = start + timedelta(minutes=minute)
            values = unit.sample(t)
            over[site.model_id] += values.get("pm25", 0.0) > 75
            readings = [Reading(site.code, k, t, t, v, metrics[k].unit) for k, v in values.items() if k in metrics]
            out, wm = evaluate_device(rules, readings, ctx, snap, states, wm)
            opened.update((tr.alert.rule, site.model_id, tr.alert.severity.label) for tr in out if tr.kind == "open")
    count = Counter(s.model_id for s in sites)
    print(f"fleet {size}: {dict(count)} air units × 24 simulated h of {day} (Beijing), one sample a minute")
    for model, n in sorted(count.items()):
        print(f"  {model}: {over[model]} unit-minutes with PM2.5 > 75 µg/m³ of {n * 1440:,}")
    print(f"alerts opened: {dict(opened) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    if "--rules-day" in __import__("sys").argv:
        parser.add_argument("--rules-day", type=date.fromisoformat, required=True, help="simulated day, offline")
        parser.add_argument("--size", default="city", help="fleet size (small, city, large)")
        parser.add_argument("--seed", type=int, default=42, help="fleet seed")
        a = parser.parse_args()
        rules_day(a.size, a.seed, a.rules_day)
        return
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
