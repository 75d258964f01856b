"""Seeded synthetic sensor series with injected faults and their ground truth.

A clean series is a diurnal sine plus an AR(1) process (slow weather-like
wander) plus white measurement noise, sampled at the model's cadence. Faults
are injected at random, non-overlapping places after a fault-free warm-up:

* ``spike`` — 1–3 samples offset by 8–20 σ (σ: the clean series' noise sd);
* ``stuck`` — 60–240 samples frozen at the value the run started with;
* ``drift`` — a linear ramp of 2–6 σ per day from a start to the series' end
  (a decalibrating sensor stays decalibrated), placed after every other fault;
* ``dropout`` — 10–120 samples missing (the device is silent);
* ``noise_burst`` — 20–60 samples with extra noise of 4–8 σ.

Everything takes a :class:`numpy.random.Generator`, so a seed gives the same
series, faults and labels every time. Pure numpy, no I/O.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from alerts.errors import AnomalyError

__all__ = [
    "Fault",
    "FaultKind",
    "PeerGroup",
    "SeriesSpec",
    "SyntheticSeries",
    "clean_series",
    "make_peer_group",
    "make_series",
]

DEFAULT_START = 1_700_000_000
_DAY = 86_400


class FaultKind(enum.StrEnum):
    """The kinds of injected fault."""

    SPIKE = "spike"
    STUCK = "stuck"
    DRIFT = "drift"
    DROPOUT = "dropout"
    NOISE_BURST = "noise_burst"


@dataclass(frozen=True, slots=True)
class SeriesSpec:
    """Shape of a clean series.

    Attributes:
        base: Mean level.
        amplitude: Half peak-to-peak of the diurnal cycle.
        period_s: Period of the cycle.
        ar_phi: AR(1) coefficient per sample (0.9 at 60 s ≈ a 10-minute memory).
        ar_sd: AR(1) innovation standard deviation.
        noise_sd: White measurement noise standard deviation.
        cadence_s: Sampling interval.
    """

    base: float = 40.0
    amplitude: float = 10.0
    period_s: int = _DAY
    ar_phi: float = 0.9
    ar_sd: float = 0.5
    noise_sd: float = 0.5
    cadence_s: int = 60

    def __post_init__(self) -> None:
        if not 0 <= self.ar_phi < 1:
            raise AnomalyError("ar_phi must be in [0, 1)")
        if self.cadence_s <= 0 or self.period_s <= 0 or self.ar_sd < 0 or self.noise_sd < 0:
            raise AnomalyError("cadence_s and period_s must be > 0, sds >= 0")

    @property
    def sigma(self) -> float:
        """Marginal standard deviation of the noise (AR(1) plus white)."""
        return math.sqrt(self.ar_sd**2 / (1 - self.ar_phi**2) + self.noise_sd**2)


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault: kind, ``[start, end)`` in epoch seconds, and size (in metric units)."""

    kind: FaultKind
    start: int
    end: int
    magnitude: float


@dataclass(frozen=True, slots=True, eq=False)
class SyntheticSeries:
    """A series with its ground truth.

    Attributes:
        times: Epoch seconds of the samples present (dropouts removed).
        values: The values.
        labels: True where a sample lies inside a fault window.
        faults: The injected faults, in time order.
        spec: The clean series' shape.
    """

    times: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    labels: npt.NDArray[np.bool_]
    faults: tuple[Fault, ...]
    spec: SeriesSpec

    def windows(self, kinds: Iterable[FaultKind]) -> list[tuple[int, int]]:
        """Fault windows of the given kinds as ``[start, end)`` sample indices.

        A dropout has no samples, so its window is empty: ``(i, i)`` with ``i``
        the first sample after the gap.
        """
        wanted = set(kinds)
        return [_index_window(self.times, f) for f in self.faults if f.kind in wanted]


@dataclass(frozen=True, slots=True, eq=False)
class PeerGroup:
    """Similar sensors in one district: ``devices × time`` values with ground truth.

    Attributes:
        times: Epoch seconds, shared by all devices.
        values: ``devices × time``.
        labels: ``devices × time``, True inside a drift window.
        faults: Per device, its faults (drift only).
        spec: The shape of the shared signal.
    """

    times: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    labels: npt.NDArray[np.bool_]
    faults: tuple[tuple[Fault, ...], ...]
    spec: SeriesSpec


def _index_window(times: npt.NDArray[np.int64], fault: Fault) -> tuple[int, int]:
    lo = int(np.searchsorted(times, fault.start, side="left"))
    hi = int(np.searchsorted(times, fault.end, side="left"))
    return lo, hi


def _ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> npt.NDArray[np.float64]:
    eps = rng.normal(0.0, sd, n)
    out = np.empty(n)
    # Start from the stationary distribution so there is no burn-in transient.
    prev = rng.normal(0.0, sd / math.sqrt(1 - phi**2)) if sd > 0 else 0.0
    for i in range(n):
        prev = phi * prev + eps[i]
        out[i] = prev
    return out


def clean_series(
    rng: np.random.Generator, n: int, spec: SeriesSpec | None = None, *, start: int = DEFAULT_START
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """A fault-free series: ``(times, values)`` of ``n`` samples at ``spec.cadence_s``."""
    s = spec or SeriesSpec()
    times = start + s.cadence_s * np.arange(n, dtype=np.int64)
    phase = rng.uniform(0, 2 * math.pi)
    diurnal = s.amplitude * np.sin(2 * math.pi * (times - start) / s.period_s + phase)
    values = s.base + diurnal + _ar1(rng, n, s.ar_phi, s.ar_sd) + rng.normal(0.0, s.noise_sd, n)
    return times, values


_LENGTHS: dict[FaultKind, tuple[int, int]] = {
    FaultKind.SPIKE: (1, 3),
    FaultKind.STUCK: (60, 240),
    FaultKind.DROPOUT: (10, 120),
    FaultKind.NOISE_BURST: (20, 60),
}


def _place(rng: np.random.Generator, lo: int, hi: int, length: int, taken: list[tuple[int, int]], gap: int) -> int:
    for _ in range(1000):
        if hi - length <= lo:
            break
        s = int(rng.integers(lo, hi - length))
        if all(s + length + gap <= a or b + gap <= s for a, b in taken):
            return s
    raise AnomalyError("series too short for the requested faults")


def make_series(
    rng: np.random.Generator,
    n: int = 2880,
    kinds: Sequence[FaultKind] = (),
    spec: SeriesSpec | None = None,
    *,
    warmup: int = 180,
    gap: int = 120,
    start: int = DEFAULT_START,
) -> SyntheticSeries:
    """A series of ``n`` samples with one injected fault per entry of ``kinds``.

    Args:
        rng: The random generator (seed it).
        n: Samples on the regular grid, before dropouts are removed.
        kinds: Faults to inject (repeat a kind for several).
        spec: Shape of the clean series.
        warmup: Leading samples kept fault-free (detectors are warming up).
        gap: Fault-free samples between two faults, so they stay separate events.
        start: Epoch seconds of the first sample.
    """
    s = spec or SeriesSpec()
    times, values = clean_series(rng, n, s, start=start)
    sigma = s.sigma
    faults: list[Fault] = []
    taken: list[tuple[int, int]] = []
    keep = np.ones(n, dtype=np.bool_)
    labels = np.zeros(n, dtype=np.bool_)
    limit = n
    if FaultKind.DRIFT in kinds:
        # Drift runs to the end, so it goes last and every other fault before it.
        limit = int(rng.integers(n * 2 // 3, n * 5 // 6))
    for kind in kinds:
        if kind is FaultKind.DRIFT:
            continue
        length = int(rng.integers(_LENGTHS[kind][0], _LENGTHS[kind][1] + 1))
        i = _place(rng, warmup, limit - gap, length, taken, gap)
        j = i + length
        taken.append((i, j))
        if kind is FaultKind.SPIKE:
            mag = float(rng.uniform(8, 20) * sigma * rng.choice([-1.0, 1.0]))
            values[i:j] += mag
        elif kind is FaultKind.STUCK:
            mag = 0.0
            values[i:j] = values[i]
        elif kind is FaultKind.DROPOUT:
            mag = 0.0
            keep[i:j] = False
        else:
            mag = float(rng.uniform(4, 8) * sigma)
            values[i:j] += rng.normal(0.0, mag, length)
        labels[i:j] = True
        faults.append(Fault(kind, int(times[i]), int(times[j - 1]) + s.cadence_s, mag))
    for kind in kinds:
        if kind is FaultKind.DRIFT:
            slope = float(rng.uniform(2, 6) * sigma * rng.choice([-1.0, 1.0])) / _DAY
            values[limit:] += slope * (times[limit:] - times[limit]).astype(np.float64)
            labels[limit:] = True
            faults.append(Fault(kind, int(times[limit]), int(times[-1]) + s.cadence_s, slope * _DAY))
            break
    faults.sort(key=lambda f: f.start)
    return SyntheticSeries(times[keep], values[keep], labels[keep], tuple(faults), s)


def make_peer_group(
    rng: np.random.Generator,
    n_devices: int = 8,
    n: int = 4320,
    n_drifting: int = 1,
    spec: SeriesSpec | None = None,
    *,
    offset_sd: float = 3.0,
    device_sd: float = 1.0,
    start: int = DEFAULT_START,
) -> PeerGroup:
    """Similar sensors sharing one signal; ``n_drifting`` of them drift.

    Each device sees the shared clean series (``spec``) plus a constant
    offset (``N(0, offset_sd)``: low-cost sensors are biased) plus its own
    noise of standard deviation ``device_sd`` (half AR(1), half white). A
    drifting device ramps by 2–6 ``device_sd`` per day from a start in the
    second quarter of the series to its end.
    """
    if not 0 <= n_drifting <= n_devices:
        raise AnomalyError("n_drifting must be between 0 and n_devices")
    s = spec or SeriesSpec()
    times, shared = clean_series(rng, n, s, start=start)
    own = device_sd / math.sqrt(2)
    phi = s.ar_phi
    values = np.empty((n_devices, n))
    for d in range(n_devices):
        values[d] = (
            shared
            + rng.normal(0.0, offset_sd)
            + _ar1(rng, n, phi, own * math.sqrt(1 - phi**2))
            + rng.normal(0.0, own, n)
        )
    labels = np.zeros((n_devices, n), dtype=np.bool_)
    faults: list[tuple[Fault, ...]] = [() for _ in range(n_devices)]
    for d in rng.choice(n_devices, size=n_drifting, replace=False).tolist():
        i = int(rng.integers(n // 4, n // 2))
        slope = float(rng.uniform(2, 6) * device_sd * rng.choice([-1.0, 1.0])) / _DAY
        values[d, i:] += slope * (times[i:] - times[i]).astype(np.float64)
        labels[d, i:] = True
        faults[d] = (Fault(FaultKind.DRIFT, int(times[i]), int(times[-1]) + s.cadence_s, slope * _DAY),)
    return PeerGroup(times, values, labels, tuple(faults), s)
