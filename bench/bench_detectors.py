"""Precision / recall of each anomaly detector on seeded synthetic series, and bank throughput.

Run from the repository root::

    python -m bench.bench_detectors [--seed 2024] [--series 200] [--size 100000]

Prints two tables and asserts nothing (numbers go into ``docs/anomaly.md``).
Scoring is event-level, see :mod:`alerts.anomaly.evaluate`. Faulty series
carry two spikes, a stuck run, a dropout and a noise burst over two days at a
60 s cadence; clean series carry none; peer groups are eight sensors over
three days, one of which drifts (or none, in the clean groups).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np

from alerts.anomaly import (
    DriftBank,
    DriftParams,
    EwmaBank,
    EwmaParams,
    RateBank,
    RateParams,
    RobustZBank,
    RobustZParams,
    StuckBank,
    StuckParams,
    liveness_many,
)
from alerts.anomaly.evaluate import EventScore, score_events
from alerts.anomaly.synthetic import FaultKind, SeriesSpec, SyntheticSeries, make_peer_group, make_series
from tests.unit.alerts.oracles import (
    BatchResult,
    drift_batch,
    ewma_batch,
    rate_batch,
    robust_z_batch,
    stuck_batch,
)

FAULTS = (FaultKind.SPIKE, FaultKind.SPIKE, FaultKind.STUCK, FaultKind.DROPOUT, FaultKind.NOISE_BURST)
ALL_KINDS = tuple(FaultKind)
SAMPLES = 2880  # two days at 60 s
SPEC = SeriesSpec()
# Samples after a fault a detector does not target during which its alarms count as neither true nor false:
# the baseline is re-learning (a stuck run collapses the EWMA variance, fills the median window).
SETTLE = 120


def rate_limit(spec: SeriesSpec, k: float = 6.0) -> float:
    """``k`` standard deviations of the clean series' first difference, per second.

    In production ``max_rate`` is the metric's physical limit; here it is
    derived from the generator so the benchmark is self-consistent.
    """
    diff_var = 2 * spec.ar_sd**2 / (1 + spec.ar_phi) + 2 * spec.noise_sd**2
    return k * math.sqrt(diff_var) / spec.cadence_s


Runner = Callable[[SyntheticSeries], BatchResult]

DETECTORS: dict[str, tuple[Runner, tuple[FaultKind, ...], int]] = {
    # name: (runner, target faults, tolerance in samples)
    "robust_z": (
        lambda s: robust_z_batch(s.times, s.values, RobustZParams()),
        (FaultKind.SPIKE, FaultKind.NOISE_BURST),
        2,
    ),
    "ewma": (lambda s: ewma_batch(s.times, s.values, EwmaParams()), (FaultKind.SPIKE, FaultKind.NOISE_BURST), 2),
    "rate": (lambda s: rate_batch(s.times, s.values, RateParams(rate_limit(s.spec))), (FaultKind.SPIKE,), 2),
    "stuck": (lambda s: stuck_batch(s.times, s.values, StuckParams()), (FaultKind.STUCK,), 0),
}


def score_series(
    rng: np.random.Generator, n_faulty: int, n_clean: int
) -> tuple[dict[str, EventScore], dict[str, EventScore]]:
    """Per detector: pooled score on faulty series, and on clean series (false alarms only)."""
    faulty = {name: EventScore() for name in DETECTORS}
    clean = {name: EventScore() for name in DETECTORS}
    for i in range(n_faulty + n_clean):
        series = make_series(rng, SAMPLES, FAULTS if i < n_faulty else ())
        bucket = faulty if i < n_faulty else clean
        for name, (run, targets, tol) in DETECTORS.items():
            mask = run(series).mask
            others = tuple(k for k in ALL_KINDS if k not in targets)
            bucket[name] += score_events(
                mask, series.windows(targets), tolerance=tol, ignore=series.windows(others), settle=SETTLE
            )
    return faulty, clean


def score_drift(rng: np.random.Generator, n_groups: int, n_clean: int) -> tuple[EventScore, EventScore]:
    """Drift detector on peer groups: pooled over devices of faulty and of clean groups."""
    faulty, clean = EventScore(), EventScore()
    for g in range(n_groups + n_clean):
        group = make_peer_group(rng, n_drifting=1 if g < n_groups else 0)
        res = drift_batch(group.times, group.values, DriftParams())
        for d in range(group.values.shape[0]):
            windows = [
                (int(np.searchsorted(group.times, f.start)), int(np.searchsorted(group.times, f.end)))
                for f in group.faults[d]
            ]
            sc = score_events(res.mask[d], windows)
            if g < n_groups:
                faulty += sc
            else:
                clean += sc
    return faulty, clean


def score_silence(
    rng: np.random.Generator, n_faulty: int, n_clean: int, k: float = 3.0
) -> tuple[EventScore, EventScore]:
    """Silence checks at every cadence tick, vectorised over the series at each tick."""
    faulty, clean = EventScore(), EventScore()
    for bucket_is_faulty, count in ((True, n_faulty), (False, n_clean)):
        series = [make_series(rng, SAMPLES, FAULTS if bucket_is_faulty else ()) for _ in range(count)]
        ticks = series[0].times[0] + SPEC.cadence_s * np.arange(SAMPLES, dtype=np.int64)
        connected = rng.random(count) < 0.5
        silent = np.zeros((count, SAMPLES), dtype=np.bool_)
        # last_seen[s, j]: newest sample of series s at or before tick j.
        last_idx = np.stack([np.searchsorted(s.times, ticks, side="right") - 1 for s in series])
        last_seen = np.stack([s.times[np.maximum(ix, 0)] for s, ix in zip(series, last_idx, strict=True)])
        for j, now in enumerate(ticks.tolist()):
            codes = liveness_many(last_seen[:, j], now, SPEC.cadence_s, connected, k=k)
            silent[:, j] = (codes == 1) | (codes == 2)
        for s, row in zip(series, silent, strict=True):
            windows = [
                (int(np.searchsorted(ticks, f.start)), int(np.searchsorted(ticks, f.end)))
                for f in s.faults
                if f.kind is FaultKind.DROPOUT
            ]
            sc = score_events(row, windows)
            if bucket_is_faulty:
                faulty += sc
            else:
                clean += sc
    return faulty, clean


def throughput(size: int, steps: int, rng: np.random.Generator) -> dict[str, float]:
    """Updates per second of each bank over ``size`` series (warmed up first)."""
    out: dict[str, float] = {}
    banks: dict[str, Callable[[], tuple[object, int]]] = {
        "robust_z": lambda: (RobustZBank(size, RobustZParams()), RobustZParams().min_samples),
        "ewma": lambda: (EwmaBank(size, EwmaParams()), EwmaParams().min_samples),
        "rate": lambda: (RateBank(size, RateParams(rate_limit(SPEC))), 2),
        "stuck": lambda: (StuckBank(size, StuckParams()), 2),
    }
    for name, factory in banks.items():
        bank, warm = factory()
        update = bank.update  # type: ignore[attr-defined]
        t0 = 1_700_000_000
        for i in range(warm):
            update(t0 + 60 * i, rng.normal(40.0, 2.0, size))
        xs = rng.normal(40.0, 2.0, (steps, size))
        start = time.perf_counter()
        for i in range(steps):
            update(t0 + 60 * (warm + i), xs[i])
        elapsed = time.perf_counter() - start
        out[name] = steps * size / elapsed if elapsed > 0 else float("inf")
    # Drift: a per-sample step (a block closes every `block` steps), with a scalar peer median.
    drift = DriftBank(size, DriftParams(block=2, min_blocks=2))
    t0 = 1_700_000_000
    for i in range(4):
        drift.update(t0 + 60 * i, rng.normal(40.0, 2.0, size), 40.0)
    xs = rng.normal(40.0, 2.0, (steps, size))
    start = time.perf_counter()
    for i in range(steps):
        drift.update(t0 + 60 * (4 + i), xs[i], 40.0)
    elapsed = time.perf_counter() - start
    out["drift"] = steps * size / elapsed if elapsed > 0 else float("inf")
    # Silence: one vectorised liveness check over all devices.
    seen = np.full(size, 1_700_000_000, dtype=np.int64) - rng.integers(0, 600, size)
    conn = rng.random(size) < 0.9
    start = time.perf_counter()
    for _ in range(steps):
        liveness_many(seen, 1_700_000_300, 60.0, conn)
    elapsed = time.perf_counter() - start
    out["silence"] = steps * size / elapsed if elapsed > 0 else float("inf")
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--series", type=int, default=150, help="faulty series (half as many clean ones)")
    ap.add_argument("--groups", type=int, default=30, help="peer groups with a drifting device (half as many clean)")
    ap.add_argument("--size", type=int, default=100_000, help="series per bank for the throughput table")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    began = time.perf_counter()
    rng = np.random.default_rng(args.seed)

    faulty, clean = score_series(rng, args.series, args.series // 2)
    df, dc = score_drift(rng, args.groups, args.groups // 2)
    sf, sc = score_silence(rng, args.series, args.series // 2)
    faulty["drift"], clean["drift"] = df, dc
    faulty["silence"], clean["silence"] = sf, sc

    print(f"Event-level precision / recall (seed {args.seed})")
    head = ("detector", "faults", "found", "recall", "alarms", "false", "precision", "clean FA")
    print(f"{head[0]:<10} " + " ".join(f"{h:>{max(len(h), 6)}}" for h in head[1:]))
    for name, s in faulty.items():
        c = clean[name]
        print(
            f"{name:<10} {s.events:>6} {s.detected:>6} {s.recall:>6.3f} {s.alarms:>6} {s.false_alarms:>6}"
            f" {s.precision:>9.3f} {c.false_alarms:>8}"
        )
    print()
    rates = throughput(args.size, args.steps, rng)
    print(f"Vectorised bank throughput, {args.size} series, {args.steps} steps")
    print(f"{'detector':<10} {'updates/s':>14}")
    for name, r in rates.items():
        print(f"{name:<10} {r:>14,.0f}")
    print(f"\n(total {time.perf_counter() - began:.1f} s)")


if __name__ == "__main__":
    main()
