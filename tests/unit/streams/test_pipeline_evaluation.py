"""What the stream worker feeds to rules and detectors: no clock-skewed readings, no sensor faults to rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alerts.anomaly.config import parse_anomaly_config
from alerts.anomaly.stream import SeriesDevice, evaluate_anomalies
from alerts.engine import DeviceContext, evaluate_device, suppressed_flag
from alerts.rules import shipped_rules
from core.records import Quality, Reading, epoch_us
from devices.index import DeviceInfo
from devices.models import shipped_models
from streams.pipeline import clock_skewed, out_of_range

CODE = "35020603080000017"
DEV = DeviceInfo(CODE, "air-station@1", "air", "350206", None, "active", {})
CTX = DeviceContext(CODE, "350206", "air", model="air-station")
NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)
MODELS = shipped_models()


def _r(minutes: float, value: float, *, rx: datetime | None = None, quality: Quality = Quality.GOOD, flag=None):
    t = NOW + timedelta(minutes=minutes)
    return Reading(CODE, "pm25", t, rx or min(t, NOW), value, "ug/m3", quality, flag)


def test_clock_skew_is_judged_against_receipt_and_the_worker_clock() -> None:
    assert not clock_skewed(_r(0, 30), now=NOW, max_future_skew=SKEW)
    assert not clock_skewed(_r(5, 30, rx=NOW), now=NOW, max_future_skew=SKEW)  # within the allowed skew
    assert clock_skewed(_r(6, 30, rx=NOW), now=NOW, max_future_skew=SKEW)
    # An alerts worker reading the readings topic an hour later still sees the skew (against receipt) ...
    assert clock_skewed(_r(6, 30, rx=NOW), now=NOW + timedelta(hours=1), max_future_skew=SKEW)
    # ... and a receive time from a gateway clock ahead of the worker's does not hide it.
    assert clock_skewed(_r(6, 30, rx=NOW + timedelta(hours=1)), now=NOW, max_future_skew=SKEW)


def test_out_of_range_is_the_models_physical_range_on_suspect_readings_only() -> None:
    assert out_of_range(_r(0, 5000.0, quality=Quality.SUSPECT), DEV, MODELS)  # pm25 range is 0–1000
    assert not out_of_range(_r(0, 80.0, quality=Quality.SUSPECT, flag="T"), DEV, MODELS)  # HJ 212 T: a real level
    assert not out_of_range(_r(0, 80.0, quality=Quality.SUSPECT), DEV, MODELS)  # e.g. skew: another reason
    assert not out_of_range(_r(0, 5000.0, quality=Quality.BAD), DEV, MODELS)  # bad never reaches rules anyway
    unknown = DeviceInfo(CODE, "no-such-model@9", "air", "350206", None, "active", {})
    assert not out_of_range(_r(0, 5000.0, quality=Quality.SUSPECT), unknown, MODELS)


def _rules_input(readings: list[Reading], now: datetime = NOW) -> list[Reading]:
    """What Pipeline.evaluate hands the rule engine (without the database around it)."""
    usable = [r for r in readings if not clock_skewed(r, now=now, max_future_skew=SKEW)]
    return [r for r in usable if not out_of_range(r, DEV, MODELS)]


def test_a_skewed_reading_does_not_hide_the_readings_after_it_from_the_rules() -> None:
    rules = shipped_rules().for_class("air")
    skewed = _r(120, 20.0, rx=NOW, quality=Quality.SUSPECT)  # two hours ahead: normalise flagged it
    later = [_r(1, 30.0, rx=NOW + timedelta(minutes=1)), _r(2, 90.0, rx=NOW + timedelta(minutes=2))]

    # The bug: evaluated, the skewed reading moves the watermark two hours ahead and the rise is skipped.
    snap: dict = {}
    states: dict = {}
    _, wm = evaluate_device(rules, [skewed], CTX, snap, states, 0)
    assert wm == epoch_us(skewed.event_time)
    out, _ = evaluate_device(rules, later, CTX, snap, states, wm)
    assert out == []

    # Kept out of evaluation, it moves nothing and the rise opens the alert.
    snap, states = {}, {}
    out, wm = evaluate_device(rules, _rules_input([skewed]), CTX, snap, states, 0)
    assert (out, wm) == ([], 0)
    out, wm = evaluate_device(rules, _rules_input(later, NOW + timedelta(minutes=2)), CTX, snap, states, wm)
    assert [(t.kind, t.alert.rule, t.alert.value) for t in out] == [("open", "air.pm25.high", 90.0)]
    assert wm == epoch_us(later[-1].event_time)


def test_an_impossible_value_raises_one_anomaly_alert_and_no_threshold_alert() -> None:
    values = [30.0 + (i % 5) * 0.7 for i in range(40)]
    readings = [_r(i - 40, v) for i, v in enumerate(values)]
    readings.append(_r(0, 5000.0, quality=Quality.SUSPECT))  # what normalise makes of a PM2.5 of 5000

    rule_out, _ = evaluate_device(shipped_rules().for_class("air"), _rules_input(readings), CTX, {}, {}, 0)
    assert rule_out == []  # a sensor fault is not pollution

    cfg = parse_anomaly_config(
        "series: [{class: air, metrics: [pm25], detectors:"
        " {ewma: {}, robust_z: {window: 40, min_samples: 30}, rate: {max_rate: 0.5}}}]"
    )
    series = SeriesDevice(CODE, "350206", "air", "air-station")
    samples = [
        (series, r.metric, r.event_time, r.value)
        for r in readings
        if r.quality is not Quality.BAD and not suppressed_flag(r)
    ]
    out = evaluate_anomalies(cfg, samples, {})
    assert [k for k, _ in out.transitions] == ["open"]  # one alert, not three
    labels = dict(out.transitions[0][1].labels)
    assert labels["detectors"] == "ewma,rate,robust_z"
    assert out.transitions[0][1].value == 5000.0


def test_hj212_maintenance_and_calibration_flags_still_suppress() -> None:
    rules = shipped_rules().for_class("air")
    flagged = [_r(0, 200.0, quality=Quality.SUSPECT, flag="M"), _r(1, 200.0, quality=Quality.SUSPECT, flag="C")]
    out, wm = evaluate_device(rules, _rules_input(flagged, NOW + timedelta(minutes=1)), CTX, {}, {}, 0)
    assert (out, wm) == ([], 0)
