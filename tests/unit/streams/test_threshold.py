from datetime import UTC, datetime, timedelta

import pytest

from alerts.errors import RuleError
from alerts.threshold import ThresholdRule, evaluate
from citybrain.records import AlertState, Quality, Reading, Severity

CODE = "35020603080000017"
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
RULE = ThresholdRule("air.pm25.high", "air", "pm25", 75.0, 67.5, Severity.MAJOR)


def _r(i: int, v: float, q: Quality = Quality.GOOD) -> Reading:
    t = T0 + timedelta(minutes=i)
    return Reading(CODE, "pm25", t, t, v, "ug/m3", q)


def _eval(values: list[float], state: dict[str, int] | None = None):
    st = {} if state is None else state
    return evaluate(RULE, [_r(i, v) for i, v in enumerate(values)], st, district="350206", device_class="air"), st


def test_opens_once_and_clears_with_hysteresis() -> None:
    out, state = _eval([50, 80, 90, 74, 70, 76, 60])
    assert [(t.opened, t.alert.state) for t in out] == [(True, AlertState.OPEN), (False, AlertState.RESOLVED)]
    assert out[0].alert.id == out[1].alert.id
    assert out[1].alert.cleared_at == T0 + timedelta(minutes=6)
    assert state == {}


def test_hovering_at_threshold_does_not_flap() -> None:
    out, _ = _eval([76, 74, 76, 74, 76, 74])
    assert len(out) == 1


def test_state_carries_across_batches_without_repeating() -> None:
    out1, state = _eval([80])
    out2, state = _eval([85, 90], state)
    assert len(out1) == 1 and out2 == []
    assert len(state) == 1


def test_bad_readings_never_reach_rules() -> None:
    out = evaluate(RULE, [_r(0, 500, Quality.BAD)], {}, district="350206", device_class="air")
    assert out == []


def test_out_of_order_readings_are_evaluated_in_event_time() -> None:
    readings = [_r(2, 60), _r(1, 90), _r(0, 50)]
    out = evaluate(RULE, readings, {}, district="350206", device_class="air")
    assert [t.opened for t in out] == [True, False]


def test_invalid_rule() -> None:
    with pytest.raises(RuleError):
        ThresholdRule("x", "air", "pm25", 10, 20, Severity.INFO)
