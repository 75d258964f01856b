"""Statistical anomaly detectors per (device, metric) series (GitHub issue 6).

One module per concern:

* :mod:`~alerts.anomaly.result` — :class:`Anomaly` and the bank result type;
* :mod:`~alerts.anomaly.detectors` — robust z-score, EWMA chart, rate-of-change
  spikes, stuck sensor, drift against peers, silence; each as a vectorised
  many-series bank, the form the stream worker runs (the one-series reference
  forms the banks are tested against are in ``tests/unit/alerts/oracles.py``);
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
    DriftParams,
    DriftState,
    EwmaBank,
    EwmaParams,
    EwmaState,
    Liveness,
    RateBank,
    RateParams,
    RateState,
    RobustZBank,
    RobustZParams,
    RobustZState,
    StuckBank,
    StuckParams,
    StuckState,
    liveness_many,
    peer_median,
)
from alerts.anomaly.result import Anomaly, BankUpdate, DetectorKind

__all__ = [
    "LIVENESS_CODES",
    "MAD_SCALE",
    "NEVER_SEEN",
    "Anomaly",
    "BankUpdate",
    "DetectorKind",
    "DriftBank",
    "DriftParams",
    "DriftState",
    "EwmaBank",
    "EwmaParams",
    "EwmaState",
    "Liveness",
    "RateBank",
    "RateParams",
    "RateState",
    "RobustZBank",
    "RobustZParams",
    "RobustZState",
    "StuckBank",
    "StuckParams",
    "StuckState",
    "liveness_many",
    "peer_median",
]
