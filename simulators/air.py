"""Air-station and micro-station value models: seeded, pure, realistic enough for the rules.

PM2.5 follows a diurnal cycle with traffic peaks (08:00 and 18:00 local), a
weekly cycle (less traffic at weekends), dispersion by wind (Xiamen's sea
breeze blows from the south-east in the afternoon, a weaker land breeze from
the north-east at night) and lognormal noise; PM10 is correlated with PM2.5
(ratio ~1.6); NO2 and CO follow traffic; O3 is photochemical and peaks in the
afternoon. Micro-stations (low-cost optical and electrochemical sensors) are
noisier, carry a per-unit bias and over-read particulates in humid air.

An optional :class:`Episode` multiplies particulates for a window (the demo's
pollution episode); scenarios do the same through the ``pm_factor`` driver.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime

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

__all__ = ["AirStation", "Episode"]

# Kept for callers that imported it from here before simulators.base existed.
_CST = CST


@dataclass(frozen=True, slots=True)
class Episode:
    """Particulates × ``factor`` while ``start <= t < end`` (repeats every ``period_s`` if set)."""

    start_s: float
    duration_s: float
    factor: float = 4.0
    period_s: float | None = None

    def active(self, t_s: float) -> bool:
        """Whether the episode is on ``t_s`` seconds after the station's first sample."""
        if self.period_s:
            t_s = t_s % self.period_s
        return self.start_s <= t_s < self.start_s + self.duration_s


def _traffic(hour: float, weekday: int) -> float:
    """Relative road traffic, 0..~1.2: morning and evening rush, quieter weekends."""
    peaks = math.exp(-((hour - 8) ** 2) / 3) + math.exp(-((hour - 18) ** 2) / 4)
    daytime = 0.35 if 7 <= hour <= 21 else 0.05
    scale = 0.7 if weekday >= 5 else 1.0
    return scale * (peaks + daytime)


class AirStation:
    """One simulated air station or micro-station.

    Args:
        code: Device code.
        seed: Seed of this device's random streams.
        micro: A micro-station (``air-micro`` model): noisier, biased, no SO2/pressure/wind.
        episode: Optional recurring particulate episode, relative to the first sample.
        site: Where the station stands (scenarios select on it); default: a site in the code's district.
        drivers: Scenario drivers; ``pm_factor`` multiplies particulates.
    """

    def __init__(
        self,
        code: str,
        seed: int,
        *,
        micro: bool = False,
        episode: Episode | None = None,
        site: Site | None = None,
        drivers: Drivers = NO_DRIVERS,
    ) -> None:
        self.code = code
        self.seed = seed
        self.rng = random.Random(seed)
        self.micro = micro
        self.episode = episode
        self.model = model_of("air-micro" if micro else "air-station")
        self.site = site or Site(code=code, model_id=self.model.id, district=code[:6])
        self.drivers = drivers
        # Per-unit constants: drawn once from the seed, so a device keeps its character.
        self.bias = self.rng.uniform(0.9, 1.1) if micro else 1.0
        self.base_pm25 = self.rng.uniform(12, 25)
        self.base_so2 = self.rng.uniform(4, 10)
        self.t0: datetime | None = None

    def sample(self, at: datetime) -> dict[str, float]:
        """Values of all the model's metrics at ``at`` (canonical units, inside the model's ranges)."""
        if self.t0 is None:
            self.t0 = at
        rng = rng_at(self.seed, self.code, at, "air")
        local = at.astimezone(CST)
        hour = local_hour(at)
        traffic = _traffic(hour, local.weekday())
        sun = max(0.0, math.sin((hour - 7) / 12 * math.pi))
        day_of_year = local.timetuple().tm_yday
        # Xiamen: warmest late July, coolest late January.
        season = math.cos((day_of_year - 200) / 365 * 2 * math.pi)
        # Sea breeze (SE) in the afternoon, land breeze (NE) at night.
        wind_speed = max(0.2, 2.2 + 1.8 * sun + 1.2 * smooth_noise(self.seed, self.code, at, 5400, "ws"))
        wind_dir = (135.0 if sun > 0.2 else 45.0) + 35 * smooth_noise(self.seed, self.code, at, 7200, "wd")
        # Stronger wind disperses particulates; a calm night under an inversion traps them.
        dispersion = 1.0 / (0.5 + wind_speed / 4.4)
        sigma = 0.14 if self.micro else 0.1
        noise = rng.lognormvariate(0, sigma)
        drift = 1 + 0.25 * smooth_noise(self.seed, self.code, at, 3 * 3600, "pm")
        factor = float(self.drivers(self.site, at).get("pm_factor", 1.0))
        if self.episode and self.episode.active((at - self.t0).total_seconds()):
            factor *= self.episode.factor
        temperature = 21 + 6 * season + 4 * sun - 1.5 + rng.gauss(0, 0.3)
        humidity = min(99.0, max(20.0, 78 - 18 * sun + 8 * smooth_noise(self.seed, self.code, at, 4 * 3600, "rh")))
        pm25 = self.base_pm25 * (1 + 0.4 * traffic) * dispersion * drift * noise * factor
        if self.micro:
            # Optical sensors count swollen droplets as particles above ~70 % RH.
            pm25 *= self.bias * (1 + 0.2 * max(0.0, (humidity - 70) / 30))
        no2 = (12 + 48 * traffic * dispersion) * noise
        values = {
            "pm25": pm25,
            "pm10": pm25 * rng.uniform(1.4, 1.8),
            "no2": no2 * (self.bias if self.micro else 1.0),
            "co": (0.4 + 0.7 * traffic * dispersion) * noise,
            # Photochemistry; NO titrates O3 near traffic, hence the small traffic term.
            "o3": max(5.0, (35 + 130 * sun**2) * noise - 0.2 * no2),
            "temperature": temperature,
            "humidity": humidity,
        }
        if self.micro:
            values["tvoc"] = (0.15 + 0.35 * traffic) * noise
        else:
            values["so2"] = self.base_so2 * (1 + 0.3 * traffic) * noise
            values["pressure"] = 101.3 - 0.9 * season + 0.2 * smooth_noise(self.seed, self.code, at, 12 * 3600, "p")
            values["wind_speed"] = wind_speed
            values["wind_direction"] = wind_dir % 360
        return clip_to_model(values, self.model, 2)
