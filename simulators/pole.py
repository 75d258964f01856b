"""Smart multifunction pole value model (智慧多功能杆) that answers lamp commands.

The lamp follows the city's schedule: on at dusk (18:30 local), dimmed to 50 %
from 23:00 to 05:00 (a common energy-saving profile), off at dawn (06:00).
Electrical values stay consistent with the lamp: power = rated × dimming,
current = power / (voltage × power factor), and a few milliamps when off, so
the platform's ``lamp_fault`` derivation sees no fault unless a scenario
breaks the lamp (``lamp_fail`` driver) or a command is not obeyed.

Commands arrive as the platform sends them on ``citybrain/cmd/{code}``
(``{"v":1,"id","name","params"}``, docs/commands.md); :meth:`SmartPole.handle_command`
validates them with the production validator, applies a lamp override until
the next scheduled switch, and returns the ack document for
``citybrain/up/{code}/event`` (``{"v":1,"ack":id,"ok":true}``).

Drivers: ``lamp_fail``, ``door_open``, ``water_ingress``, ``charger_fault`` (≥ 0.5
is true), ``tilt_deg`` (added tilt), ``pm_factor`` (particulates).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from ingest.commands import validate_params
from ingest.errors import CommandError
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

__all__ = ["SmartPole", "scheduled_lamp"]

_DUSK_H = 18.5
_DAWN_H = 6.0
_DIM_FROM_H = 23.0
_DIM_TO_H = 5.0
_RATED_W = 150.0
_POWER_FACTOR = 0.95
_STANDBY_A = 0.01  # driver electronics with the lamp off: well under the 0.05 A fault threshold
_MIN_DIM = 10  # LED drivers do not dim below ~10 %


def scheduled_lamp(t: datetime) -> tuple[bool, int]:
    """(lamp on, dimming %) of the city schedule at ``t``."""
    hour = local_hour(t)
    on = hour >= _DUSK_H or hour < _DAWN_H
    if not on:
        return False, 0
    dimmed = hour >= _DIM_FROM_H or hour < _DIM_TO_H
    return True, 50 if dimmed else 100


def _next_switch(t: datetime) -> datetime:
    """The next scheduled dusk or dawn after ``t`` (where a manual override ends)."""
    local = t.astimezone(CST)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    candidates = [midnight + timedelta(hours=h) + timedelta(days=d) for d in (0, 1) for h in (_DAWN_H, _DUSK_H)]
    return min(c for c in candidates if c > local)


class SmartPole:
    """One simulated smart pole.

    Args:
        code: Device code.
        seed: Seed of the pole's random streams.
        site: Where it stands.
        drivers: Scenario drivers (see the module docstring).
    """

    def __init__(self, code: str, seed: int, *, site: Site | None = None, drivers: Drivers = NO_DRIVERS) -> None:
        self.code = code
        self.seed = seed
        self.model = model_of("smart-pole")
        self.site = site or Site(code=code, model_id=self.model.id, district=code[:6])
        self.drivers = drivers
        rng = random.Random(seed)
        self.tilt0 = rng.uniform(0.1, 1.2)
        self.energy0 = rng.uniform(500, 5000)
        self.installed_s = 1_735_689_600 - rng.uniform(0, 3 * 365 * 86400)
        self.pm0 = rng.uniform(18, 32)
        # (on, dimming, until): a manual override from a command, until the next scheduled switch.
        self.override: tuple[bool, int, datetime] | None = None

    def lamp_state(self, t: datetime) -> tuple[bool, int]:
        """(lamp on, dimming %) at ``t``: the override while it lasts, else the schedule."""
        if self.override is not None:
            on, dimming, until = self.override
            if t < until:
                return on, dimming
        return scheduled_lamp(t)

    def sample(self, t: datetime) -> dict[str, float]:
        """Values of every ``smart-pole`` metric at ``t`` (canonical units, inside the ranges)."""
        rng = rng_at(self.seed, self.code, t, "pole")
        drivers = self.drivers(self.site, t)
        on, dimming = self.lamp_state(t)
        voltage = 220 + 4 * smooth_noise(self.seed, self.code, t, 1800, "v") + rng.gauss(0, 0.5)
        broken = float(drivers.get("lamp_fail", 0.0)) >= 0.5
        if on and not broken:
            power = _RATED_W * max(dimming, _MIN_DIM) / 100 * rng.uniform(0.97, 1.03)
            current = power / (voltage * _POWER_FACTOR)
        else:
            current = _STANDBY_A * rng.uniform(0.5, 1.5) if not broken else 0.0
            power = current * voltage * _POWER_FACTOR
        hours = max(0.0, (t.timestamp() - self.installed_s) / 3600)
        hour = local_hour(t)
        sun = max(0.0, math.sin((hour - 7) / 12 * math.pi))
        traffic = math.exp(-((hour - 8) ** 2) / 3) + math.exp(-((hour - 18) ** 2) / 4)
        values = {
            "lamp_on": 1.0 if on else 0.0,
            "dimming": float(dimming if on else 0),
            "voltage": voltage,
            "current": current,
            "power": power,
            # ~11.5 h a night at ~0.11 kW average: 0.055 kWh per hour of service life.
            "energy": self.energy0 + 0.055 * hours,
            "tilt": abs(self.tilt0 + rng.gauss(0, 0.05)) + float(drivers.get("tilt_deg", 0.0)),
            "door_open": 1.0 if float(drivers.get("door_open", 0.0)) >= 0.5 else 0.0,
            "water_ingress": 1.0 if float(drivers.get("water_ingress", 0.0)) >= 0.5 else 0.0,
            "charger_fault": 1.0 if float(drivers.get("charger_fault", 0.0)) >= 0.5 else 0.0,
            "pm25": self.pm0 * (1 + 0.4 * traffic) * rng.lognormvariate(0, 0.2) * float(drivers.get("pm_factor", 1.0)),
            "noise": 55 + 8 * traffic + 5 * sun + rng.gauss(0, 2),
            "temperature": 21 + 4 * sun + rng.gauss(0, 0.3),
            "humidity": 78 - 15 * sun + rng.gauss(0, 2),
        }
        return clip_to_model(values, self.model, 3)

    def handle_command(self, doc: Mapping[str, Any], t: datetime) -> dict[str, Any]:
        """Apply a command document and return the ack document.

        Args:
            doc: ``{"v":1,"id","name","params"}`` as received on ``citybrain/cmd/{code}``.
            t: Simulated time of receipt.

        Returns:
            ``{"v":1,"ack":id,"ok":true}``, or ``"ok": false`` with an ``"error"`` reason
            (the production validator's reason for bad parameters).
        """
        command_id = str(doc.get("id", ""))
        name = doc.get("name")
        params = doc.get("params", {})
        if doc.get("v") != 1 or not isinstance(name, str) or not isinstance(params, Mapping):
            return {"v": 1, "ack": command_id, "ok": False, "error": "bad_command"}
        try:
            clean = validate_params(self.model.commands.get(name), name, params)
        except CommandError as exc:
            return {"v": 1, "ack": command_id, "ok": False, "error": exc.reason}
        if name == "lamp":
            on = clean["state"] == "on"
            dimming = int(clean.get("dimming", 100 if on else 0)) if on else 0
            self.override = (on, dimming, _next_switch(t))
        # set_interval is accepted; the fleet owns cadence, so there is nothing to change here.
        return {"v": 1, "ack": command_id, "ok": True}
