"""Map status of a device from liveness, cadence and open alerts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from geo.status import DeviceStatus, classify

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("age_s", "cadence_s", "expected"),
    [
        (0, 60, DeviceStatus.FRESH),
        (120, 60, DeviceStatus.FRESH),  # 2 × cadence: still fresh (inclusive)
        (121, 60, DeviceStatus.STALE),
        (600, 60, DeviceStatus.STALE),  # 10 × cadence: still stale
        (601, 60, DeviceStatus.OFFLINE),
        (7200, 3600, DeviceStatus.FRESH),  # an hourly manhole cover two hours late is fine
        (-30, 60, DeviceStatus.FRESH),  # clock skew: seen "in the future"
    ],
)
def test_thresholds_scale_with_cadence(age_s: int, cadence_s: int, expected: DeviceStatus) -> None:
    assert classify(NOW - timedelta(seconds=age_s), cadence_s, alerting=False, now=NOW) is expected


def test_alerting_wins_over_everything() -> None:
    assert classify(None, None, alerting=True, now=NOW) is DeviceStatus.ALERTING
    assert classify(NOW - timedelta(days=9), 60, alerting=True, now=NOW) is DeviceStatus.ALERTING


def test_unknown_without_last_seen_or_cadence() -> None:
    assert classify(None, 60, alerting=False, now=NOW) is DeviceStatus.UNKNOWN
    assert classify(NOW, None, alerting=False, now=NOW) is DeviceStatus.UNKNOWN
