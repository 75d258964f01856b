"""Derived indicators: the real-time AQI under both HJ 633 versions, and errors that are reported, not swallowed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from alerts.derive import derive
from alerts.engine import DeviceContext, evaluate_device
from alerts.errors import IndicatorError
from alerts.indicators import aqi as aqi_mod
from core.records import Reading

T = 1.7e9
CODE = "35020603080000017"


def test_hj633_2012_air_device_gets_an_aqi_from_pm_read_as_the_24h_sliding_mean() -> None:
    # Regression: PM was passed as a 1 h mean, which HJ 633-2012's real-time report
    # does not use; the IndicatorError was swallowed and the device got no AQI at all.
    snap: dict[str, list[float]] = {"pm25": [80.0], "so2": [10.0]}
    changed = derive("air", snap, {"aqi_version": "HJ633-2012"}, T)
    assert changed == {"aqi", "aqi_level"}
    want = aqi_mod.aqi({("pm25", "24h"): 80.0, ("so2", "1h"): 10.0}, version="HJ633-2012", mode="hourly")
    assert snap["aqi"][:2] == [float(want.aqi), T]
    assert want.aqi == 107  # 100 + (80 - 75) × 50 / 40, rounded up
    assert snap["aqi_level"][0] == 3.0


def test_hj633_2026_reads_pm_as_the_1h_mean() -> None:
    snap: dict[str, list[float]] = {"pm25": [80.0], "so2": [10.0]}
    derive("air", snap, {"aqi_version": "HJ633-2026"}, T)
    want = aqi_mod.aqi({("pm25", "1h"): 80.0, ("so2", "1h"): 10.0}, version="HJ633-2026")
    assert snap["aqi"][0] == float(want.aqi) == 119.0


@pytest.mark.parametrize(
    ("device_class", "snap", "attrs"),
    [
        ("air", {"so2": [900.0]}, {"aqi_version": "HJ633-2012"}),  # no 1 h IAQI above 800
        ("air", {"pm25": [30.0]}, {"aqi_version": "HJ633-1999"}),
        ("noise", {"ld": [60.0]}, {"zone": "9"}),
    ],
)
def test_an_indicator_that_cannot_be_computed_is_reported(
    device_class: str, snap: dict[str, list[float]], attrs: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[tuple[str, IndicatorError]] = []
    assert derive(device_class, snap, attrs, T, on_error=lambda c, e: errors.append((c, e))) == set()
    assert [c for c, _ in errors] == [device_class]
    # Without a callback it is logged, never silent.
    with caplog.at_level(logging.WARNING, logger="alerts.derive"):
        derive(device_class, dict(snap), attrs, T)
    assert "not computed" in caplog.text


def test_evaluate_device_logs_the_device_and_counts_through_its_callback(caplog: pytest.LogCaptureFixture) -> None:
    t0 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
    reading = Reading(CODE, "so2", t0, t0, 900.0, "ug/m3")
    seen: list[str] = []
    with caplog.at_level(logging.WARNING, logger="alerts.engine"):
        evaluate_device(
            [],
            [reading],
            DeviceContext(CODE, "350206", "air", attributes={"aqi_version": "HJ633-2012"}, model="air-station"),
            {},
            {},
            0,
            on_derive_error=lambda c, e: seen.append(c),
        )
    assert seen == ["air"]
    assert CODE in caplog.text
