"""Shared pieces of the device value models: sites, drivers, seeded per-instant randomness.

Every value model is a pure function of (seed, site, simulated time, drivers):
``sample(t)`` called twice with the same ``t`` gives the same values, whatever
was sampled in between. That makes out-of-order or late batches, duplicate
sends and min/max aggregation over an interval trivial, and a run reproducible
from its seed alone.

Scenarios influence models through *drivers*: a callable that returns named
environmental quantities for a site at an instant (rain intensity, a particulate
factor, a sewage load, construction noise). Models read the names they know and
ignore the rest, so a scenario never has to know which model it is talking to.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from devices.models import DeviceModel, shipped_models

__all__ = [
    "CST",
    "NO_DRIVERS",
    "Drivers",
    "Site",
    "ValueModel",
    "clip_to_model",
    "epoch_s",
    "local_hour",
    "model_of",
    "rng_at",
    "smooth_noise",
]

#: Xiamen local time (Asia/Shanghai has had no DST since 1991, so a fixed offset is exact).
CST = timezone(timedelta(hours=8))


@dataclass(frozen=True, slots=True)
class Site:
    """Where a simulated device stands and what the ledger would know about it.

    Attributes:
        code: 17-character city device code.
        model_id: Device model id (``air-station``, ``water-station`` …).
        district: GB/T 2260 district code.
        lon: WGS84 longitude.
        lat: WGS84 latitude.
        cell: 15-digit grid cell code, or ``None`` when unknown.
        attributes: Model attributes (``zone``, ``depth_m``, ``target_class`` …).
        tags: Free labels used by scenario selectors (``low_lying``, a site name …).
    """

    code: str
    model_id: str
    district: str
    lon: float = 118.1
    lat: float = 24.48
    cell: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    tags: frozenset[str] = frozenset()


#: Environmental drivers of a site at an instant (scenario → model).
Drivers = Callable[[Site, datetime], Mapping[str, float]]


def _no_drivers(site: Site, t: datetime) -> Mapping[str, float]:
    return {}


NO_DRIVERS: Drivers = _no_drivers


class ValueModel(Protocol):
    """What every device value model offers."""

    site: Site
    model: DeviceModel

    def sample(self, t: datetime) -> dict[str, float]:
        """Values of every metric at ``t``, canonical units, inside the model's ranges."""
        ...


def epoch_s(t: datetime) -> int:
    """Whole epoch seconds of an aware datetime."""
    return math.floor(t.timestamp())


def rng_at(seed: int, code: str, t: datetime, salt: str = "") -> random.Random:
    """A generator that depends only on (seed, device, instant, salt).

    String seeds go through SHA-512 in CPython, so the stream is stable across
    runs and platforms (``hash()`` would be salted per process).
    """
    return random.Random(f"{seed}:{code}:{epoch_s(t)}:{salt}")


def smooth_noise(seed: int, code: str, t: datetime, period_s: float, salt: str = "") -> float:
    """Slowly varying noise in about [-1, 1]: linear interpolation of per-knot values.

    Real sensors wander (weather, traffic) on a time scale of minutes to hours; white
    noise alone would make every minute independent and every statistic too clean.
    """
    x = t.timestamp() / period_s
    k = math.floor(x)
    frac = x - k
    # Knot values from CRC-32 of a stable key: ~20x cheaper than seeding a Random, and
    # uniform enough for slow wander (the fleet's throughput is bound by this function).
    key = f"{seed}:{code}:{salt}:".encode()
    a = zlib.crc32(b"%d" % k, zlib.crc32(key)) / 2147483647.5 - 1
    b = zlib.crc32(b"%d" % (k + 1), zlib.crc32(key)) / 2147483647.5 - 1
    return a + (b - a) * frac


def local_hour(t: datetime) -> float:
    """Hour of day in Xiamen local time, fractional (0 ≤ h < 24)."""
    local = t.astimezone(CST)
    return local.hour + local.minute / 60 + local.second / 3600


def clip_to_model(values: Mapping[str, float], model: DeviceModel, ndigits: int = 3) -> dict[str, float]:
    """Clamp every value into its metric's physical range and round it.

    Models are built to stay inside the ranges; the clamp is the guarantee, so
    a scenario pushing a driver very hard still yields readings the platform
    classes as physically possible (faults are what produce impossible ones).
    """
    out: dict[str, float] = {}
    for name, value in values.items():
        metric = model.metrics[name]
        out[name] = round(min(metric.high, max(metric.low, value)), ndigits)
    return out


def model_of(model_id: str) -> DeviceModel:
    """The shipped device model ``model_id`` (latest version)."""
    return shipped_models().get(model_id)
