"""Air-station value generator: seeded, pure, realistic enough for the rules.

PM2.5 follows a diurnal cycle with traffic peaks (08:00 and 18:00 local)
and lognormal noise; PM10 is correlated with PM2.5 (ratio ~1.6); NO2 and CO
follow traffic; O3 peaks in the afternoon. An optional pollution episode
multiplies particulates for a window, which the PM2.5 rule must catch.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = ["AirStation", "Episode"]

_CST = timezone(timedelta(hours=8))


@dataclass(frozen=True, slots=True)
class Episode:
    """Particulates × ``factor`` while ``start <= t < end`` (repeats every ``period_s`` if set)."""

    start_s: float
    duration_s: float
    factor: float = 4.0
    period_s: float | None = None

    def active(self, t_s: float) -> bool:
        if self.period_s:
            t_s = t_s % self.period_s
        return self.start_s <= t_s < self.start_s + self.duration_s


class AirStation:
    """One simulated air station."""

    def __init__(self, code: str, seed: int, *, micro: bool = False, episode: Episode | None = None) -> None:
        self.code = code
        self.rng = random.Random(seed)
        self.micro = micro
        self.episode = episode
        self.bias = self.rng.uniform(0.9, 1.3) if micro else 1.0
        self.base_pm25 = self.rng.uniform(18, 35)
        self.t0: datetime | None = None

    def sample(self, at: datetime) -> dict[str, float]:
        """Values of all metrics at ``at`` (canonical units)."""
        if self.t0 is None:
            self.t0 = at
        local = at.astimezone(_CST)
        hour = local.hour + local.minute / 60
        traffic = math.exp(-((hour - 8) ** 2) / 3) + math.exp(-((hour - 18) ** 2) / 4)
        noise = self.rng.lognormvariate(0, 0.25 if self.micro else 0.1)
        pm25 = self.base_pm25 * (1 + 0.5 * traffic) * noise * self.bias
        elapsed = (at - self.t0).total_seconds()
        if self.episode and self.episode.active(elapsed):
            pm25 *= self.episode.factor
        pm10 = pm25 * self.rng.uniform(1.4, 1.8)
        sun = max(0.0, math.sin((hour - 7) / 12 * math.pi))
        return {
            "pm25": round(pm25, 1),
            "pm10": round(pm10, 1),
            "so2": round(self.rng.uniform(4, 12), 1),
            "no2": round(20 + 35 * traffic * noise, 1),
            "co": round(0.5 + 0.6 * traffic * noise, 2),
            "o3": round(40 + 110 * sun**2 * noise, 1),
            "temperature": round(18 + 6 * sun + self.rng.gauss(0, 0.3), 1),
            "humidity": round(min(100.0, 75 - 15 * sun + self.rng.gauss(0, 2)), 1),
        }
