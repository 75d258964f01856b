"""What the anomaly detectors return.

The vectorised banks return a :class:`BankUpdate` (one row per series
updated); an :class:`Anomaly` describes one firing sample (the reference
forms in ``tests/unit/alerts/oracles.py`` return them, and silence is told
as one).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from alerts.errors import AnomalyError

__all__ = [
    "Anomaly",
    "BankUpdate",
    "DetectorKind",
]


class DetectorKind(enum.StrEnum):
    """Which detector fired; also the ``rule`` id an alert built from it carries."""

    ROBUST_Z = "robust_z"
    EWMA = "ewma"
    RATE = "rate"
    STUCK = "stuck"
    DRIFT = "drift"
    SILENCE = "silence"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One sample (or one silence check) that a detector judged anomalous.

    Attributes:
        detector: The detector that fired.
        time: Epoch seconds of the sample that fired (for silence: ``now``).
        value: The sample's value (for silence: seconds since last seen).
        baseline: What the detector expected: rolling median, EWMA mean,
            reference value, flat level, peer median plus learnt bias, or the
            cadence in seconds for silence.
        score: The detector's statistic (robust z, EWMA z, rate, flat run
            length, CUSUM sum, or age in cadences), in the same units as
            ``threshold``.
        threshold: The limit the score crossed.
        window_start: Epoch seconds of the oldest sample the decision used.
        window_end: Epoch seconds of the newest sample the decision used.
        detail: Short qualifier (``up``/``down`` for drift, ``stale``/``offline`` for silence).
    """

    detector: DetectorKind
    time: int
    value: float
    baseline: float
    score: float
    threshold: float
    window_start: int
    window_end: int
    detail: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.detector, DetectorKind):
            raise AnomalyError("detector must be a DetectorKind")
        for name in ("value", "baseline", "score", "threshold"):
            if not math.isfinite(getattr(self, name)):
                raise AnomalyError(f"anomaly {name} must be finite")
        if self.window_start > self.window_end:
            raise AnomalyError("anomaly window starts after it ends")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (no NaN), for the alert payload's labels or a log line."""
        return {
            "detector": self.detector.value,
            "time": self.time,
            "value": self.value,
            "baseline": self.baseline,
            "score": self.score,
            "threshold": self.threshold,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "detail": self.detail,
        }


# eq=False: dataclass equality on arrays would raise ("truth value of an array is ambiguous").
@dataclass(frozen=True, slots=True, eq=False)
class BankUpdate:
    """One vectorised step over many series: one row per series updated.

    Attributes:
        fired: True where that series' sample was anomalous.
        score: The statistic; NaN where nothing was scored.
        baseline: The baseline; NaN where nothing was scored.
    """

    fired: npt.NDArray[np.bool_]
    score: npt.NDArray[np.float64]
    baseline: npt.NDArray[np.float64]
