"""Smart manhole cover value model (智能井盖): heartbeat plus alarm-on-change.

Real covers sleep on NB-IoT and wake for a periodic report (the model's
``cadence_s``, hourly) or at once when an alarm condition starts or ends
(docs/standards.md §6.1: "heartbeat/periodic packet + immediate alarm packet
+ immediate recovery packet"). :meth:`ManholeCover.events` says which of those a
cover sends in a tick; :meth:`ManholeCover.sample` gives the values.

Values: tilt near 0° with sensor noise, lid closed, a water level that rises
with the rain of the last three hours (``rain_mm_h`` driver; low-lying cells get
more of it from the scenario) and drains exponentially, CH4/H2S traces, the
shaft temperature, a battery that loses ~0.02 %/day, and RSSI.

Drivers: ``rain_mm_h``, ``lid_open`` (≥ 0.5 opens the lid), ``tilt_deg`` (added
tilt), ``ch4_lel`` and ``h2s_ppm`` (added gas).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from simulators.base import (
    NO_DRIVERS,
    Drivers,
    Site,
    clip_to_model,
    epoch_s,
    local_hour,
    model_of,
    rng_at,
    smooth_noise,
)

__all__ = ["ManholeCover", "ManholeEvent", "alarm_names"]

_RAIN_STEP = timedelta(minutes=10)
_RAIN_STEPS = 18  # three hours of memory
_RAIN_DECAY_STEPS = 6.0  # e-folding time of the drain, in steps (one hour)
#: Metres of water per (mm/h of rain × step of memory): 80 mm/h sustained gives ~1.8 m.
_RAIN_GAIN = 0.00375
#: Alarm thresholds of the cover's own firmware (docs/standards.md §6.1).
_TILT_ALARM_DEG = 15.0
_CH4_ALARM_LEL = 25.0
_H2S_ALARM_PPM = 10.0
_BATTERY_LOW = 20.0


@dataclass(frozen=True, slots=True)
class ManholeEvent:
    """One message a cover sends in a tick.

    Attributes:
        kind: ``periodic`` (heartbeat, on ``telemetry``), ``alarm`` or ``recovery``
            (on ``event``).
        alarms: Alarm names active after the change (``ALARM_BITS`` names of the manhole codec).
        values: The values sent.
    """

    kind: str
    alarms: frozenset[str]
    values: dict[str, float]

    @property
    def uplink(self) -> str:
        """The uplink kind this message goes on."""
        return "telemetry" if self.kind == "periodic" else "event"


def alarm_names(values: dict[str, float], warning_level_m: float) -> frozenset[str]:
    """Which firmware alarms a set of values raises (names as in the manhole codec's ``ALARM_BITS``)."""
    out: set[str] = set()
    if values["water_level"] >= warning_level_m:
        out.add("water_high")
    if values["lid_open"] >= 0.5:
        out.add("lid_opened")
    if values["tilt"] > _TILT_ALARM_DEG:
        out.add("tilt")
    if values["ch4"] >= _CH4_ALARM_LEL:
        out.add("ch4_high")
    if values["h2s"] >= _H2S_ALARM_PPM:
        out.add("h2s_high")
    if values["battery"] <= _BATTERY_LOW:
        out.add("sensor_battery_low")
    return frozenset(out)


class ManholeCover:
    """One simulated smart manhole cover.

    Args:
        code: Device code.
        seed: Seed of the cover's random streams.
        site: Where it stands; its ``depth_m``/``warning_level_m`` attributes are used.
        drivers: Scenario drivers (see the module docstring).
    """

    def __init__(self, code: str, seed: int, *, site: Site | None = None, drivers: Drivers = NO_DRIVERS) -> None:
        self.code = code
        self.seed = seed
        self.model = model_of("manhole-cover")
        rng = random.Random(seed)
        base = site or Site(code=code, model_id=self.model.id, district=code[:6])
        attrs = dict(base.attributes)
        attrs.setdefault("depth_m", round(rng.uniform(2.0, 4.0), 2))
        attrs.setdefault("warning_level_m", 1.0)
        attrs.setdefault("danger_level_m", 1.5)
        self.site = Site(base.code, base.model_id, base.district, base.lon, base.lat, base.cell, attrs, base.tags)
        self.depth_m = float(attrs["depth_m"])
        self.warning_level_m = float(attrs["warning_level_m"])
        self.drivers = drivers
        self.dry_level = rng.uniform(0.05, 0.3)
        self.tilt0 = rng.uniform(0.0, 1.5)
        # Installed up to two years before 2026; the battery is then 85–100 %.
        self.installed_s = 1_735_689_600 - rng.uniform(0, 2 * 365 * 86400)
        self.phase_s = rng.randrange(self.model.cadence_s)
        self.rssi0 = rng.uniform(-105, -80)

    def water_level(self, t: datetime) -> float:
        """Height of water in the shaft, m: dry level plus the drained-off rain of the last 3 h."""
        level = self.dry_level
        for k in range(_RAIN_STEPS):
            rain = float(self.drivers(self.site, t - k * _RAIN_STEP).get("rain_mm_h", 0.0))
            if rain > 0:
                level += _RAIN_GAIN * rain * math.exp(-k / _RAIN_DECAY_STEPS)
        return min(self.depth_m, level)

    def sample(self, t: datetime) -> dict[str, float]:
        """Values of every ``manhole-cover`` metric at ``t`` (canonical units, inside the ranges)."""
        rng = rng_at(self.seed, self.code, t, "manhole")
        drivers = self.drivers(self.site, t)
        level = self.water_level(t)
        days = max(0.0, (t.timestamp() - self.installed_s) / 86400)
        hour = local_hour(t)
        values = {
            "tilt": abs(self.tilt0 + rng.gauss(0, 0.15)) + float(drivers.get("tilt_deg", 0.0)),
            "lid_open": 1.0 if float(drivers.get("lid_open", 0.0)) >= 0.5 else 0.0,
            "water_level": level,
            "water_distance": (self.depth_m - level) * 1000,
            "ch4": max(0.0, 1.0 + 0.8 * smooth_noise(self.seed, self.code, t, 7200, "ch4"))
            + float(drivers.get("ch4_lel", 0.0)),
            "h2s": max(0.0, 0.4 + 0.3 * smooth_noise(self.seed, self.code, t, 7200, "h2s"))
            + float(drivers.get("h2s_ppm", 0.0)),
            "temperature": 24 + 2 * math.sin((hour - 9) / 24 * 2 * math.pi) + rng.gauss(0, 0.2),
            "battery": 100 - 0.02 * days,
            "rssi": self.rssi0 + rng.gauss(0, 2),
        }
        out = clip_to_model(values, self.model, 3)
        out["water_distance"] = round(out["water_distance"])  # the frame carries whole mm
        return out

    def events(self, t: datetime, tick_s: float) -> list[ManholeEvent]:
        """Messages the cover sends for the tick ``(t - tick_s, t]``.

        A heartbeat when a ``cadence_s`` boundary (offset by the cover's phase) falls in
        the tick; an alarm when an alarm condition started, a recovery when one ended.

        Args:
            t: End of the tick (simulated time).
            tick_s: Length of the tick; the cover compares its state at ``t`` with ``t - tick_s``.

        Returns:
            Zero, one or two events, heartbeat first.
        """
        out: list[ManholeEvent] = []
        now = self.sample(t)
        alarms = alarm_names(now, self.warning_level_m)
        cadence = self.model.cadence_s
        end = epoch_s(t) - self.phase_s
        if math.floor(end / cadence) != math.floor((end - tick_s) / cadence):
            out.append(ManholeEvent("periodic", alarms, now))
        before = alarm_names(self.sample(t - timedelta(seconds=tick_s)), self.warning_level_m)
        if alarms - before:
            out.append(ManholeEvent("alarm", alarms, now))
        elif before - alarms:
            out.append(ManholeEvent("recovery", alarms, now))
        return out
