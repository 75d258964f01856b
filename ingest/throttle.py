"""Per-device rate limits for the MQTT gateway: flooding devices are throttled, never starve others.

A device reports at its model's cadence (``cadence_s`` in ``devices/data/models/*.yaml``).
The gateway admits up to ``factor`` × that rate, plus a burst of ``burst`` messages
(a reconnecting device flushing what it buffered, an alarm storm); beyond it the
device is *flooding* and its messages are dropped before they reach the bounded
hand-off queue, so they never take a slot, a Kafka batch or worker time away from
well-behaved devices (docs/security.md, "Flooding devices").

* :class:`DeviceThrottle` is GCRA (the generic cell rate algorithm, the virtual-scheduling
  form of a token bucket): one float per device (the theoretical arrival time), so a
  million tracked devices cost tens of MB, not hundreds. Entries whose bucket is full
  again carry no information and are dropped as the map is used; ``max_devices`` bounds
  it hard (least recently used first). It is not thread-safe: the gateway calls it from
  paho's network thread only.
* :class:`FloodTracker` turns throttled messages into one report per device and window
  (count, first/last time, a sample payload) for the dead-letter topic, so a flood is
  an event operators see, not thousands of dead letters. It is thread-safe: paho's
  thread records, the asyncio side collects.

The device model is not known at the gateway (no ledger lookup per message): the
profile comes from the device code's class code. A class code shared by several
models (``0308``: air and water stations) takes the most permissive cadence.

Pure logic with an injectable clock; no I/O.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from devices.models import DeviceModel

__all__ = [
    "DeviceThrottle",
    "FloodReport",
    "FloodTracker",
    "Profile",
    "ThrottleConfig",
    "profiles_for",
    "topic_device",
]

#: Label of devices whose class code no model declares.
UNKNOWN_CLASS = "unknown"


@dataclass(frozen=True, slots=True)
class ThrottleConfig:
    """Flood-throttling settings (from ``CITYBRAIN_GATEWAY_FLOOD_*``).

    Attributes:
        factor: Sustained rate allowed, in multiples of the model's cadence rate.
        burst: Messages admitted at once above that rate.
        window_s: A flooding device is reported (dead letter, warning) once per window.
        max_devices: Devices tracked at once (least recently used dropped beyond).
        max_flooding: Flooding devices reported per window at most (the rest are counted only).
    """

    factor: float = 100.0
    burst: int = 120
    window_s: float = 60.0
    max_devices: int = 1_000_000
    max_flooding: int = 10_000

    def __post_init__(self) -> None:
        if self.factor <= 0 or self.burst < 1 or self.window_s <= 0 or self.max_devices < 1:
            raise ValueError("factor and window_s must be > 0, burst and max_devices >= 1")


@dataclass(frozen=True, slots=True)
class Profile:
    """The limit of one class code.

    Attributes:
        device_class: Metric label (``air``; ``air+water`` for a shared class code).
        interval_s: Emission interval at the allowed sustained rate (cadence / factor).
        tolerance_s: How far ahead of schedule a device may be: (burst - 1) × interval.
        cadence_s: The model cadence it was derived from (for messages).
    """

    device_class: str
    interval_s: float
    tolerance_s: float
    cadence_s: float


def _profile(label: str, cadence_s: float, cfg: ThrottleConfig) -> Profile:
    interval = cadence_s / cfg.factor
    return Profile(label, interval, (cfg.burst - 1) * interval, cadence_s)


def profiles_for(models: Iterable[DeviceModel], cfg: ThrottleConfig) -> tuple[dict[str, Profile], Profile]:
    """Profiles by class code, and the default for class codes no model declares.

    A class code used by several models gets the shortest cadence among them (never
    throttle a legitimate device of the faster model) and the joined class names.
    The default uses the shortest cadence of all models.
    """
    cadence: dict[str, float] = {}
    classes: dict[str, set[str]] = {}
    for m in models:
        for cc in m.class_codes:
            cadence[cc] = min(cadence.get(cc, float(m.cadence_s)), float(m.cadence_s))
            classes.setdefault(cc, set()).add(m.device_class)
    profiles = {cc: _profile("+".join(sorted(classes[cc])), c, cfg) for cc, c in cadence.items()}
    fastest = min(cadence.values(), default=60.0)
    return profiles, _profile(UNKNOWN_CLASS, fastest, cfg)


def topic_device(topic: str) -> str:
    """The device part of ``citybrain/up/{code}/{kind}`` (the whole topic if it is not one).

    Cheap enough for paho's thread; validation proper happens later in ``classify``.
    """
    parts = topic.split("/", 3)
    if len(parts) >= 3 and parts[0] == "citybrain" and parts[1] == "up":
        return parts[2][:64]
    return topic[:64]


class DeviceThrottle:
    """GCRA rate limit per device code, memory-bounded. Call from one thread only.

    Args:
        profiles: Class code (characters 7–10 of the code) → limit.
        default: Limit of codes whose class code is not in ``profiles``.
        max_devices: Entries kept at most; beyond, the least recently used is dropped
            (it starts with a full bucket again).
        clock: Monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        profiles: Mapping[str, Profile],
        default: Profile,
        *,
        max_devices: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._profiles = dict(profiles)
        self._default = default
        self._max = max_devices
        self._clock = clock
        # code → theoretical arrival time; order = least recently seen first
        self._tat: OrderedDict[str, float] = OrderedDict()

    def profile_of(self, code: str) -> Profile:
        """The limit that applies to a device code."""
        return self._profiles.get(code[6:10], self._default)

    def admit(self, code: str) -> bool:
        """Whether a message of ``code`` arriving now is within its limit (and count it if so)."""
        now = self._clock()
        prof = self.profile_of(code)
        tat = self._tat.get(code)
        if tat is None or tat < now:
            tat = now
        if tat - now > prof.tolerance_s:
            # Refused messages do not advance the schedule: a flooder gets its fair rate
            # back as soon as it slows down. Recency keeps it from being evicted as idle.
            self._tat.move_to_end(code)
            return False
        self._tat[code] = tat + prof.interval_s
        self._tat.move_to_end(code)
        # Amortised clean-up: an entry whose time has passed is a full bucket, i.e. no state.
        for _ in range(2):
            oldest, at = next(iter(self._tat.items()))
            if at > now:
                break
            del self._tat[oldest]
        while len(self._tat) > self._max:
            self._tat.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._tat)


@dataclass(slots=True)
class FloodReport:
    """Messages of one device dropped in one window."""

    device_code: str
    device_class: str
    topic: str
    first_at: datetime
    last_at: datetime
    dropped: int
    sample: bytes
    opened: float  # clock time the window opened


class FloodTracker:
    """Aggregates throttled messages into one report per device and window. Thread-safe.

    Args:
        window_s: Length of a report window.
        max_devices: Devices with an open window at most; more are counted in
            :attr:`untracked` only (memory stays bounded under a city-wide storm).
        sample_bytes: Bytes of the first dropped payload kept as the report's sample.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        window_s: float,
        *,
        max_devices: int = 10_000,
        sample_bytes: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self._max = max_devices
        self._sample_bytes = sample_bytes
        self._clock = clock
        self._open: dict[str, FloodReport] = {}
        self._lock = threading.Lock()
        self.untracked = 0

    def record(self, code: str, device_class: str, topic: str, payload: bytes) -> bool:
        """Count one dropped message; True when it opened a new window (log a warning then)."""
        wall = datetime.now(UTC)
        with self._lock:
            rep = self._open.get(code)
            if rep is not None:
                rep.dropped += 1
                rep.last_at = wall
                return False
            if len(self._open) >= self._max:
                self.untracked += 1
                return False
            self._open[code] = FloodReport(
                code, device_class, topic, wall, wall, 1, payload[: self._sample_bytes], self._clock()
            )
            return True

    def due(self) -> list[FloodReport]:
        """Reports whose window has ended (removed from the tracker)."""
        cutoff = self._clock() - self.window_s
        with self._lock:
            done = [r for r in self._open.values() if r.opened <= cutoff]
            for r in done:
                del self._open[r.device_code]
        return done

    def drain(self) -> list[FloodReport]:
        """Every open report (at shutdown)."""
        with self._lock:
            out = list(self._open.values())
            self._open.clear()
        return out

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)
