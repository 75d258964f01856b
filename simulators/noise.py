"""Environmental noise monitor value model (噪声监测仪), by GB 3096-2008 functional zone.

The 1-minute equivalent level (Leq) follows the zone's day/night pattern: a few
dB under the zone's limit by day (GB 3096-2008 Table 1), dropping towards the
night limit after 22:00 and rising again with the morning traffic. LA is the
instantaneous A-weighted level around Leq, Lmax the minute's maximum. Ld and Ln
are the running energy averages of the current (or last) day and night periods
(昼间 06:00–22:00, 夜间 22:00–06:00), computed from the same profile so they
agree with the Leq the device reported.

Driver: ``construction_db`` — the level a construction site produces at the
monitor, dB(A); it adds energetically to the background and brings impulsive
maxima (pile driving, dropped steel) into Lmax.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from datetime import datetime, timedelta

from alerts.indicators.noise import NOISE_LIMITS
from simulators.base import (
    CST,
    NO_DRIVERS,
    Drivers,
    Site,
    clip_to_model,
    local_hour,
    model_of,
    rng_at,
    smooth_noise,
)

__all__ = ["NoiseMonitor", "energy_mean", "energy_sum"]

_STEP = timedelta(minutes=15)
_CACHE_MAX = 512


def energy_sum(*levels: float) -> float:
    """Level of several incoherent sources together, dB."""
    return 10 * math.log10(sum(10 ** (level / 10) for level in levels))


def energy_mean(levels: list[float]) -> float:
    """Equivalent (energy-averaged) level of equal-duration intervals, dB."""
    return 10 * math.log10(sum(10 ** (level / 10) for level in levels) / len(levels))


class NoiseMonitor:
    """One simulated noise monitor.

    Args:
        code: Device code.
        seed: Seed of the monitor's random streams.
        zone: GB 3096 functional zone (``"0"``, ``"1"``, ``"2"``, ``"3"``, ``"4a"``, ``"4b"``);
            default: the site's ``zone`` attribute, else ``"2"``.
        site: Where it stands.
        drivers: Scenario drivers (``construction_db``).
    """

    def __init__(
        self,
        code: str,
        seed: int,
        *,
        zone: str | None = None,
        site: Site | None = None,
        drivers: Drivers = NO_DRIVERS,
    ) -> None:
        self.code = code
        self.seed = seed
        self.model = model_of("noise-monitor")
        self.site = site or Site(code=code, model_id=self.model.id, district=code[:6])
        self.zone = str(zone or self.site.attributes.get("zone", "2"))
        if self.zone not in NOISE_LIMITS:
            raise ValueError(f"unknown GB 3096 zone {self.zone!r}")
        self.drivers = drivers
        rng = random.Random(seed)
        day, night = NOISE_LIMITS[self.zone]
        # Most monitors comply most of the time: a few dB under each limit.
        self.day_level = day - rng.uniform(3, 7)
        self.night_level = night - rng.uniform(2.5, 6)
        self._cache: OrderedDict[int, float] = OrderedDict()

    def _background(self, t: datetime) -> float:
        """Background Leq without randomness: the zone profile plus slow wander."""
        hour = local_hour(t)
        # Smooth day/night transition: ramps 06:00–08:00 and 20:00–22:00, inside the GB 3096
        # day period (06:00–22:00) at both ends. A ramp from 05:00 put every arterial (4a)
        # monitor over its night limit for the last night hour, every day (docs/anomaly.md,
        # "A quiet normal day").
        up = min(1.0, max(0.0, (hour - 6) / 2))
        down = min(1.0, max(0.0, (22 - hour) / 2))
        dayness = min(up, down)
        rush = 1.5 * (math.exp(-((hour - 8) ** 2) / 2) + math.exp(-((hour - 18) ** 2) / 3))
        base = self.night_level + (self.day_level - self.night_level) * dayness + rush * dayness
        return base + 1.2 * smooth_noise(self.seed, self.code, t, 3600, "bg")

    def _leq_mean(self, t: datetime) -> float:
        """Expected Leq at ``t``: background plus the construction driver."""
        level = self._background(t)
        construction = float(self.drivers(self.site, t).get("construction_db", 0.0))
        return energy_sum(level, construction) if construction > 0 else level

    def _cached_leq(self, t: datetime) -> float:
        key = math.floor(t.timestamp())
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = self._leq_mean(t)
            if len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)
        return value

    def _period_mean(self, start: datetime, end: datetime) -> float:
        """Energy mean of the expected Leq over [start, end] at 15-minute steps."""
        levels = []
        at = start
        while at <= end:
            levels.append(self._cached_leq(at))
            at += _STEP
        return energy_mean(levels)

    def _periods(self, t: datetime) -> tuple[tuple[datetime, datetime], tuple[datetime, datetime]]:
        """(day period, night period) to report at ``t``: the running one and the last complete other."""
        local = t.astimezone(CST)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        day_start = midnight + timedelta(hours=6)
        night_start = midnight + timedelta(hours=22)
        if local < day_start:  # after midnight, inside last evening's night
            night = (night_start - timedelta(days=1), local)
            day = (day_start - timedelta(days=1), night_start - timedelta(days=1))
        elif local < night_start:
            day = (day_start, local)
            night = (night_start - timedelta(days=1), day_start)
        else:
            night = (night_start, local)
            day = (day_start, night_start)

        # Snap to the step grid so consecutive samples share cache entries.
        def snap(a: datetime, b: datetime) -> tuple[datetime, datetime]:
            steps = max(0, math.floor((b - a) / _STEP))
            return a, a + steps * _STEP

        return snap(*day), snap(*night)

    def sample(self, t: datetime) -> dict[str, float]:
        """Values of every ``noise-monitor`` metric at ``t`` (dB(A), inside the ranges)."""
        rng = rng_at(self.seed, self.code, t, "noise")
        construction = float(self.drivers(self.site, t).get("construction_db", 0.0))
        leq = self._leq_mean(t) + rng.gauss(0, 0.8)
        la = leq + rng.gauss(0, 2.5)
        # The minute's maximum is 5–12 dB above its Leq, and never below the instantaneous LA.
        # (It was max(la, leq) + 5–12: LA's own excursion counted twice, so a quiet night's
        # upper tail crossed GB 3096's night limit + 15 dB tens of times a day.)
        lmax = max(la, leq + rng.uniform(5, 12))
        if construction > 0 and rng.random() < 0.5:
            # Impulses (pile driving, dropped steel) stand 15–25 dB above the site's average.
            lmax = max(lmax, construction + rng.uniform(15, 25))
        day, night = self._periods(t)
        values = {
            "la": la,
            "leq": leq,
            "lmax": lmax,
            "ld": self._period_mean(*day),
            "ln": self._period_mean(*night),
        }
        return clip_to_model(values, self.model, 1)
