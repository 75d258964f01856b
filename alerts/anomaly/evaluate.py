"""Event-level precision and recall of a detector's mask against injected faults.

Counting per sample would punish detectors for what they cannot know (a
stuck run is only stuck once it has lasted N samples; a drift only shows
after it has grown), so scoring is per *event*:

* an injected fault is **detected** if the detector fires anywhere in its
  window, extended by ``tolerance`` samples (the sample after a spike, the
  first samples after a dropout);
* an **alarm** is a run of consecutive firing samples; it is **true** if it
  overlaps an extended fault window, **false** otherwise. Alarms overlapping
  faults the detector is not meant to find (``ignore``), or the ``settle``
  samples after them while its baseline re-learns, count as neither.

Precision = true alarms / alarms; recall = detected faults / faults.
Both are 1.0 when there is nothing to count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["EventScore", "alarm_runs", "score_events"]


@dataclass(frozen=True, slots=True)
class EventScore:
    """Counts behind precision and recall; add two to pool them."""

    events: int = 0
    detected: int = 0
    alarms: int = 0
    true_alarms: int = 0

    @property
    def precision(self) -> float:
        """True alarms / alarms (1.0 with no alarms)."""
        return self.true_alarms / self.alarms if self.alarms else 1.0

    @property
    def recall(self) -> float:
        """Detected faults / faults (1.0 with no faults)."""
        return self.detected / self.events if self.events else 1.0

    @property
    def false_alarms(self) -> int:
        """Alarms that matched no fault."""
        return self.alarms - self.true_alarms

    def __add__(self, other: EventScore) -> EventScore:
        return EventScore(
            self.events + other.events,
            self.detected + other.detected,
            self.alarms + other.alarms,
            self.true_alarms + other.true_alarms,
        )


def alarm_runs(mask: npt.ArrayLike) -> list[tuple[int, int]]:
    """Runs of consecutive True as ``[start, end)`` index pairs."""
    m = np.asarray(mask, dtype=np.int8)
    edges = np.diff(np.concatenate([[0], m, [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def score_events(
    mask: npt.ArrayLike,
    windows: Sequence[tuple[int, int]],
    *,
    tolerance: int = 0,
    ignore: Sequence[tuple[int, int]] = (),
    settle: int = 0,
) -> EventScore:
    """Score one series' firing mask against its fault windows (sample indices, ``[start, end)``)."""
    runs = alarm_runs(mask)
    ext = [(s, e + tolerance) for s, e in windows]
    ign = [(s, e + max(tolerance, settle)) for s, e in ignore]
    detected = sum(1 for w in ext if any(_overlaps(r, w) for r in runs))
    alarms = true_alarms = 0
    for r in runs:
        if any(_overlaps(r, w) for w in ext):
            alarms += 1
            true_alarms += 1
        elif not any(_overlaps(r, w) for w in ign):
            alarms += 1
    return EventScore(len(windows), detected, alarms, true_alarms)
