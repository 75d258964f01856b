"""Surface-water quality station value model (地表水水质自动监测站).

A clean-ish river (GB 3838 class II–III) whose chemistry follows the physics a
station operator sees every day:

* water temperature lags air temperature: a small diurnal swing peaking mid-afternoon;
* dissolved oxygen is the temperature-dependent saturation (Benson–Krause fit)
  times a photosynthesis term that peaks in the afternoon and respiration that
  pulls it down before dawn;
* pH follows the same CO2 uptake, so it rises with DO in the afternoon;
* nutrients (NH3-N, TP, TN), CODMn/COD, turbidity and conductivity wander
  slowly around a per-station baseline.

Drivers: ``sewage`` (0..1, a discharge load) raises NH3-N, TP, TN, CODMn, COD,
turbidity and conductivity and consumes oxygen, which degrades the station's
class; ``rain_mm_h`` stirs up turbidity and dilutes conductivity.
"""

from __future__ import annotations

import math
import random
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

__all__ = ["WaterStation", "do_saturation"]


def do_saturation(temp_c: float) -> float:
    """Oxygen solubility in fresh water at 1 atm, mg/L (cubic fit of Benson & Krause, 0–40 °C)."""
    t = temp_c
    return 14.62 - 0.3898 * t + 0.006969 * t**2 - 0.00005897 * t**3


class WaterStation:
    """One simulated water-quality station.

    Args:
        code: Device code.
        seed: Seed of the station's random streams.
        site: Where it stands; default: a site in the code's district.
        drivers: Scenario drivers (``sewage``, ``rain_mm_h``).
    """

    def __init__(self, code: str, seed: int, *, site: Site | None = None, drivers: Drivers = NO_DRIVERS) -> None:
        self.code = code
        self.seed = seed
        self.model = model_of("water-station")
        self.site = site or Site(code=code, model_id=self.model.id, district=code[:6])
        self.drivers = drivers
        rng = random.Random(seed)
        # Baselines of a class II river (GB 3838 Table 1): NH3-N ≤ 0.5, TP ≤ 0.1, CODMn ≤ 4.
        self.nh3n0 = rng.uniform(0.2, 0.4)
        self.tp0 = rng.uniform(0.04, 0.08)
        self.codmn0 = rng.uniform(2.2, 3.4)
        self.cond0 = rng.uniform(250, 450)
        self.turb0 = rng.uniform(5, 20)
        if self.site.attributes.get("waterbody") == "lake":
            # Lakes and reservoirs are classed on TP by their own, stricter column (class II ≤ 0.025,
            # III ≤ 0.05): a reservoir at a river's TP would read class IV on a normal day.
            self.tp0 *= 0.35

    def sample(self, t: datetime) -> dict[str, float]:
        """Values of every ``water-station`` metric at ``t`` (canonical units, inside the ranges)."""
        rng = rng_at(self.seed, self.code, t, "water")
        hour = local_hour(t)
        day_of_year = t.astimezone(CST).timetuple().tm_yday
        season = math.cos((day_of_year - 210) / 365 * 2 * math.pi)
        drivers = self.drivers(self.site, t)
        sewage = max(0.0, float(drivers.get("sewage", 0.0)))
        rain = max(0.0, float(drivers.get("rain_mm_h", 0.0)))
        # Water lags the air: its daily maximum is around 16:00.
        water_temp = 22 + 6 * season + 1.2 * math.cos((hour - 16) / 24 * 2 * math.pi) + rng.gauss(0, 0.05)
        # Photosynthesis by day (peak ~15:00), respiration by night (minimum before dawn).
        photo = math.cos((hour - 15) / 24 * 2 * math.pi)
        slow = smooth_noise(self.seed, self.code, t, 6 * 3600, "n")
        oxygen_demand = 0.45 * sewage
        do = do_saturation(water_temp) * (0.92 + 0.12 * photo - oxygen_demand) + rng.gauss(0, 0.05)
        ph = 7.4 + 0.35 * photo - 0.6 * sewage + rng.gauss(0, 0.02)
        nh3n = self.nh3n0 * (1 + 0.15 * slow) + 2.6 * sewage
        tp = self.tp0 * (1 + 0.15 * slow) + 0.45 * sewage
        codmn = self.codmn0 * (1 + 0.1 * slow) + 9.0 * sewage
        values = {
            "ph": ph,
            "do": do,
            "water_temp": water_temp,
            "conductivity": self.cond0 * (1 + 0.05 * slow) + 600 * sewage - 4 * min(rain, 50),
            "codmn": codmn,
            "cod": codmn * 3.2 + rng.gauss(0, 0.2),
            "nh3n": nh3n * rng.lognormvariate(0, 0.03),
            "tp": tp * rng.lognormvariate(0, 0.03),
            "tn": (nh3n + 0.6 + 0.2 * slow) * 1.3,
            "turbidity": self.turb0 * (1 + 0.2 * slow) + 3 * rain + 60 * sewage,
        }
        return clip_to_model(values, self.model)
