"""Statistical anomaly detectors per (device, metric) series (GitHub issue 6).

One module per concern:

* :mod:`~alerts.anomaly.result` — :class:`Anomaly` and the batch / bank result types;
* :mod:`~alerts.anomaly.detectors` — robust z-score, EWMA chart, rate-of-change
  spikes, stuck sensor, drift against peers, silence; each in batch, online
  and (where natural) vectorised many-series form;
* :mod:`~alerts.anomaly.synthetic` — seeded series with injected faults and labels;
* :mod:`~alerts.anomaly.evaluate` — event-level precision and recall.

Nothing here does I/O. See ``docs/anomaly.md`` for parameters, costs and
measured precision/recall.
"""

from __future__ import annotations

from alerts.anomaly.detectors import (
    LIVENESS_CODES,
    MAD_SCALE,
    NEVER_SEEN,
    DriftBank,
    DriftDetector,
    DriftParams,
    DriftState,
    EwmaBank,
    EwmaDetector,
    EwmaParams,
    EwmaState,
    Liveness,
    RateBank,
    RateDetector,
    RateParams,
    RateState,
    RobustZBank,
    RobustZDetector,
    RobustZParams,
    RobustZState,
    StuckBank,
    StuckDetector,
    StuckParams,
    StuckState,
    drift_batch,
    ewma_batch,
    liveness,
    liveness_many,
    peer_median,
    rate_batch,
    robust_z_batch,
    silence_anomaly,
    stuck_batch,
)
from alerts.anomaly.result import Anomaly, BankUpdate, BatchResult, DetectorKind, OnlineDetector

__all__ = [
    "LIVENESS_CODES",
    "MAD_SCALE",
    "NEVER_SEEN",
    "Anomaly",
    "BankUpdate",
    "BatchResult",
    "DetectorKind",
    "DriftBank",
    "DriftDetector",
    "DriftParams",
    "DriftState",
    "EwmaBank",
    "EwmaDetector",
    "EwmaParams",
    "EwmaState",
    "Liveness",
    "OnlineDetector",
    "RateBank",
    "RateDetector",
    "RateParams",
    "RateState",
    "RobustZBank",
    "RobustZDetector",
    "RobustZParams",
    "RobustZState",
    "StuckBank",
    "StuckDetector",
    "StuckParams",
    "StuckState",
    "drift_batch",
    "ewma_batch",
    "liveness",
    "liveness_many",
    "peer_median",
    "rate_batch",
    "robust_z_batch",
    "silence_anomaly",
    "stuck_batch",
]
