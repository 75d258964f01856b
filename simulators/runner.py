"""One entry point for ``citybrain simulate``: a city mix or a scenario, with faults, over MQTT.

Kept out of ``citybrain/cli.py`` so the CLI stays a thin edge: it parses
arguments and settings, builds :class:`SimulateOptions` and calls :func:`simulate`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from simulators.base import NO_DRIVERS, Site
from simulators.city import build_sites, make_model
from simulators.faults import FaultPlan, load_fault_plan
from simulators.fleet import DEFAULT_HJ212_MODELS, Fleet, FleetConfig, FleetStats, SimDevice
from simulators.scenario import Scenario, load_scenario

if TYPE_CHECKING:
    from simulators.score import ScoreReport

__all__ = ["DEFAULT_MIX", "EDGE_REFRESH_S", "SimulateError", "SimulateOptions", "parse_mix", "score_run", "simulate"]


#: How often the edge re-reads HJ 212 MNs and PWs from the ledger (``citybrain edge``), plus a margin.
EDGE_REFRESH_S = 31.0


class SimulateError(Exception):
    """The run cannot be set up as asked (e.g. scoring without a database)."""


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
    database_url: str | None = None
    register: bool = False
    #: How long a registration waits for the HJ 212 edge to re-read the ledger
    #: (its ``CITYBRAIN_HJ212_REFRESH_S`` plus a margin).
    edge_refresh_s: float = EDGE_REFRESH_S


def simulate(opts: SimulateOptions, stop: threading.Event | None = None) -> tuple[FleetStats, Scenario | None]:
    """Build the fleet (scenario or mix), register it if asked, run it, and return its counters.

    Raises:
        FleetError: the broker or HJ 212 server cannot be reached.
        ScenarioError: the scenario is invalid.
        SimulateError: ``register`` without ``database_url``, or the ledger refused devices.
        ValueError: the fault plan is invalid.
    """
    scenario = load_scenario(opts.scenario) if opts.scenario else None
    sites: list[Site]
    if scenario is not None:
        sites = scenario.sites()
        devices = [SimDevice(m) for m in scenario.models()]
        start = opts.start or scenario.start
        duration = opts.duration_s or scenario.duration_s
    else:
        sites = build_sites(opts.mix, opts.seed)
        devices = [SimDevice(make_model(s, opts.seed * 100_003 + i, NO_DRIVERS)) for i, s in enumerate(sites)]
        start = opts.start or datetime.now(UTC).replace(microsecond=0)
        duration = opts.duration_s or 3600.0
    if opts.register:
        register(opts, sites, stop)
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


def register(opts: SimulateOptions, sites: list[Site], stop: threading.Event | None = None) -> None:
    """Import the run's devices into the ledger (the stream worker rejects unknown codes).

    The stream worker reloads the ledger every 2 s; the edge re-reads HJ 212 MNs and PWs
    every 30 s. When new stations will speak HJ 212, this waits that long (or until
    ``stop``), so their first frames are not refused.

    Raises:
        SimulateError: no database URL, or the importer refused some rows.
    """
    from simulators.score import register_sites

    if not opts.database_url:
        raise SimulateError("registering devices needs the database (CITYBRAIN_DATABASE_URL)")
    # Only stations that will speak HJ 212 get a PW (scrypt costs ~0.1 s per device).
    hj212 = [s.code for s in sites if s.model_id in DEFAULT_HJ212_MODELS] if opts.hj212 else []
    with psycopg.connect(opts.database_url) as conn:
        report = register_sites(conn, sites, hj212_codes=hj212)
    if report.issues:
        first = report.issues[0]
        raise SimulateError(f"the ledger refused {len(report.issues)} device(s); line {first.line}: {first.reason}")
    if hj212 and report.inserted:
        if opts.progress:
            print(
                f"registered {report.inserted} devices; waiting {opts.edge_refresh_s:.0f}s for the HJ 212 edge",
                flush=True,
            )
        (stop or threading.Event()).wait(opts.edge_refresh_s)


def score_run(
    opts: SimulateOptions, scenario: Scenario, *, received_at: datetime | None = None, timeout: float = 120.0
) -> ScoreReport:
    """Wait for the platform to store the run, then score its alerts (and quality flags).

    Reads PostgreSQL directly (``opts.database_url``); the sent log, when the run wrote
    one, adds the quality-flag score.

    Raises:
        SimulateError: no database URL.
    """
    from simulators.score import expected_quality, score_platform, wait_settled

    if not opts.database_url:
        raise SimulateError("scoring needs the database (CITYBRAIN_DATABASE_URL)")
    codes = [s.code for s in scenario.sites()]
    sent_log = opts.sent_log if opts.sent_log is not None and opts.sent_log.exists() else None
    rows = None
    # Stored times of hour data start an hour before they were sent.
    since = scenario.start - timedelta(hours=1)
    if sent_log is not None:
        # Rows the platform must end up with: one per device and stored event time.
        keys = {(code, ts) for code, _, ts in expected_quality(sent_log, now=received_at)}
        rows = len(keys)
        since = min((ts for _, ts in keys), default=since)
    wait_settled(opts.database_url, codes, expected_rows=rows, since=since, timeout=timeout)
    return score_platform(scenario, opts.database_url, codes=codes, sent_log=sent_log, received_at=received_at)
