"""Assignment throughput: points/s of :meth:`geo.assign.Assigner.assign_many`.

Builds the shipped districts and the 0.01° grid, draws uniformly random points
over Xiamen's bounding box (about half fall at sea, as real noise would not,
so the figure is conservative for the outside path too), and times
``assign_many`` and ``fences_many`` over three geofences.

Run: ``.venv/bin/python -m bench.bench_geo [--points 1000000] [--repeat 3]``.
It asserts nothing: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from shapely.geometry import box

from geo.assign import Assigner
from geo.districts import load_districts
from geo.grid import Grid


def main(argv: list[str] | None = None) -> None:
    """Print points/s of assign_many and fences_many."""
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
    outside = assigner.assign_many(lons, lats).outside.mean()
    print(f"share outside every district: {outside:.1%}")


if __name__ == "__main__":
    main()
