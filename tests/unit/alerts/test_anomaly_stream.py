"""Anomaly detectors in the stream: configuration as data, alerts with evidence, restart safety."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

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
)
from alerts.anomaly.config import AnomalyConfig, parse_anomaly_config, shipped_anomaly_config
from alerts.anomaly.stream import DetectorMemory, SeriesDevice, evaluate_anomalies, peer_entry, saved_state
from alerts.errors import AnomalyError
from core.records import AlertState, Severity
from tests.unit.alerts.oracles import (
    EwmaDetector,
    RobustZDetector,
)

DEV = SeriesDevice("35020303080000012", "350203", "air", "air-station")
T0 = datetime(2026, 11, 29, tzinfo=UTC)

CONFIG = """
defaults: {clear_after: 3, flap_count: 3, flap_window: 1h}
series:
  - class: air
    metrics: [pm25]
    detectors:
      ewma: {}
      robust_z: {window: 40, min_samples: 30, severity: info}
"""


def _series(n: int, spike_at: int | None = None, seed: int = 7) -> list[float]:
    rng = np.random.default_rng(seed)
    values = [float(v) for v in 30 + rng.normal(0, 1.5, n)]
    if spike_at is not None:
        values[spike_at] = 80.0
    return values


def _run(
    cfg: AnomalyConfig, values: list[float], *, batch: int, states: dict[str, Any] | None = None, start: int = 0
) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """Feed ``values`` (one a minute) in batches, round-tripping the state through JSON like jsonb."""
    states = states if states is not None else {}
    out = []
    for b in range(0, len(values), batch):
        samples = [
            (DEV, "pm25", T0 + timedelta(minutes=start + i), values[i]) for i in range(b, min(b + batch, len(values)))
        ]
        res = evaluate_anomalies(cfg, samples, states)
        out += res.transitions
        states = json.loads(json.dumps(states, allow_nan=False))
    return out, states


# --- configuration ---------------------------------------------------------------


def test_later_entries_override_and_off_turns_a_detector_off() -> None:
    cfg = parse_anomaly_config(
        """
series:
  - class: air
    detectors: {ewma: {}, stuck: {samples: 10}}
  - class: air
    models: [air-micro]
    metrics: [pm25]
    detectors: {ewma: off, robust_z: {k: 7}}
"""
    )
    assert [s.kind.value for s in cfg.plan("air", "air-station", "pm25")] == ["ewma", "stuck"]
    micro = cfg.plan("air", "air-micro", "pm25")
    assert [s.kind.value for s in micro] == ["robust_z", "stuck"] and micro[0].params.k == 7  # type: ignore[union-attr]
    # entries without `metrics` cover gauges only: booleans and states belong to rules
    assert cfg.plan("air", "air-station", "pm25", gauge=False) == ()
    assert cfg.plan("water", "water-station", "ph") == ()


@pytest.mark.parametrize(
    "text",
    [
        "series: [{class: air, detectors: {ewmaa: {}}}]",  # a typo must not silently disable a detector
        "series: [{class: air, detectors: {ewma: {lamda: 0.1}}}]",
        "series: [{class: air, detectors: {ewma: {lam: 2}}}]",
        "series: [{class: air, detectors: {rate: {}}}]",  # max_rate is required
        "series: [{class: air, detectors: {silence: {}}}]",
        "series: [{class: air, detectors: {ewma: {severity: loud}}}]",
        "series: [{class: air, detectors: {ewma: {clear_after: 0}}}]",
        "series: [{class: air, detectors: {}}]",
        "series: [{class: air, metric: [pm25], detectors: {ewma: {}}}]",
        "defaults: {k: 3}",
    ],
)
def test_bad_configuration_is_refused_at_load(text: str) -> None:
    with pytest.raises(AnomalyError):
        parse_anomaly_config(text)


def test_shipped_configuration_loads_and_keeps_robust_z_narrow() -> None:
    cfg = shipped_anomaly_config()
    assert bool(cfg)
    kinds = {s.kind.value for s in cfg.plan("air", "air-station", "pm25")}
    assert {"ewma", "robust_z", "stuck", "drift"} <= kinds
    # robust z keeps 90 samples per series: it runs on PM2.5 only, not on every gauge
    assert "robust_z" not in {s.kind.value for s in cfg.plan("air", "air-station", "no2")}
    assert not AnomalyConfig.empty()


# --- alerts ----------------------------------------------------------------------


def test_warm_up_raises_nothing_even_on_wild_values() -> None:
    wild = [30.0, 300.0, 5.0, 250.0] * 7  # 28 samples: below both detectors' 30-sample warm-up
    out, _ = _run(parse_anomaly_config(CONFIG), wild, batch=5)
    assert out == []


def test_a_spike_opens_one_alert_for_the_series_with_every_detectors_evidence_and_clears() -> None:
    """Both detectors fire on the spike: one alert (the stronger carries it), not one per detector."""
    values = _series(60, spike_at=45)
    out, states = _run(parse_anomaly_config(CONFIG), values, batch=7)
    opens = [a for k, a in out if k == "open"]
    assert [a.rule for a in opens] == ["anomaly.ewma"]  # warning beats robust_z's info
    a = opens[0]
    spike = T0 + timedelta(minutes=45)
    labels = dict(a.labels)
    assert a.opened_at == spike and a.metric == "pm25" and a.value == 80.0 and a.state is AlertState.OPEN
    assert a.severity is Severity.WARNING
    assert labels["detector"] == "ewma" and labels["detail"] == "up"
    assert 27 < float(labels["baseline"]) < 33
    assert float(labels["score"]) > float(labels["threshold"]) == a.threshold
    # EWMA judged the spike on the baseline as of the previous sample
    assert labels["window_end"] == "2026-11-29T00:45:00Z" and labels["window_start"] == "2026-11-29T00:44:00Z"
    # every detector that fired on the sample, with its score
    assert labels["detectors"] == "ewma,robust_z"
    assert labels["score.ewma"] == labels["score"] and float(labels["score.robust_z"]) > 6.0
    assert "also robust_z" in a.message
    clears = [a for k, a in out if k == "clear"]
    assert [(c.rule, c.id) for c in clears] == [(a.rule, a.id)]
    assert clears[0].cleared_at == spike + timedelta(minutes=3)  # clear_after: 3 quiet samples
    assert "c" not in states[DEV.code]["m"]["pm25"]  # nothing left open


def test_a_detector_firing_while_the_series_alert_is_open_joins_it() -> None:
    """Three detectors on one impossible value: one alert; a later, more severe one escalates it."""
    cfg = parse_anomaly_config(
        """
defaults: {clear_after: 3}
series:
  - class: air
    metrics: [pm25]
    detectors:
      ewma: {}
      robust_z: {window: 40, severity: info}
      rate: {max_rate: 0.5, severity: major}
"""
    )
    values = _series(60, spike_at=45)
    values[45] = 5000.0  # a sensor fault: every detector fires on it
    out, _ = _run(cfg, values, batch=60)
    assert [(k, a.rule) for k, a in out] == [("open", "anomaly.rate"), ("clear", "anomaly.rate")]
    assert dict(out[0][1].labels)["detectors"] == "ewma,rate,robust_z"
    assert out[0][1].severity is Severity.MAJOR

    # Now the rate detector is quiet on the spike and fires only a few samples later, harder.
    values = _series(80, spike_at=45)
    values[48:] = [v + 40.0 for v in values[48:]]  # a step: rate fires at 48
    cfg2 = parse_anomaly_config(
        """
defaults: {clear_after: 3}
series:
  - class: air
    metrics: [pm25]
    detectors:
      ewma: {severity: info}
      rate: {max_rate: 0.5, severity: major}
"""
    )
    values[45] = 38.0  # small for rate (0.13/s), large for the EWMA chart
    out, _ = _run(cfg2, values, batch=80)
    assert [(k, a.rule) for k, a in out] == [
        ("open", "anomaly.ewma"),
        ("escalate", "anomaly.ewma"),  # rate joined the open alert: no second alert, its severity
        ("clear", "anomaly.ewma"),  # once both detectors' episodes ended
    ]
    assert len({a.id for _, a in out}) == 1
    assert out[1][1].severity is Severity.MAJOR and dict(out[1][1].labels)["detectors"] == "ewma,rate"


def test_decisions_match_the_online_detectors() -> None:
    """The vectorised per-batch path fires exactly where the single-series online detectors do."""
    values = _series(120, spike_at=70)
    values[90] = 10.0
    out, _ = _run(parse_anomaly_config(CONFIG), values, batch=9)
    ewma, rz = (
        EwmaDetector(EwmaParams()),
        RobustZDetector(parse_anomaly_config(CONFIG).plan("air", "x", "pm25")[1].params),
    )  # type: ignore[arg-type]
    fired: dict[str, list[int]] = {"ewma": [], "robust_z": []}
    for i, v in enumerate(values):
        t = int((T0 + timedelta(minutes=i)).timestamp())
        if ewma.update(t, v):
            fired["ewma"].append(i)
        if rz.update(t, v):
            fired["robust_z"].append(i)
    opens = {int((a.opened_at - T0).total_seconds() // 60): dict(a.labels) for k, a in out if k == "open"}
    assert fired["ewma"] and fired["robust_z"]
    # the series' alert opens on the first sample any detector fired on ...
    assert min(opens) == min(fired["ewma"][0], fired["robust_z"][0])
    # ... and every alert names exactly the detectors that fired on its sample
    for i, labels in opens.items():
        assert labels["detectors"].split(",") == [k for k in ("ewma", "robust_z") if i in fired[k]]


def test_restart_from_saved_state_neither_repeats_nor_loses_an_alert() -> None:
    cfg = parse_anomaly_config(CONFIG)
    values = _series(80, spike_at=50)
    straight, _ = _run(cfg, values, batch=80)
    # the same data with a "restart" (state from JSON) after sample 48, and the last batch replayed
    first, saved = _run(cfg, values[:48], batch=6)
    second, saved = _run(cfg, values[48:], batch=6, states=saved, start=48)
    replay, _ = _run(cfg, values[40:], batch=10, states=saved, start=40)
    assert replay == []
    assert [(k, a.id) for k, a in first + second] == [(k, a.id) for k, a in straight]


def test_a_flapping_detector_is_held_open() -> None:
    """Spikes every 5 samples would open and clear forever; after flap_count opens the alert is held."""
    values = _series(200)
    for i in range(40, 200, 5):
        values[i] = 80.0
    cfg = parse_anomaly_config(CONFIG.replace("robust_z: {window: 40, min_samples: 30, severity: info}", "stuck: off"))
    out, _ = _run(cfg, values, batch=10)
    opens = [a for k, a in out if k == "open"]
    assert len(opens) == 3  # flap_count, not 32
    assert dict(opens[-1].labels).get("flapping") == "true"


def test_replayed_and_late_samples_are_ignored_and_nan_never_reaches_a_detector() -> None:
    cfg = parse_anomaly_config(CONFIG)
    states: dict[str, Any] = {}
    samples = [(DEV, "pm25", T0 + timedelta(minutes=i), 30.0 + (i % 3)) for i in range(10)]
    assert evaluate_anomalies(cfg, samples, states).samples == 10
    assert evaluate_anomalies(cfg, samples[:5], states).samples == 0  # late: at or before the watermark
    later = [(DEV, "pm25", T0 + timedelta(minutes=20), float("nan"))]
    assert evaluate_anomalies(cfg, later, states).samples == 0
    assert states[DEV.code]["m"]["pm25"]["t"] == int((T0 + timedelta(minutes=9)).timestamp())


def test_drift_uses_the_peer_median_and_publishes_its_offset() -> None:
    cfg = parse_anomaly_config(
        "series: [{class: air, metrics: [pm25], detectors: {drift: {block: 2, min_blocks: 3, h: 2, min_sigma: 0.1}}}]"
    )
    states: dict[str, Any] = {}
    key = (DEV.district, DEV.model_id, "pm25")
    out = []
    for i in range(40):
        # 2 above its peers while learning, then drifting away by 1 per sample
        x = 32.0 + (0.1 if i % 2 else -0.1) + max(0, i - 12)
        res = evaluate_anomalies(cfg, [(DEV, "pm25", T0 + timedelta(minutes=i), x)], states, peers={key: 30.0})
        out += res.transitions
    assert [(k, a.rule) for k, a in out][:1] == [("open", "anomaly.drift")]
    entry = peer_entry(states[DEV.code])
    assert entry["pm25"][2] == pytest.approx(2.0, abs=0.2)  # the learnt offset, for the peers' median
    # A document written before the offset was kept beside the last value gives the same entry.
    older = json.loads(json.dumps(states[DEV.code]))
    older["m"]["pm25"]["x"] = older["m"]["pm25"]["x"][:2]
    assert peer_entry(older)["pm25"] == pytest.approx(entry["pm25"])
    # without a peer median the drift detector is not fed at all
    fresh: dict[str, Any] = {}
    evaluate_anomalies(cfg, [(DEV, "pm25", T0, 1.0)], fresh)
    drift = saved_state(fresh[DEV.code]["m"]["pm25"]["d"], "drift")  # the compact row: kind, version, FIELDS
    assert drift[:3] == ("drift", 1, 0) and drift[-1] is None  # n = 0, last_t: never


# --- columnar state conversion ----------------------------------------------------------


@pytest.mark.parametrize(
    ("bank_cls", "params"),
    [
        (RobustZBank, RobustZParams(window=10, min_samples=3)),
        (EwmaBank, EwmaParams(min_samples=3)),
        (RateBank, RateParams(max_rate=0.5)),
        (StuckBank, StuckParams(samples=3)),
        (DriftBank, DriftParams(block=2, min_blocks=2)),
    ],
)
def test_columnar_state_round_trip_matches_the_per_series_states(bank_cls: Any, params: Any) -> None:
    """``from_dicts``/``to_dicts`` agree with ``from_states``/``state(i)`` (what the stream relies on)."""
    rng = np.random.default_rng(5)
    bank = bank_cls(4, params)
    for step in range(15):
        x = 30 + rng.normal(0, 1, 3)
        args = (1_700_000_000 + 60 * step, x, 30.0) if bank_cls is DriftBank else (1_700_000_000 + 60 * step, x)
        bank.update(*args, index=[0, 1, 2])  # series 3 never sees a sample
    expected = [bank.state(i).to_dict() for i in range(4)]
    assert bank.to_dicts() == expected
    if bank_cls.FIELDS:  # packed (what the stream worker saves): every bit back
        words = bank.packed(range(4))
        assert [bank_cls.row_from_packed(w, bank_cls.VERSION) for w in words] == bank.to_dicts(compact=True)
        assert bank_cls.from_packed(words, params).to_dicts() == expected  # many at once
        bad = words.copy()
        bad[0, 0] = -1  # every bank's first field is a count
        with pytest.raises(AnomalyError):
            bank_cls.from_packed(bad, params)
    reloaded = bank_cls.from_dicts([*json.loads(json.dumps(expected))[:3], None], params)
    assert reloaded.to_dicts() == expected
    broken = dict(expected[0])
    broken["last_t"] = "yesterday"
    with pytest.raises(AnomalyError):
        bank_cls.from_dicts([broken], params)


def test_a_state_that_does_not_load_starts_that_series_over() -> None:
    cfg = parse_anomaly_config(CONFIG)
    states: dict[str, Any] = {}
    evaluate_anomalies(cfg, [(DEV, "pm25", T0, 30.0)], states)
    d = states[DEV.code]["m"]["pm25"]["d"]
    d["ewma"] = {"v": 99, "kind": "ewma"}  # a future version
    out = evaluate_anomalies(cfg, [(DEV, "pm25", T0 + timedelta(minutes=1), 31.0)], states)
    assert out.samples == 1 and saved_state(d, "ewma")[2] == 1  # n, in the compact row
    assert "ewma" not in d  # packed now, and only there
    d["ewma"] = ["ewma", 99, 1, 30.0, 0.0, None]  # a future compact row
    out = evaluate_anomalies(cfg, [(DEV, "pm25", T0 + timedelta(minutes=2), 31.0)], states)
    assert out.samples == 1 and saved_state(d, "ewma")[2] == 1
    d["#"] = "ewma.1.4;not base64!"  # a packed string that does not parse
    out = evaluate_anomalies(cfg, [(DEV, "pm25", T0 + timedelta(minutes=3), 31.0)], states)
    assert out.samples == 1 and saved_state(d, "ewma")[2] == 1
    d["#"] = "ewma.99.4;" + d["#"].split(";", 1)[1]  # a packed state of a future version
    out = evaluate_anomalies(cfg, [(DEV, "pm25", T0 + timedelta(minutes=4), 31.0)], states)
    assert out.samples == 1 and saved_state(d, "ewma")[2] == 1


def test_saved_states_of_either_form_load_to_the_same_banks() -> None:
    """A state saved before the compact rows (a dict per detector) continues exactly like its row."""
    cfg = parse_anomaly_config(CONFIG)
    values = _series(60, spike_at=45)
    _, rows = _run(cfg, values[:40], batch=8)
    dicts = json.loads(json.dumps(rows))
    for m in dicts[DEV.code]["m"].values():
        # The documents of before the packed states: a dict (or a compact row) per detector.
        m["d"]["ewma"] = EwmaBank.from_dicts([saved_state(m["d"], "ewma")], EwmaParams()).to_dicts()[0]
        del m["d"]["#"]
    assert isinstance(dicts[DEV.code]["m"]["pm25"]["d"]["ewma"], dict)
    a, _ = _run(cfg, values[40:], batch=5, states=rows, start=40)
    b, _ = _run(cfg, values[40:], batch=5, states=dicts, start=40)
    assert [(k, x.id) for k, x in a] == [(k, x.id) for k, x in b] and any(k == "open" for k, _ in a)


def test_banks_kept_in_memory_give_what_the_saved_states_give() -> None:
    """DetectorMemory: the same transitions and documents as building every batch's banks from the
    documents, whether a document is the one the memory wrote (reused rows) or read anew: the same
    content, another worker's batch in between, a batch that did not commit, a bank past its bound."""
    cfg = shipped_anomaly_config()
    rng = np.random.default_rng(11)
    devs = [SeriesDevice(f"3502030308000{i:04d}", "350203", "air", "air-station") for i in range(40)]
    plain: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    memory = DetectorMemory(max_series=36)  # up to 40 devices per plan: some start over
    opened = 0

    def batch(b: int, scale: float = 1.0) -> list[tuple[SeriesDevice, str, datetime, float]]:
        t = T0 + timedelta(minutes=b)
        spike = (b, 3) in ((70, 3), (71, 3)) or (b, 8) == (95, 8)
        return [
            (d, m, t, float(base * scale * rng.lognormal(0, 0.1) * (4 if spike else 1)))
            for i, d in enumerate(devs[: 20 + b % 21])
            for m, base in (("pm25", 30), ("pm10", 50), ("no2", 30), ("co", 0.6), ("o3", 60), ("so2", 8))
        ]

    for b in range(120):
        samples = batch(b)
        want = evaluate_anomalies(cfg, samples, plain)
        if b % 17 == 5:  # another worker had the partition for this batch: its documents, not ours
            kept = json.loads(json.dumps(kept))
            got = evaluate_anomalies(cfg, samples, kept)
        else:
            if b % 11 == 3:  # a batch (other data) that did not commit: its documents are thrown away
                lost = json.loads(json.dumps(kept))
                evaluate_anomalies(cfg, batch(b, scale=2.0), kept, memory=memory)
                kept = lost
            if b % 13 == 0:  # read anew from the database: new objects, the same content
                kept = json.loads(json.dumps(kept))
            got = evaluate_anomalies(cfg, samples, kept, memory=memory)
        assert [(k, a.id, a.severity, a.labels) for k, a in got.transitions] == [
            (k, a.id, a.severity, a.labels) for k, a in want.transitions
        ]
        assert got.changed == want.changed
        assert json.dumps(kept, sort_keys=True) == json.dumps(plain, sort_keys=True)
        opened += sum(k == "open" for k, _ in want.transitions)
    assert memory.reused > memory.reloaded > 0
    assert opened >= 2  # the injected spikes


def test_a_series_whose_plan_changed_and_changed_back_is_reloaded_not_reused() -> None:
    """Banks are kept per plan (class, model, metric). A device whose model changes is advanced by
    the other plan's banks in the same document; back on its first plan, the rows kept there are
    stale and must be loaded again from the document (its watermark has moved)."""
    cfg = shipped_anomaly_config()
    rng = np.random.default_rng(5)
    models = ["air-station"] * 40 + ["air-micro"] * 5 + ["air-station"] * 40
    plain: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    memory = DetectorMemory()
    opened = 0
    for b, model in enumerate(models):
        dev = SeriesDevice(DEV.code, DEV.district, DEV.device_class, model)
        spike = 4.0 if b in (60, 61) else 1.0
        samples = [(dev, "pm25", T0 + timedelta(minutes=b), float(30 * rng.lognormal(0, 0.05) * spike))]
        want = evaluate_anomalies(cfg, samples, plain)
        got = evaluate_anomalies(cfg, samples, kept, memory=memory)
        assert [(k, a.id, a.labels) for k, a in got.transitions] == [(k, a.id, a.labels) for k, a in want.transitions]
        assert json.dumps(kept, sort_keys=True) == json.dumps(plain, sort_keys=True)
        opened += sum(k == "open" for k, _ in want.transitions)
    assert opened >= 1


def test_a_full_robust_z_window_is_saved_binary_and_loads_to_the_same_bank() -> None:
    """The compact form of a full window is base64 float64 values and int32 time offsets:
    the same bits as the lists, at a fraction of the JSON formatting."""
    params = RobustZParams()
    rng = np.random.default_rng(3)
    bank = RobustZBank(3, params)
    for step in range(params.window + 7):
        idx = [0, 1] if step < params.window + 2 else [0]  # series 1 stops short; series 2 never starts
        bank.update(1_700_000_000 + 60 * step, 30 + rng.normal(0, 1, len(idx)), index=idx)
    compact = json.loads(json.dumps(bank.to_dicts(compact=True)))
    assert "vb" in compact[0] and "vb" in compact[1] and compact[2]["values"] == []
    assert len(json.dumps(compact[0])) < len(json.dumps(bank.to_dicts()[0]))
    reloaded = RobustZBank.from_dicts(compact, params)
    assert reloaded.to_dicts() == bank.to_dicts()  # every value bit for bit, every time
    broken = dict(compact[0], vb=compact[0]["vb"][:-4])
    with pytest.raises(AnomalyError):
        RobustZBank.from_dicts([broken], params)
