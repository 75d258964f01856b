"""Pollution-source value models: a wastewater outlet (ST=32) and a stack CEMS (ST=31).

A plating plant's workshop outlet and a boiler stack, as their online monitors see them:

* **operating hours** (the site's ``operating_hours``, default ``08:00-20:00``): the flow
  is the production flow inside them, with a slow wander and a lunch dip, and a small
  residual flow (wastewater) or none (flue gas) outside;
* **concentrations** wander around a per-site baseline well under the national limits
  (GB 8978-1996 Table 1, GB 13223-2011 Table 1; docs/standards.md §8), so a compliant
  plant raises nothing;
* every sample gives the real-time values (CN 2011 ``-Rtd``: ``hg``, ``flow`` …); a sample
  on the full hour also gives that hour's means and discharged volume (CN 2061: ``hg_hour``,
  ``flow_hour``, ``flow_hour_cou``), computed from the same deterministic curves.

Drivers (scenario effects at the site):

``discharge_factor``  a treatment failure: the pollutants' concentrations × (1 + factor);
``outage``            > 0: the monitor sends nothing (the platform's liveness judges it).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import ClassVar

from alerts.indicators.source import in_operating_hours
from simulators.base import NO_DRIVERS, Drivers, Site, clip_to_model, local_hour, model_of, rng_at, smooth_noise

__all__ = ["FluegasSource", "WastewaterSource"]

#: Baselines as shares of the GB 8978-1996 Table 1 limits (mg/L) and typical plating-plant
#: levels of the other pollutants.
_WATER_BASE = {
    "hg": 0.01,
    "cd": 0.02,
    "cr": 0.3,
    "cr6": 0.06,
    "arsenic": 0.05,
    "pb": 0.1,
    "ni": 0.2,
    "cod": 45.0,
    "nh3n": 4.0,
    "tp": 0.5,
    "tn": 12.0,
}
#: Stack baselines (mg/m³) well under GB 13223-2011 Table 1.
_GAS_BASE = {"so2": 35.0, "nox": 50.0, "dust": 8.0, "hg": 0.004, "cd": 0.002, "pb": 0.01, "ni": 0.01}
_HOUR = timedelta(hours=1)


class _Source:
    model_id = ""
    base: ClassVar[Mapping[str, float]] = {}
    production_flow = 1.0
    residual_flow = 0.0
    flow_to_m3_per_s = 1.0

    def __init__(self, code: str, seed: int, *, site: Site | None = None, drivers: Drivers = NO_DRIVERS) -> None:
        self.code = code
        self.seed = seed
        self.model = model_of(self.model_id)
        self.site = site or Site(code=code, model_id=self.model_id, district=code[:6])
        self.drivers = drivers
        self.hours = str(self.site.attributes.get("operating_hours", "08:00-20:00"))
        rng = random.Random(seed)
        self.level = {k: v * rng.uniform(0.8, 1.2) for k, v in self.base.items()}
        self.flow0 = self.production_flow * rng.uniform(0.8, 1.2)

    def _flow(self, t: datetime) -> float:
        if not in_operating_hours(self.hours, t.timestamp()):
            return self.residual_flow
        lunch = 0.7 if 12 <= local_hour(t) < 13 else 1.0
        return self.flow0 * lunch * (1 + 0.1 * smooth_noise(self.seed, self.code, t, 3 * 3600, "flow"))

    def _conc(self, t: datetime, factor: float) -> dict[str, float]:
        return {
            k: v * (1 + 0.15 * smooth_noise(self.seed, self.code, t, 2 * 3600, k)) * (1 + factor)
            for k, v in self.level.items()
        }

    def sample(self, t: datetime) -> dict[str, float]:
        """Real-time values at ``t``; on the full hour also that hour's means and volume."""
        drivers = self.drivers(self.site, t)
        if float(drivers.get("outage", 0.0)) > 0:
            return {}
        factor = max(0.0, float(drivers.get("discharge_factor", 0.0)))
        rng = rng_at(self.seed, self.code, t, self.model_id)
        values = {k: v * rng.lognormvariate(0, 0.03) for k, v in self._conc(t, factor).items()}
        values["flow"] = self._flow(t)
        if t.minute == 0 and t.second == 0 and t.microsecond == 0:
            mid = t + _HOUR / 2
            mid_factor = max(0.0, float(self.drivers(self.site, mid).get("discharge_factor", 0.0)))
            flow = sum(self._flow(t + _HOUR * (i + 0.5) / 6) for i in range(6)) / 6
            values |= {f"{k}_hour": v for k, v in self._conc(mid, mid_factor).items()}
            values["flow_hour"] = flow
            values["flow_hour_cou"] = flow * self.flow_to_m3_per_s * 3600
        return clip_to_model(values, self.model, ndigits=5)


class WastewaterSource(_Source):
    """A plating plant's workshop outlet: flow in L/s, heavy metals in mg/L."""

    model_id = "wastewater-source"
    base = _WATER_BASE
    production_flow = 8.0  # L/s: ~29 m³ an hour
    residual_flow = 0.3
    flow_to_m3_per_s = 0.001


class FluegasSource(_Source):
    """A boiler stack: flow in m³/s, SO2, NOx, dust and heavy metals in mg/m³."""

    model_id = "fluegas-source"
    base = _GAS_BASE
    production_flow = 20.0  # m³/s
    residual_flow = 0.0
    flow_to_m3_per_s = 1.0
