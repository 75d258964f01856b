"""Liveness verdicts: connected-but-stale apart from offline, and the alerts they open and clear."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from core.records import AlertState
from geo.status import DeviceStatus, classify
from streams.liveness import (
    OFFLINE_RULE,
    STALE_RULE,
    DeviceLiveness,
    LivenessConfig,
    Verdict,
    judge,
    liveness_transitions,
    offline_transitions,
)

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
CFG = LivenessConfig(k=5)
CODE = "35020603080000017"


def _dev(silent_s: float, connected: bool | None = None, status_ago_s: float | None = None) -> DeviceLiveness:
    status_at = None if status_ago_s is None else NOW - timedelta(seconds=status_ago_s)
    return DeviceLiveness(CODE, "350206", "air", 60.0, NOW - timedelta(seconds=silent_s), connected, status_at)


@pytest.mark.parametrize(
    ("device", "verdict", "since_ago_s"),
    [
        (_dev(120), Verdict.OK, 120),  # 2 cadences: fine (since = its last reading)
        (_dev(600), Verdict.OFFLINE, 300),  # silent 10 cadences, no session: offline from last seen + 5 × 60 s
        (_dev(600, True, 3600), Verdict.STALE, 300),  # session up for an hour, data stopped: stale
        (_dev(600, True, 60), Verdict.OK, 600),  # reconnected a minute ago: k cadences of grace from the birth
        (_dev(30, False, 10), Verdict.OFFLINE, 10),  # the last will after the last data: offline at once
        (_dev(30, False, 40), Verdict.OK, 30),  # data after the will: it came back without a birth message
        (_dev(600, False, 900), Verdict.OFFLINE, 300),  # an old will, then data, then silence
    ],
)
def test_verdicts(device: DeviceLiveness, verdict: Verdict, since_ago_s: float) -> None:
    assert judge([device], NOW, CFG) == [(verdict, NOW - timedelta(seconds=since_ago_s))]


def test_stale_and_offline_are_distinct_alerts_and_move_from_one_to_the_other() -> None:
    stale = liveness_transitions([_dev(600, True, 3600)], {}, NOW, CFG)
    assert [(k, a.rule) for k, a in stale] == [("open", STALE_RULE)]
    opened = stale[0][1]
    assert opened.opened_at == NOW - timedelta(seconds=300) and "connected" in opened.message
    assert dict(opened.labels)["detail"] == "stale" and dict(opened.labels)["detector"] == "silence"
    # the same check again (or another worker): the open alert is known, nothing to do
    assert liveness_transitions([_dev(600, True, 3600)], {(CODE, STALE_RULE): opened.opened_at}, NOW, CFG) == []
    # then the connection drops: the stale alert clears and an offline one opens at the will's time
    lost = liveness_transitions([_dev(600, False, 5)], {(CODE, STALE_RULE): opened.opened_at}, NOW, CFG)
    assert sorted((k, a.rule) for k, a in lost) == [("clear", STALE_RULE), ("open", OFFLINE_RULE)]
    off = next(a for k, a in lost if k == "open")
    assert off.opened_at == NOW - timedelta(seconds=5) and "last will" in off.message
    clear = next(a for k, a in lost if k == "clear")
    assert clear.id == opened.id and clear.state is AlertState.RESOLVED


def test_offline_clears_when_data_flows_again() -> None:
    went = NOW - timedelta(seconds=400)
    out = liveness_transitions([_dev(5)], {(CODE, OFFLINE_RULE): went}, NOW, CFG)
    assert [(k, a.rule, a.cleared_at) for k, a in out] == [("clear", OFFLINE_RULE, NOW - timedelta(seconds=5))]


def test_first_version_api_still_answers_offline_only() -> None:
    out = offline_transitions([_dev(600), _dev(600, True, 3600)], {}, NOW, CFG)
    assert [(k, a.rule) for k, a in out] == [("open", OFFLINE_RULE)]


@pytest.mark.parametrize(
    ("silent_s", "connected", "status_ago_s", "status"),
    [
        (60, None, None, DeviceStatus.FRESH),
        (300, None, None, DeviceStatus.STALE),
        (3600, None, None, DeviceStatus.OFFLINE),
        (3600, True, 7200, DeviceStatus.STALE),  # connected but silent: stale, never offline
        (60, False, 10, DeviceStatus.OFFLINE),  # the last will: offline at once
        (60, False, 90, DeviceStatus.FRESH),  # data after an old will
    ],
)
def test_map_status_uses_the_session(
    silent_s: float, connected: bool | None, status_ago_s: float | None, status: DeviceStatus
) -> None:
    status_at = None if status_ago_s is None else NOW - timedelta(seconds=status_ago_s)
    got = classify(
        NOW - timedelta(seconds=silent_s), 60, alerting=False, now=NOW, connected=connected, status_at=status_at
    )
    assert got is status
