"""The detectors' step of the stream worker alone: a steady batch, and the first batch after a restart.

:func:`alerts.anomaly.stream.evaluate_anomalies` over one batch of city-like traffic: ``--devices``
air stations (shipped detectors: ewma, stuck and drift on six pollutants, robust_z on PM2.5), one
message each, after ``--history`` minutes of samples. "steady" reuses the banks kept in memory
(:class:`~alerts.anomaly.stream.DetectorMemory`); "after restart" reads every document anew, as
a worker does after a restart or when a partition is assigned to it, so every series' saved
states are loaded. No database, no Kafka: the worker's own CPU for this step, best of
``--repeat``. Asserts nothing. Run: ``python -m bench.bench_anomaly_stream [--devices 2000]``.
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from alerts.anomaly.config import shipped_anomaly_config
from alerts.anomaly.stream import DetectorMemory, SeriesDevice, evaluate_anomalies
from core.jsonio import dumps, loads

__all__ = ["main"]

_METRICS = (("pm25", 30.0), ("pm10", 50.0), ("no2", 30.0), ("co", 0.6), ("o3", 60.0), ("so2", 8.0))
_T0 = datetime(2026, 11, 29, tzinfo=UTC)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its figures and return them (``anomaly_stream`` row)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--history", type=int, default=40, help="minutes of samples before the measured batch")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    cfg = shipped_anomaly_config()
    rng = np.random.default_rng(args.seed)
    devs = [SeriesDevice(f"350203030800{i:05d}", "350203", "air", "air-station") for i in range(args.devices)]

    def batch(minute: int) -> list[tuple[SeriesDevice, str, datetime, float]]:
        t = _T0 + timedelta(minutes=minute)
        return [(d, m, t, float(base * rng.lognormal(0, 0.1))) for d in devs for m, base in _METRICS]

    states: dict[str, Any] = {}
    memory = DetectorMemory()
    for minute in range(args.history):
        evaluate_anomalies(cfg, batch(minute), states, memory=memory)
    saved = dumps(states)
    steady, restart = [], []
    for rep in range(args.repeat):
        kept = loads(saved)
        warm = DetectorMemory()
        evaluate_anomalies(cfg, batch(args.history + 2 * rep), kept, memory=warm)  # loads: rows kept now
        samples = batch(args.history + 2 * rep + 1)
        fresh = loads(dumps(kept))  # the same documents, read anew
        t0 = time.process_time()
        evaluate_anomalies(cfg, samples, kept, memory=warm)
        steady.append(time.process_time() - t0)
        t0 = time.process_time()
        evaluate_anomalies(cfg, samples, fresh, memory=DetectorMemory())
        restart.append(time.process_time() - t0)
    n = args.devices
    out = {
        "devices": n,
        "steady_us_per_msg": round(1e6 * min(steady) / n, 1),
        "after_restart_us_per_msg": round(1e6 * min(restart) / n, 1),
        "document_bytes_per_device": len(saved) // n,
    }
    print(", ".join(f"{k}={v}" for k, v in out.items()))
    return out


if __name__ == "__main__":
    main()
