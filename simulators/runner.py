"""One entry point for ``citybrain simulate``: a city mix or a scenario, with faults, over MQTT.

Kept out of ``citybrain/cli.py`` so the CLI stays a thin edge: it parses
arguments and settings, builds :class:`SimulateOptions` and calls :func:`simulate`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from simulators.base import NO_DRIVERS
from simulators.city import build_sites, make_model
from simulators.faults import FaultPlan, load_fault_plan
from simulators.fleet import Fleet, FleetConfig, FleetStats, SimDevice
from simulators.scenario import Scenario, load_scenario

__all__ = ["DEFAULT_MIX", "SimulateOptions", "parse_mix", "simulate"]

#: A small city: every device class, roughly in the proportions a district deploys them.
DEFAULT_MIX: Mapping[str, int] = {
    "air-station": 6,
    "air-micro": 24,
    "water-station": 6,
    "noise-monitor": 12,
    "manhole-cover": 60,
    "smart-pole": 30,
}


def parse_mix(text: str) -> dict[str, int]:
    """``"air-station=10,manhole-cover=200"`` → ``{"air-station": 10, "manhole-cover": 200}``."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, count = part.partition("=")
        if not sep or not count.strip().isdigit():
            raise ValueError(f"bad mix item {part!r}; use model=count")
        out[name.strip()] = int(count)
    return out


@dataclass(frozen=True, slots=True)
class SimulateOptions:
    """What to simulate and where to send it (the CLI's arguments, typed)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    scenario: str | None = None
    mix: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    duration_s: float | None = None
    speed: float | None = 60.0
    seed: int = 42
    connections: int = 4
    interval_s: float | None = None
    faults: Path | None = None
    sent_log: Path | None = None
    hj212: tuple[str, int] | None = None
    progress: bool = True
    start: datetime | None = None


def simulate(opts: SimulateOptions, stop: threading.Event | None = None) -> tuple[FleetStats, Scenario | None]:
    """Build the fleet (scenario or mix), run it, and return its counters.

    Raises:
        FleetError: the broker or HJ 212 server cannot be reached.
        ScenarioError: the scenario is invalid.
        ValueError: the fault plan is invalid.
    """
    scenario = load_scenario(opts.scenario) if opts.scenario else None
    if scenario is not None:
        devices = [SimDevice(m) for m in scenario.models()]
        start = opts.start or scenario.start
        duration = opts.duration_s or scenario.duration_s
    else:
        sites = build_sites(opts.mix, opts.seed)
        devices = [SimDevice(make_model(s, opts.seed * 100_003 + i, NO_DRIVERS)) for i, s in enumerate(sites)]
        start = opts.start or datetime.now(UTC).replace(microsecond=0)
        duration = opts.duration_s or 3600.0
    plan = load_fault_plan(opts.faults) if opts.faults else FaultPlan()
    config = FleetConfig(
        opts.host,
        opts.port,
        start=start,
        username=opts.username,
        password=opts.password,
        connections=opts.connections,
        speed=opts.speed,
        interval_s=opts.interval_s,
        sent_log=opts.sent_log,
        progress=opts.progress,
        hj212=opts.hj212,
        seed=opts.seed,
    )
    return Fleet(devices, config, plan).run(duration, stop), scenario
