"""Flood throttling logic (ingest.throttle): pure, with a fake clock."""

from __future__ import annotations

import pytest

from devices.code import DeviceCode
from devices.models import shipped_models
from ingest.throttle import (
    DeviceThrottle,
    FloodTracker,
    Profile,
    ThrottleConfig,
    profiles_for,
    topic_device,
)

AIR = DeviceCode.build("350203", "0308", 1).full  # air (60 s) or water (3600 s) station
COVER = DeviceCode.build("350203", "0101", 1).full  # manhole cover, 3600 s
POLE = DeviceCode.build("350203", "0701", 1).full  # smart pole, 300 s


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _throttle(cfg: ThrottleConfig, clock: Clock, max_devices: int = 1000) -> DeviceThrottle:
    profiles, default = profiles_for(shipped_models().all(), cfg)
    return DeviceThrottle(profiles, default, max_devices=max_devices, clock=clock)


def test_profiles_come_from_model_cadence_and_shared_class_codes_take_the_fastest() -> None:
    cfg = ThrottleConfig(factor=10, burst=5)
    profiles, default = profiles_for(shipped_models().all(), cfg)
    assert profiles["0308"].device_class == "air+fluegas+water"  # CEMS are 环保监测站 too
    assert profiles["0308"].interval_s == pytest.approx(6.0)  # 60 s / 10
    assert profiles["0101"].device_class == "manhole" and profiles["0101"].interval_s == pytest.approx(360.0)
    assert profiles["0701"].tolerance_s == pytest.approx(4 * 30.0)
    assert default.device_class == "unknown" and default.cadence_s == 60.0


def test_burst_then_the_sustained_rate() -> None:
    clock = Clock()
    th = _throttle(ThrottleConfig(factor=10, burst=5), clock)
    assert [th.admit(AIR) for _ in range(7)] == [True] * 5 + [False] * 2
    clock.t += 5.9
    assert not th.admit(AIR)  # refused messages did not move the schedule, and 6 s have not passed
    clock.t += 0.1
    assert th.admit(AIR) and not th.admit(AIR)
    clock.t += 6 * 5  # a quiet device gets its whole burst back
    assert [th.admit(AIR) for _ in range(6)] == [True] * 5 + [False]


def test_a_flooding_device_does_not_affect_another() -> None:
    clock = Clock()
    th = _throttle(ThrottleConfig(factor=10, burst=3), clock)
    admitted = {AIR: 0, POLE: 0}
    for step in range(600):  # 60 s of wall time, 0.1 s apart
        clock.t += 0.1
        for _ in range(10):  # 100 msg/s flood
            admitted[AIR] += th.admit(AIR)
        if step % 300 == 0:  # the pole at 10× its cadence: exactly its allowance
            admitted[POLE] += th.admit(POLE)
    assert admitted[POLE] == 2
    # 3 in the burst, then one per 6 s
    assert admitted[AIR] == 3 + 9


def test_classes_have_their_own_rate() -> None:
    clock = Clock()
    th = _throttle(ThrottleConfig(factor=10, burst=1), clock)
    assert th.admit(COVER) and not th.admit(COVER)
    clock.t += 7
    assert not th.admit(COVER)  # 3600/10 = 360 s apart
    assert th.admit(AIR) and not th.admit(AIR)
    clock.t += 6
    assert th.admit(AIR)


def test_memory_is_bounded_and_idle_entries_are_dropped() -> None:
    clock = Clock()
    th = _throttle(ThrottleConfig(factor=10, burst=2), clock, max_devices=50)
    for i in range(1, 500):
        th.admit(DeviceCode.build("350203", "0308", i).full)
    assert len(th) == 50
    # once their buckets are full again, entries are state-free and go as the map is used
    clock.t += 3600
    for _ in range(60):
        th.admit(AIR)
        clock.t += 6
    assert len(th) <= 3


def test_lru_keeps_the_flooder_tracked() -> None:
    clock = Clock()
    th = _throttle(ThrottleConfig(factor=10, burst=1), clock, max_devices=10)
    assert th.admit(AIR)
    for i in range(2, 200):
        assert not th.admit(AIR)  # the flooder keeps being seen, so it stays most recent
        th.admit(DeviceCode.build("350203", "0308", i).full)
    assert not th.admit(AIR)


def test_unknown_class_code_gets_the_default() -> None:
    profile = Profile("unknown", 1.0, 0.0, 60.0)
    th = DeviceThrottle({}, profile, clock=Clock())
    assert th.profile_of("whatever") is profile
    assert th.admit("whatever") and not th.admit("whatever")


def test_topic_device() -> None:
    assert topic_device(f"citybrain/up/{AIR}/telemetry") == AIR
    assert topic_device("citybrain/up/x") == "x"
    assert topic_device("other/topic") == "other/topic"
    assert len(topic_device("citybrain/up/" + "9" * 500 + "/event")) == 64


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        ThrottleConfig(factor=0)
    with pytest.raises(ValueError):
        ThrottleConfig(burst=0)


def test_flood_tracker_reports_once_per_window_with_the_count() -> None:
    clock = Clock()
    tr = FloodTracker(60, max_devices=2, sample_bytes=4, clock=clock)
    assert tr.record(AIR, "air", "t/a", b"first-payload")
    assert not tr.record(AIR, "air", "t/a", b"second")
    assert tr.record(POLE, "pole", "t/p", b"p")
    assert not tr.record(COVER, "manhole", "t/c", b"c")  # over the bound: counted only
    assert tr.untracked == 1 and len(tr) == 2
    clock.t += 59
    assert tr.due() == []
    clock.t += 1
    due = sorted(tr.due(), key=lambda r: r.device_code)
    assert [(r.device_code, r.dropped) for r in due] == sorted([(AIR, 2), (POLE, 1)])
    assert next(r for r in due if r.device_code == AIR).sample == b"firs"
    assert len(tr) == 0
    assert tr.record(AIR, "air", "t/a", b"x")  # a new window: a new warning
    assert [r.dropped for r in tr.drain()] == [1] and len(tr) == 0
