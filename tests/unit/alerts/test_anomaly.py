"""Statistical anomaly detectors: fault finding, warm-up, state, batch/online/bank agreement, guards.

Statistical assertions run on seeded synthetic series, so they are deterministic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from alerts.anomaly import (
    LIVENESS_CODES,
    NEVER_SEEN,
    Anomaly,
    DetectorKind,
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
from alerts.anomaly.evaluate import EventScore, alarm_runs, score_events
from alerts.anomaly.synthetic import FaultKind, SeriesSpec, make_peer_group, make_series
from alerts.errors import AlertsError, AnomalyError
from tests.unit.alerts.oracles import (
    BatchResult,
    DriftDetector,
    EwmaDetector,
    RateDetector,
    RobustZDetector,
    StuckDetector,
    drift_batch,
    ewma_batch,
    liveness,
    rate_batch,
    robust_z_batch,
    silence_anomaly,
    stuck_batch,
)

T0 = 1_700_000_000
SPEC = SeriesSpec()
FAULTS = (FaultKind.SPIKE, FaultKind.SPIKE, FaultKind.STUCK, FaultKind.DROPOUT, FaultKind.NOISE_BURST)
# 6 σ of the clean series' first difference, per second (see bench/bench_detectors.py).
MAX_RATE = 6 * math.sqrt(2 * SPEC.ar_sd**2 / (1 + SPEC.ar_phi) + 2 * SPEC.noise_sd**2) / SPEC.cadence_s

# name -> (online factory, batch function, bank factory, state class)
DETECTORS: dict[str, tuple[Any, Any, Any, Any]] = {
    "robust_z": (
        lambda st=None: RobustZDetector(RobustZParams(), st),
        lambda t, v: robust_z_batch(t, v, RobustZParams()),
        lambda n: RobustZBank(n, RobustZParams()),
        RobustZState,
    ),
    "ewma": (
        lambda st=None: EwmaDetector(EwmaParams(), st),
        lambda t, v: ewma_batch(t, v, EwmaParams()),
        lambda n: EwmaBank(n, EwmaParams()),
        EwmaState,
    ),
    "rate": (
        lambda st=None: RateDetector(RateParams(MAX_RATE), st),
        lambda t, v: rate_batch(t, v, RateParams(MAX_RATE)),
        lambda n: RateBank(n, RateParams(MAX_RATE)),
        RateState,
    ),
    "stuck": (
        lambda st=None: StuckDetector(StuckParams(), st),
        lambda t, v: stuck_batch(t, v, StuckParams()),
        lambda n: StuckBank(n, StuckParams()),
        StuckState,
    ),
}
TARGETS = {
    "robust_z": (FaultKind.SPIKE, FaultKind.NOISE_BURST),
    "ewma": (FaultKind.SPIKE, FaultKind.NOISE_BURST),
    "rate": (FaultKind.SPIKE,),
    "stuck": (FaultKind.STUCK,),
}
BANK_CLASSES: dict[str, Any] = {"robust_z": RobustZBank, "ewma": EwmaBank, "rate": RateBank, "stuck": StuckBank}
BANK_PARAMS: dict[str, Any] = {
    "robust_z": RobustZParams(),
    "ewma": EwmaParams(),
    "rate": RateParams(MAX_RATE),
    "stuck": StuckParams(),
}


def _score(name: str, seed: int, n_series: int, faults: tuple[FaultKind, ...]) -> EventScore:
    rng = np.random.default_rng(seed)
    batch = DETECTORS[name][1]
    targets = TARGETS[name]
    total = EventScore()
    for _ in range(n_series):
        s = make_series(rng, 2880, faults)
        others = [k for k in FaultKind if k not in targets]
        total += score_events(
            batch(s.times, s.values).mask,
            s.windows(targets),
            tolerance=2,
            ignore=s.windows(others),
            settle=120,
        )
    return total


# --------------------------------------------------------------------------- finding faults


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_detector_finds_injected_faults(name: str) -> None:
    score = _score(name, seed=11, n_series=12, faults=FAULTS)
    assert score.events >= 12
    assert score.recall >= 0.9, score
    assert score.precision >= 0.9, score


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_detector_quiet_on_clean_series(name: str) -> None:
    score = _score(name, seed=12, n_series=12, faults=())
    # 12 series × 2 days: at most one false alarm in all.
    assert score.false_alarms <= 1, score


def test_drift_found_against_peers_and_quiet_without() -> None:
    rng = np.random.default_rng(21)
    found = quiet = EventScore()
    for g in range(6):
        group = make_peer_group(rng, n_devices=8, n=4320, n_drifting=1 if g < 3 else 0)
        res = drift_batch(group.times, group.values, DriftParams())
        assert res.mask.shape == group.values.shape
        for d in range(8):
            windows = [(int(np.searchsorted(group.times, f.start)), group.times.size) for f in group.faults[d]]
            sc = score_events(res.mask[d], windows)
            if g < 3:
                found += sc
            else:
                quiet += sc
    assert found.events == 3
    assert found.recall == 1.0
    assert found.false_alarms <= 1
    assert quiet.false_alarms == 0


def test_drift_alarm_carries_direction_and_window() -> None:
    rng = np.random.default_rng(5)
    group = make_peer_group(rng, n_drifting=1)
    (dev,) = [d for d, f in enumerate(group.faults) if f]
    fault = group.faults[dev][0]
    peers = peer_median(group.values)
    det = DriftDetector()
    first: Anomaly | None = None
    for j, t in enumerate(group.times.tolist()):
        a = det.update(t, float(group.values[dev, j]), float(peers[j]))
        if a is not None and first is None:
            first = a
    assert first is not None
    assert first.detector is DetectorKind.DRIFT
    assert first.detail == ("up" if fault.magnitude > 0 else "down")
    assert first.score > first.threshold == DriftParams().h
    assert first.window_start <= first.window_end == first.time


def test_silence_classification() -> None:
    assert liveness(T0, T0 + 180, 60, connected=True) is Liveness.OK  # exactly k cadences: not yet silent
    assert liveness(T0, T0 + 181, 60, connected=True) is Liveness.STALE
    assert liveness(T0, T0 + 181, 60, connected=False) is Liveness.OFFLINE
    assert liveness(T0, T0 + 30, 60, connected=False) is Liveness.OK  # disconnected but recent
    assert liveness(T0 + 100, T0, 60, connected=True) is Liveness.OK  # device clock ahead
    assert liveness(None, T0, 60, connected=True) is Liveness.NEVER_SEEN
    assert liveness(T0, T0 + 500, 60, connected=True, k=10) is Liveness.OK


def test_silence_anomaly_fields() -> None:
    a = silence_anomaly(T0, T0 + 600, 60, connected=False)
    assert a is not None
    assert (a.detector, a.value, a.baseline, a.score, a.threshold) == (DetectorKind.SILENCE, 600.0, 60.0, 10.0, 3.0)
    assert (a.window_start, a.window_end, a.detail) == (T0, T0 + 600, "offline")
    assert silence_anomaly(T0, T0 + 60, 60, connected=False) is None
    assert silence_anomaly(None, T0, 60, connected=False) is None  # never seen: warm-up, not an alarm


def test_liveness_many_equals_loop() -> None:
    rng = np.random.default_rng(3)
    n = 500
    now = T0 + 10_000
    seen = now - rng.integers(-100, 2000, n)
    seen[rng.random(n) < 0.1] = NEVER_SEEN
    cadence = rng.choice([60.0, 300.0, 3600.0], n)
    conn = rng.random(n) < 0.5
    codes = liveness_many(seen, now, cadence, conn)
    expected = [
        liveness(None if s == NEVER_SEEN else int(s), now, float(c), bool(b))
        for s, c, b in zip(seen, cadence, conn, strict=True)
    ]
    assert [LIVENESS_CODES[c] for c in codes.tolist()] == expected
    assert set(codes.tolist()) == {0, 1, 2, 3}


def test_liveness_guards() -> None:
    with pytest.raises(AnomalyError):
        liveness(T0, T0, 0, connected=True)
    with pytest.raises(AnomalyError):
        liveness_many(np.array([T0]), T0, np.array([-1.0]), True)
    with pytest.raises(AnomalyError):
        liveness_many(np.array([1.5]), T0, 60.0, True)


# --------------------------------------------------------------------------- warm-up


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_no_alarm_during_warm_up(name: str) -> None:
    online = DETECTORS[name][0]
    det = online()
    # Wildly alternating values would fire any warmed-up value detector; a
    # constant one fires the stuck detector on its `samples`-th value, not before.
    warm = {"robust_z": 30, "ewma": 30, "rate": 1, "stuck": 29}[name]
    for i in range(warm):
        x = 0.0 if name == "stuck" else (1e6 if i % 2 else -1e6)
        assert det.update(T0 + 60 * i, x) is None


def test_stuck_fires_on_the_nth_flat_sample() -> None:
    det = StuckDetector(StuckParams(samples=5, eps=0.01))
    fired = [det.update(T0 + 60 * i, 3.0 + 0.001 * (i % 2)) for i in range(7)]
    assert [a is not None for a in fired] == [False] * 4 + [True] * 3
    a = fired[4]
    assert a is not None and a.window_start == T0 and a.score == 5.0 and a.threshold == 5.0
    assert det.update(T0 + 60 * 7, 4.0) is None  # moved: run restarts


def test_drift_warm_up() -> None:
    p = DriftParams(block=3, min_blocks=4)
    det = DriftDetector(p)
    for i in range(p.warmup - 1):
        assert det.update(T0 + i, 1e6 * (i % 2), 0.0) is None
    assert det.state.n == 3


def test_ewma_warm_up_is_a_running_mean() -> None:
    det = EwmaDetector(EwmaParams(lam=0.01, min_samples=10))
    for i, x in enumerate([1.0, 2.0, 3.0, 4.0]):
        det.update(T0 + i, x)
    assert det.state.mean == pytest.approx(2.5)
    assert det.state.var == pytest.approx(1.25)  # population variance


# --------------------------------------------------------------------------- state round-trip


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_state_round_trip_and_resume(name: str) -> None:
    online, _, _, state_cls = DETECTORS[name]
    s = make_series(np.random.default_rng(31), 1000, (FaultKind.SPIKE, FaultKind.STUCK))
    pairs = list(zip(s.times.tolist(), s.values.tolist(), strict=True))
    whole = online()
    ref = [whole.update(t, x) for t, x in pairs]

    first = online()
    got = [first.update(t, x) for t, x in pairs[:500]]
    text = json.dumps(first.state.to_dict(), allow_nan=False)  # jsonb rejects NaN
    restored = state_cls.from_dict(json.loads(text))
    assert restored == first.state
    second = online(restored)
    got += [second.update(t, x) for t, x in pairs[500:]]
    assert got == ref


def test_drift_state_round_trip() -> None:
    det = DriftDetector(DriftParams(block=2, min_blocks=3))
    for i in range(11):
        det.update(T0 + i, float(i % 3), 0.5)
    st = det.state
    assert DriftState.from_dict(json.loads(json.dumps(st.to_dict(), allow_nan=False))) == st


@pytest.mark.parametrize(
    "bad",
    [
        None,
        {"v": 2, "kind": "ewma", "n": 0, "mean": 0.0, "var": 0.0, "last_t": None},
        {"v": 1, "kind": "rate", "n": 0, "mean": 0.0, "var": 0.0, "last_t": None},
        {"v": 1, "kind": "ewma", "n": "3", "mean": 0.0, "var": 0.0, "last_t": None},
        {"v": 1, "kind": "ewma", "n": 3, "mean": float("nan"), "var": 0.0, "last_t": None},
        {"v": 1, "kind": "ewma", "n": 3, "mean": 0.0, "var": -1.0, "last_t": None},
    ],
)
def test_bad_saved_state_is_rejected(bad: Any) -> None:
    with pytest.raises(AnomalyError):
        EwmaState.from_dict(bad)


def test_robust_z_state_from_longer_window_is_trimmed() -> None:
    st = RobustZState(tuple(float(i) for i in range(100)), tuple(range(100)), 99)
    det = RobustZDetector(RobustZParams(window=10, min_samples=5), st)
    assert det.state.values == tuple(float(i) for i in range(90, 100))


# --------------------------------------------------------------------------- batch = online = bank


def _with_gaps(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = make_series(rng, 1500, FAULTS)
    v = s.values.copy()
    v[rng.random(v.size) < 0.02] = np.nan
    v[5] = np.inf
    return s.times, v


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_online_equals_batch(name: str) -> None:
    online, batch, _, _ = DETECTORS[name]
    t, v = _with_gaps(41)
    res: BatchResult = batch(t, v)
    det = online()
    fired = np.array([det.update(ti, xi) is not None for ti, xi in zip(t.tolist(), v.tolist(), strict=True)])
    np.testing.assert_array_equal(fired, res.mask)
    assert res.mask.any()
    assert not res.mask[~np.isfinite(v)].any()
    assert np.isnan(res.score[~np.isfinite(v)]).all()


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_online_anomaly_matches_batch_row(name: str) -> None:
    online, batch, _, _ = DETECTORS[name]
    t, v = _with_gaps(42)
    res: BatchResult = batch(t, v)
    det = online()
    for i, (ti, xi) in enumerate(zip(t.tolist(), v.tolist(), strict=True)):
        a = det.update(ti, xi)
        if a is not None:
            assert a.detector.value == name
            assert a.time == ti and a.value == xi
            assert a.score == pytest.approx(res.score[i]) and a.baseline == pytest.approx(res.baseline[i])
            assert a.threshold == res.threshold
            assert a.score > a.threshold or (name == "stuck" and a.score >= a.threshold)
            assert a.window_start <= a.window_end == ti


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_bank_equals_per_series_loop(name: str) -> None:
    online, _, bank_factory, _ = DETECTORS[name]
    rng = np.random.default_rng(51)
    n_series, steps = 16, 700
    series = [make_series(rng, steps, (FaultKind.SPIKE, FaultKind.STUCK), warmup=60, gap=20) for _ in range(n_series)]
    dets = [online() for _ in range(n_series)]
    bank = bank_factory(n_series)
    n_fired = 0
    for j in range(steps):
        # A random subset reports each step; some late, some NaN.
        idx = np.flatnonzero(rng.random(n_series) < 0.8)
        t = np.array([int(series[i].times[j]) for i in idx], dtype=np.int64)
        late = rng.random(idx.size) < 0.03
        t[late] -= 3600
        x = np.array([float(series[i].values[j]) for i in idx])
        x[rng.random(idx.size) < 0.03] = np.nan
        upd = bank.update(t, x, idx)
        for k, i in enumerate(idx.tolist()):
            a = dets[i].update(int(t[k]), float(x[k]))
            assert upd.fired[k] == (a is not None), (j, i)
            n_fired += a is not None
            if a is not None:
                assert upd.score[k] == pytest.approx(a.score)
                assert upd.baseline[k] == pytest.approx(a.baseline)
    assert n_fired > 0
    for i in range(n_series):
        assert bank.state(i) == dets[i].state


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_bank_from_states_continues(name: str) -> None:
    online, _, _, _ = DETECTORS[name]
    rng = np.random.default_rng(52)
    dets = [online() for _ in range(3)]
    for j in range(50):
        for d in dets:
            d.update(T0 + 60 * j, float(rng.normal()))
    bank = BANK_CLASSES[name].from_states([d.state for d in dets], BANK_PARAMS[name])
    assert [bank.state(i) for i in range(3)] == [d.state for d in dets]


def test_drift_bank_equals_per_device_loop() -> None:
    rng = np.random.default_rng(61)
    group = make_peer_group(rng, n_devices=6, n=1500, n_drifting=2)
    values = group.values.copy()
    values[rng.random(values.shape) < 0.02] = np.nan
    p = DriftParams(block=10, min_blocks=12)
    peers = peer_median(values, p.min_peers)
    bank = DriftBank(6, p)
    dets = [DriftDetector(p) for _ in range(6)]
    n_fired = 0
    for j, t in enumerate(group.times.tolist()):
        upd = bank.update(t, values[:, j], peers[j])
        for d in range(6):
            a = dets[d].update(t, float(values[d, j]), float(peers[j]))
            assert upd.fired[d] == (a is not None)
            n_fired += a is not None
    assert n_fired > 0
    assert [bank.state(d) for d in range(6)] == [d.state for d in dets]
    assert DriftBank.from_states([d.state for d in dets], p).state(5) == dets[5].state
    batch = drift_batch(group.times, values, p)
    assert batch.mask.any()


# --------------------------------------------------------------------------- guards


@pytest.mark.parametrize("name", ["robust_z", "ewma", "rate"])
def test_constant_series_is_quiet_and_warning_free(name: str) -> None:
    _, batch, bank_factory, _ = DETECTORS[name]
    t = T0 + 60 * np.arange(500, dtype=np.int64)
    res = batch(t, np.full(500, 7.0))
    assert not res.mask.any()
    bank = bank_factory(3)
    for j in range(100):
        assert not bank.update(int(t[j]), np.full(3, 7.0)).fired.any()


def test_zero_scale_is_not_scored_unless_floored() -> None:
    t = T0 + 60 * np.arange(100, dtype=np.int64)
    v = np.full(100, 5.0)
    v[80] = 6.0
    assert not robust_z_batch(t, v).mask.any()
    floored = robust_z_batch(t, v, RobustZParams(min_scale=0.1))
    assert floored.mask[80] and floored.mask.sum() == 1
    assert ewma_batch(t, v, EwmaParams(min_sigma=0.1)).mask[80]


def test_non_finite_and_late_samples_are_ignored() -> None:
    det = EwmaDetector()
    det.update(T0, 1.0)
    before = det.state
    assert det.update(T0 + 60, math.nan) is None
    assert det.update(T0 + 60, math.inf) is None
    assert det.update(T0, 2.0) is None  # not after the last accepted time
    assert det.state == before


def test_batch_rejects_bad_times() -> None:
    with pytest.raises(AnomalyError, match="increasing"):
        ewma_batch(np.array([T0, T0]), np.array([1.0, 2.0]))
    with pytest.raises(AnomalyError):
        robust_z_batch(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    with pytest.raises(AnomalyError):
        stuck_batch(np.array([T0]), np.array([1.0, 2.0]))
    assert isinstance(AnomalyError("x"), AlertsError)


def test_bank_rejects_bad_selection() -> None:
    bank = EwmaBank(4)
    with pytest.raises(AnomalyError):
        bank.update(T0, np.zeros(2), np.array([1, 1]))
    with pytest.raises(AnomalyError):
        bank.update(T0, np.zeros(1), np.array([4]))
    with pytest.raises(AnomalyError):
        bank.update(T0, np.zeros(3))


@pytest.mark.parametrize(
    "make",
    [
        lambda: RobustZParams(window=2),
        lambda: RobustZParams(window=10, min_samples=20),
        lambda: RobustZParams(k=0),
        lambda: EwmaParams(lam=1.5),
        lambda: EwmaParams(sigmas=math.nan),
        lambda: RateParams(max_rate=0),
        lambda: StuckParams(samples=1),
        lambda: StuckParams(eps=-1),
        lambda: DriftParams(cap=0.5),
        lambda: DriftParams(min_blocks=1),
    ],
)
def test_bad_params_rejected(make: Callable[[], object]) -> None:
    with pytest.raises(AnomalyError):
        make()


def test_peer_median_handles_missing_and_offsets() -> None:
    m = np.array([[1.0, np.nan, 5.0], [2.0, np.nan, np.inf], [4.0, 1.0, 6.0]])
    np.testing.assert_array_equal(peer_median(m, min_peers=2), [2.0, np.nan, 5.5])
    np.testing.assert_array_equal(peer_median(m[:, 0], min_peers=1), [2.0])
    np.testing.assert_array_equal(peer_median(m[:, 0], offsets=np.array([1.0, 1.0, 1.0])), [1.0])


def test_anomaly_validates() -> None:
    with pytest.raises(AnomalyError):
        Anomaly(DetectorKind.EWMA, T0, math.nan, 0.0, 1.0, 1.0, T0, T0)
    with pytest.raises(AnomalyError):
        Anomaly(DetectorKind.EWMA, T0, 1.0, 0.0, 1.0, 1.0, T0 + 1, T0)
    a = Anomaly(DetectorKind.RATE, T0, 1.0, 0.0, 2.0, 1.0, T0 - 60, T0, "up")
    assert json.loads(json.dumps(a.to_dict(), allow_nan=False))["detector"] == "rate"


# --------------------------------------------------------------------------- synthetic and scoring


def test_synthetic_is_seeded_and_labelled() -> None:
    a = make_series(np.random.default_rng(9), 2880, FAULTS)
    b = make_series(np.random.default_rng(9), 2880, FAULTS)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.faults == b.faults
    assert sorted(f.kind for f in a.faults) == sorted(FAULTS)
    (gap,) = [f for f in a.faults if f.kind is FaultKind.DROPOUT]
    assert a.times.size == 2880 - (gap.end - gap.start) // SPEC.cadence_s
    assert not ((a.times >= gap.start) & (a.times < gap.end)).any()
    for s, e in a.windows([FaultKind.SPIKE, FaultKind.STUCK, FaultKind.NOISE_BURST]):
        assert a.labels[s:e].all()
    (stuck,) = a.windows([FaultKind.STUCK])
    assert np.ptp(a.values[stuck[0] : stuck[1]]) == 0
    drift = make_series(np.random.default_rng(9), 2880, (FaultKind.SPIKE, FaultKind.DRIFT))
    assert drift.faults[-1].kind is FaultKind.DRIFT and drift.labels[-1]


def test_event_scoring() -> None:
    mask = np.zeros(20, dtype=np.bool_)
    mask[[3, 4, 10, 15]] = True
    assert alarm_runs(mask) == [(3, 5), (10, 11), (15, 16)]
    sc = score_events(mask, [(2, 4), (12, 13)], tolerance=0, ignore=[(9, 10)], settle=1)
    assert (sc.events, sc.detected, sc.alarms, sc.true_alarms) == (2, 1, 2, 1)
    assert sc.precision == 0.5 and sc.recall == 0.5
    assert EventScore().precision == 1.0 == EventScore().recall
