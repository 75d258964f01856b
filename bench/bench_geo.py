"""Assignment throughput: points/s of :meth:`geo.assign.Assigner.assign_many`.

Builds the shipped districts and the 0.01° grid, draws uniformly random points
over Xiamen's bounding box (about half fall at sea, as real noise would not,
so the figure is conservative for the outside path too), and times
``assign_many`` and ``fences_many`` over three geofences. Then the rule
engine's fence membership (:class:`alerts.geofence.FenceMembership`) over the
same points and 300 school-zone-sized fences (Xiamen has ~300 schools), and
debounced tracking of mobile devices (:class:`geo.tracking.FenceTracker`).

Run: ``.venv/bin/python -m bench.bench_geo [--points 1000000] [--repeat 3]``.
It asserts nothing: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from shapely.geometry import box

from alerts.geofence import FenceMembership, FenceRecord
from geo.assign import Assigner
from geo.districts import load_districts
from geo.grid import Grid
from geo.sample import random_points_in
from geo.tracking import FenceTracker, Fix


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print (and return, for ``make bench``'s summary) points/s of assignment, membership and tracking."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    districts = load_districts()
    t0 = time.perf_counter()
    grid = Grid.build(districts, cell_deg=0.01)
    fences = [
        ("xmu", box(118.09, 24.43, 118.11, 24.45)),
        ("island-south", box(118.07, 24.42, 118.21, 24.47)),
        ("airport", box(118.11, 24.53, 118.15, 24.56)),
    ]
    assigner = Assigner(districts, grid, fences)
    print(f"grid build + assigner: {time.perf_counter() - t0:.3f} s ({len(grid)} cells)")

    rng = np.random.default_rng(7)
    lons = rng.uniform(117.86, 118.44, args.points)
    lats = rng.uniform(24.38, 24.91, args.points)
    figures: dict[str, Any] = {"points": args.points}
    for name, fn in (("assign_many", assigner.assign_many), ("fences_many", assigner.fences_many)):
        best = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn(lons, lats)
            best = min(best, time.perf_counter() - t)
        print(
            f"{name}: {args.points:,} points in {best:.3f} s = {args.points / best:,.0f} points/s"
            f" (best of {args.repeat})"
        )
        figures[f"{name}_points_per_s"] = round(args.points / best)
    outside = assigner.assign_many(lons, lats).outside.mean()
    print(f"share outside every district: {outside:.1%}")

    # Rule-scope membership: 300 fences of ~300 m, inside the districts, over every point.
    centres = np.concatenate([np.column_stack(random_points_in(d.geometry, 50, rng)) for d in districts])
    half = 0.0015
    schools = [
        FenceRecord(f"school-{i}", f"school {i}", "school_zone", box(x - half, y - half, x + half, y + half))
        for i, (x, y) in enumerate(centres.tolist())
    ]
    codes = [f"{i:017d}" for i in range(args.points)]
    t = time.perf_counter()
    membership = FenceMembership(schools, codes, lons, lats)
    took = time.perf_counter() - t
    print(
        f"fence membership: {args.points:,} devices x {len(schools)} fences in {took:.3f} s"
        f" = {args.points / took:,.0f} devices/s; {len(membership):,} inside a fence"
    )
    figures["membership_devices_per_s"] = round(args.points / took)

    # Debounced tracking: 1,000 mobile devices, 10 fixes each, in one batch.
    tracker = FenceTracker([(f.id, f.geometry) for f in schools])
    start = datetime(2026, 11, 29, tzinfo=UTC)
    fixes = [
        Fix(f"{d:017d}", float(lons[d * 10 + k]), float(lats[d * 10 + k]), start + timedelta(seconds=15 * k))
        for d in range(1000)
        for k in range(10)
    ]
    t = time.perf_counter()
    states, _events = tracker.step({}, fixes)
    took = time.perf_counter() - t
    print(
        f"fence tracking: {len(fixes):,} fixes of {len(states):,} devices in {took:.3f} s"
        f" = {len(fixes) / took:,.0f} fixes/s"
    )
    figures["tracking_fixes_per_s"] = round(len(fixes) / took)
    return figures


if __name__ == "__main__":
    main()
