"""Reference forms of the anomaly detectors: the oracles the production banks are tested against.

:mod:`alerts.anomaly.detectors` holds what the stream worker runs: banks that
update many series with one numpy call. Here are the same detectors written
the plain way; the tests (and ``bench/bench_detectors.py``, for the precision
and recall in docs/anomaly.md) check that all forms give the same decisions
sample for sample:

* **batch** — ``<name>_batch(times, values, params)`` over one 1-D series
  (``times`` int64 epoch seconds, strictly increasing; ``values`` float64)
  returning a :class:`BatchResult`; it raises ``AnomalyError`` on
  non-increasing times, which there is a caller bug;
* **online** — ``<Name>Detector(params, state).update(t, x) -> Anomaly | None``
  over one series, with the production states (``<Name>State``); like the
  banks it ignores non-finite values and samples not after the last one;
* silence of one device: :func:`liveness` and :func:`silence_anomaly`
  (the bank form is :func:`alerts.anomaly.detectors.liveness_many`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from alerts.anomaly.detectors import (
    _CHUNK,
    BoolArray,
    DriftBank,
    DriftParams,
    DriftState,
    EwmaParams,
    EwmaState,
    FloatArray,
    IntArray,
    Liveness,
    RateParams,
    RateState,
    RobustZParams,
    RobustZState,
    StuckParams,
    StuckState,
    _check_silence,
    _robust_scores,
    _row_stats,
    _sorted_median,
    peer_median,
)
from alerts.anomaly.result import Anomaly, DetectorKind
from alerts.errors import AnomalyError


# eq=False: dataclass equality on arrays would raise ("truth value of an array is ambiguous").
@dataclass(frozen=True, slots=True, eq=False)
class BatchResult:
    """A detector run over a whole series (or a devices × time matrix for drift).

    Attributes:
        mask: True where the detector fired.
        score: The statistic per sample; NaN where nothing was scored
            (warm-up, NaN input, zero scale).
        baseline: The baseline per sample; NaN where nothing was scored.
        threshold: The limit ``score`` is compared with.
    """

    mask: npt.NDArray[np.bool_]
    score: npt.NDArray[np.float64]
    baseline: npt.NDArray[np.float64]
    threshold: float


class OnlineDetector(Protocol):
    """The online form every single-series detector offers."""

    def update(self, t: int, x: float) -> Anomaly | None:
        """Feed one sample; return an anomaly if it fired."""
        ...


def _series(times: npt.ArrayLike, values: npt.ArrayLike) -> tuple[IntArray, FloatArray]:
    t = np.asarray(times)
    v = np.asarray(values, dtype=np.float64)
    if t.ndim != 1 or v.shape != t.shape:
        raise AnomalyError("times and values must be 1-D arrays of the same length")
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise AnomalyError("times must be integer epoch seconds")
    t = t.astype(np.int64, copy=False)
    if t.size > 1 and bool(np.any(np.diff(t) <= 0)):
        raise AnomalyError("times must be strictly increasing")
    return t, v


def _accepts(last_t: int | None, t: int, x: float) -> bool:
    """Whether an online detector takes this sample (finite, and after the last one)."""
    return math.isfinite(x) and (last_t is None or t > last_t)


def _direction(delta: float) -> str:
    return "up" if delta >= 0 else "down"


def _empty_result(n: int) -> tuple[BoolArray, FloatArray, FloatArray]:
    return np.zeros(n, dtype=np.bool_), np.full(n, np.nan), np.full(n, np.nan)


def _record(
    anomaly: Anomaly | None,
    i: int,
    score: float | None,
    baseline: float | None,
    out: tuple[BoolArray, FloatArray, FloatArray],
) -> None:
    mask, scores, baselines = out
    if anomaly is not None:
        mask[i] = True
    if score is not None and baseline is not None:
        scores[i] = score
        baselines[i] = baseline


class RobustZDetector:
    """Online robust z-score for one series; bounded memory (``window`` samples).

    Example:
        >>> det = RobustZDetector(RobustZParams(window=90, k=6))
        >>> anomaly = det.update(1_700_000_000, 41.5)
    """

    __slots__ = ("_state", "params")

    def __init__(self, params: RobustZParams | None = None, state: RobustZState | None = None) -> None:
        self.params = params or RobustZParams()
        st = state or RobustZState()
        if len(st.values) > self.params.window:
            # A state saved under a longer window: keep its newest samples.
            st = RobustZState(st.values[-self.params.window :], st.times[-self.params.window :], st.last_t)
        self._state = st

    @property
    def state(self) -> RobustZState:
        """The current state (immutable; persist it with ``to_dict``)."""
        return self._state

    def update(self, t: int, x: float) -> Anomaly | None:
        """Score ``x`` against the previous samples, then remember it."""
        st, p = self._state, self.params
        if not _accepts(st.last_t, t, x):
            return None
        n = len(st.values)
        anomaly = None
        if n >= p.min_samples:
            row = np.full((1, p.window), np.nan)
            row[0, :n] = st.values
            med, scale = _row_stats(row, np.array([n], dtype=np.int64))
            fired, score, baseline = _robust_scores(med, scale, np.array([x], dtype=np.float64), p)
            if fired[0]:
                m = float(baseline[0])
                anomaly = Anomaly(
                    DetectorKind.ROBUST_Z, t, x, m, float(score[0]), p.k, st.times[0], t, _direction(x - m)
                )
        self._state = RobustZState((*st.values, float(x))[-p.window :], (*st.times, int(t))[-p.window :], int(t))
        return anomaly


def robust_z_batch(times: npt.ArrayLike, values: npt.ArrayLike, params: RobustZParams | None = None) -> BatchResult:
    """Robust z-score over a whole series; same decisions as :class:`RobustZDetector`.

    Cost: O(n · window · log window), vectorised in chunks.
    """
    p = params or RobustZParams()
    _, v = _series(times, values)
    mask, score, baseline = _empty_result(v.size)
    idx = np.flatnonzero(np.isfinite(v))
    fv = v[idx]
    m = fv.size
    if m > p.min_samples:
        # Row j of the view holds the `window` accepted samples before sample j (NaN-padded at the start).
        pad = np.concatenate([np.full(p.window, np.nan), fv])
        windows = sliding_window_view(pad, p.window)
        counts = np.minimum(np.arange(m, dtype=np.int64), p.window)
        for start in range(p.min_samples, m, _CHUNK):
            stop = min(start + _CHUNK, m)
            med, scale = _row_stats(windows[start:stop], counts[start:stop])
            fired, s, b = _robust_scores(med, scale, fv[start:stop], p)
            where = idx[start:stop]
            mask[where], score[where], baseline[where] = fired, s, b
    return BatchResult(mask, score, baseline, p.k)


def _ewma_step(
    p: EwmaParams, st: EwmaState, t: int, x: float
) -> tuple[EwmaState, Anomaly | None, float | None, float | None]:
    if not _accepts(st.last_t, t, x):
        return st, None, None, None
    anomaly, score, baseline = None, None, None
    xu = x
    if st.n >= p.min_samples:
        sd = max(math.sqrt(st.var), p.min_sigma)
        if sd > 0:
            score, baseline = abs(x - st.mean) / sd, st.mean
            if score > p.sigmas:
                start = t if st.last_t is None else st.last_t
                anomaly = Anomaly(DetectorKind.EWMA, t, x, st.mean, score, p.sigmas, start, t, _direction(x - st.mean))
            # Winsorised update (see EwmaParams.clip): an outlier must not
            # inflate the variance enough to mask the samples that follow it.
            xu = min(max(x, st.mean - p.clip * sd), st.mean + p.clip * sd)
    alpha = max(p.lam, 1.0 / (st.n + 1))
    diff = xu - st.mean
    incr = alpha * diff
    new = EwmaState(st.n + 1, st.mean + incr, (1 - alpha) * (st.var + diff * incr), int(t))
    return new, anomaly, score, baseline


class EwmaDetector:
    """Online EWMA chart for one series; O(1) state (n, mean, var, last time).

    The anomaly window is ``[previous accepted sample, this sample]``: the
    baseline it was judged against is as of the previous sample.
    """

    __slots__ = ("_state", "params")

    def __init__(self, params: EwmaParams | None = None, state: EwmaState | None = None) -> None:
        self.params = params or EwmaParams()
        self._state = state or EwmaState()

    @property
    def state(self) -> EwmaState:
        """The current state (immutable; persist it with ``to_dict``)."""
        return self._state

    def update(self, t: int, x: float) -> Anomaly | None:
        """Score ``x`` against the EWMA baseline, then fold it in."""
        self._state, anomaly, _, _ = _ewma_step(self.params, self._state, t, x)
        return anomaly


def ewma_batch(times: npt.ArrayLike, values: npt.ArrayLike, params: EwmaParams | None = None) -> BatchResult:
    """EWMA chart over a whole series; the online recursion, O(n) (a Python loop)."""
    p = params or EwmaParams()
    t, v = _series(times, values)
    out = _empty_result(v.size)
    st = EwmaState()
    for i, (ti, xi) in enumerate(zip(t.tolist(), v.tolist(), strict=True)):
        st, anomaly, score, baseline = _ewma_step(p, st, ti, xi)
        _record(anomaly, i, score, baseline, out)
    return BatchResult(*out, threshold=p.sigmas)


def _rate_step(
    p: RateParams, st: RateState, t: int, x: float
) -> tuple[RateState, Anomaly | None, float | None, float | None]:
    if not _accepts(st.last_t, t, x):
        return st, None, None, None
    anomaly, score, baseline = None, None, None
    if st.n >= p.min_samples and st.ref_t is not None:
        score, baseline = abs(x - st.ref_x) / (t - st.ref_t), st.ref_x
        if score > p.max_rate:
            anomaly = Anomaly(
                DetectorKind.RATE, t, x, st.ref_x, score, p.max_rate, st.ref_t, t, _direction(x - st.ref_x)
            )
    if anomaly is not None and st.held < p.hold:
        new = RateState(st.n + 1, st.ref_t, st.ref_x, st.held + 1, int(t))
    else:
        new = RateState(st.n + 1, int(t), float(x), 0, int(t))
    return new, anomaly, score, baseline


class RateDetector:
    """Online rate-of-change spike detector for one series; O(1) state."""

    __slots__ = ("_state", "params")

    def __init__(self, params: RateParams, state: RateState | None = None) -> None:
        self.params = params
        self._state = state or RateState()

    @property
    def state(self) -> RateState:
        """The current state (immutable; persist it with ``to_dict``)."""
        return self._state

    def update(self, t: int, x: float) -> Anomaly | None:
        """Compare the rate from the reference sample with ``max_rate``."""
        self._state, anomaly, _, _ = _rate_step(self.params, self._state, t, x)
        return anomaly


def rate_batch(times: npt.ArrayLike, values: npt.ArrayLike, params: RateParams) -> BatchResult:
    """Rate-of-change spikes over a whole series; the online recursion, O(n)."""
    t, v = _series(times, values)
    out = _empty_result(v.size)
    st = RateState()
    for i, (ti, xi) in enumerate(zip(t.tolist(), v.tolist(), strict=True)):
        st, anomaly, score, baseline = _rate_step(params, st, ti, xi)
        _record(anomaly, i, score, baseline, out)
    return BatchResult(*out, threshold=params.max_rate)


def _stuck_step(
    p: StuckParams, st: StuckState, t: int, x: float
) -> tuple[StuckState, Anomaly | None, float | None, float | None]:
    if not _accepts(st.last_t, t, x):
        return st, None, None, None
    lo, hi = min(st.run_min, x), max(st.run_max, x)
    if st.run_len > 0 and st.run_start is not None and hi - lo <= p.eps:
        new = StuckState(st.run_len + 1, lo, hi, st.run_start, int(t))
    else:
        new = StuckState(1, float(x), float(x), int(t), int(t))
    score, baseline = float(new.run_len), (new.run_min + new.run_max) / 2
    anomaly = None
    if new.run_len >= p.samples and new.run_start is not None:
        anomaly = Anomaly(DetectorKind.STUCK, t, x, baseline, score, float(p.samples), new.run_start, t)
    return new, anomaly, score, baseline


class StuckDetector:
    """Online stuck-sensor detector for one series; O(1) state.

    It fires on every sample from the ``samples``-th flat one on, until the
    value moves; the window starts at the run's first sample.
    """

    __slots__ = ("_state", "params")

    def __init__(self, params: StuckParams | None = None, state: StuckState | None = None) -> None:
        self.params = params or StuckParams()
        self._state = state or StuckState()

    @property
    def state(self) -> StuckState:
        """The current state (immutable; persist it with ``to_dict``)."""
        return self._state

    def update(self, t: int, x: float) -> Anomaly | None:
        """Extend or restart the flat run with ``x``."""
        self._state, anomaly, _, _ = _stuck_step(self.params, self._state, t, x)
        return anomaly


def stuck_batch(times: npt.ArrayLike, values: npt.ArrayLike, params: StuckParams | None = None) -> BatchResult:
    """Stuck runs over a whole series; the online recursion, O(n). Score = run length."""
    p = params or StuckParams()
    t, v = _series(times, values)
    out = _empty_result(v.size)
    st = StuckState()
    for i, (ti, xi) in enumerate(zip(t.tolist(), v.tolist(), strict=True)):
        st, anomaly, score, baseline = _stuck_step(p, st, ti, xi)
        _record(anomaly, i, score, baseline, out)
    return BatchResult(*out, threshold=float(p.samples))


def _drift_step(
    p: DriftParams, st: DriftState, t: int, x: float, peer: float
) -> tuple[DriftState, Anomaly | None, float | None, float | None]:
    if not (_accepts(st.last_t, t, x) and math.isfinite(peer)):
        return st, None, None, None
    t = int(t)
    n, mean, m2 = st.n, st.mean, st.m2
    s_pos, s_neg, pos_start, neg_start = st.s_pos, st.s_neg, st.pos_start, st.neg_start
    b_start = t if st.b_n == 0 or st.b_start is None else st.b_start
    b_sum, b_n = st.b_sum + (x - peer), st.b_n + 1
    learnt = n >= p.min_blocks
    if b_n == p.block:
        m = b_sum / p.block
        if not learnt:
            n += 1
            d = m - mean
            mean += d / n
            m2 += d * (m - mean)
        else:
            sd = max(math.sqrt(m2 / n), p.min_sigma)
            if sd > 0:
                z = (m - mean) / sd
                top = p.cap * p.h
                sp = min(max(0.0, s_pos + z - p.k), top)
                sn = min(max(0.0, s_neg - z - p.k), top)
                pos_start = None if sp == 0 else (b_start if s_pos == 0 or pos_start is None else pos_start)
                neg_start = None if sn == 0 else (b_start if s_neg == 0 or neg_start is None else neg_start)
                s_pos, s_neg = sp, sn
        b_sum, b_n, b_start_out = 0.0, 0, None
    else:
        b_start_out = b_start
    new = DriftState(n, mean, m2, b_sum, b_n, b_start_out, s_pos, s_neg, pos_start, neg_start, t)
    if not learnt:
        return new, None, None, None
    score, baseline = max(s_pos, s_neg), peer + mean
    anomaly = None
    if score > p.h:
        up = s_pos >= s_neg
        start = pos_start if up else neg_start
        anomaly = Anomaly(
            DetectorKind.DRIFT, t, x, baseline, score, p.h, t if start is None else start, t, "up" if up else "down"
        )
    return new, anomaly, score, baseline


class DriftDetector:
    """Online drift detector for one device; O(1) state.

    Unlike the others its update takes the peer median of the same timestep
    (compute it once per peer group with :func:`peer_median`).
    """

    __slots__ = ("_state", "params")

    def __init__(self, params: DriftParams | None = None, state: DriftState | None = None) -> None:
        self.params = params or DriftParams()
        self._state = state or DriftState()

    @property
    def state(self) -> DriftState:
        """The current state (immutable; persist it with ``to_dict``)."""
        return self._state

    def update(self, t: int, x: float, peer: float) -> Anomaly | None:
        """Feed the device's value and its peers' median at time ``t``."""
        self._state, anomaly, _, _ = _drift_step(self.params, self._state, t, x, peer)
        return anomaly


def drift_batch(times: npt.ArrayLike, values: npt.ArrayLike, params: DriftParams | None = None) -> BatchResult:
    """Drift over a ``devices × time`` matrix of one peer group; arrays in the result are ``devices × time``.

    Peer medians come from the matrix itself: each device's offset is the
    median of its residual against the raw peer median over the warm-up
    samples, and the peer median is then taken over offset-corrected values
    (see :func:`peer_median`). The bank then steps through time, O(T) numpy
    calls over all devices. NaN marks a missing value.
    """
    p = params or DriftParams()
    t = np.asarray(times)
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or t.ndim != 1 or v.shape[1] != t.size:
        raise AnomalyError("drift_batch needs times (T,) and values (devices × T)")
    _series(t, np.zeros(t.size))  # the time checks only
    head = v[:, : p.warmup]
    resid = head - peer_median(head, p.min_peers)[None, :]
    finite = np.isfinite(resid)
    offsets = _sorted_median(np.sort(np.where(finite, resid, np.nan), axis=1), finite.sum(axis=1).astype(np.int64))
    # A device with no warm-up residual at all keeps a zero offset.
    peers = peer_median(v, p.min_peers, np.where(np.isfinite(offsets), offsets, 0.0))
    bank = DriftBank(v.shape[0], p)
    mask = np.zeros(v.shape, dtype=np.bool_)
    score = np.full(v.shape, np.nan)
    baseline = np.full(v.shape, np.nan)
    for j, tj in enumerate(t.astype(np.int64).tolist()):
        upd = bank.update(tj, v[:, j], peers[j])
        mask[:, j], score[:, j], baseline[:, j] = upd.fired, upd.score, upd.baseline
    return BatchResult(mask, score, baseline, p.h)


def liveness(last_seen: int | None, now: int, cadence_s: float, connected: bool, *, k: float = 3.0) -> Liveness:
    """Classify one device: silent means no data for more than ``k × cadence_s`` seconds.

    Args:
        last_seen: Epoch seconds of the device's newest reading, or None if it never sent one.
        now: Epoch seconds of the check.
        cadence_s: The device model's expected reporting interval (``cadence_s`` in its YAML).
        connected: Whether the device's transport session is up (MQTT connected, TCP open).
        k: Silence threshold, in cadences.
    """
    _check_silence(cadence_s, k)
    if last_seen is None:
        return Liveness.NEVER_SEEN
    # A reading from the future (device clock ahead) counts as fresh.
    if now - last_seen <= k * cadence_s:
        return Liveness.OK
    return Liveness.STALE if connected else Liveness.OFFLINE


def silence_anomaly(
    last_seen: int | None, now: int, cadence_s: float, connected: bool, *, k: float = 3.0
) -> Anomaly | None:
    """:func:`liveness` as an :class:`Anomaly` (or None when OK or never seen).

    The anomaly's value is the age in seconds, its baseline the cadence, its
    score the age in cadences against threshold ``k``, its window
    ``[last_seen, now]`` and its detail ``stale`` or ``offline``.
    """
    state = liveness(last_seen, now, cadence_s, connected, k=k)
    if state in (Liveness.OK, Liveness.NEVER_SEEN) or last_seen is None:
        return None
    age = float(now - last_seen)
    return Anomaly(
        DetectorKind.SILENCE, now, age, float(cadence_s), age / cadence_s, float(k), last_seen, now, state.value
    )
