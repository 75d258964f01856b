"""A scenario with injected faults, run on the real platform and scored from PostgreSQL.

One platform (``Platform.start``, as ``citybrain demo`` does) serves the module. A
compact scenario — a rainstorm over manhole covers, a sewage discharge at two river
stations (one of them in maintenance, flag M), night-time construction next to a
residential noise monitor — runs at 2400× through MQTT and HJ 212 TCP while a fault
plan spikes, skews, duplicates, corrupts and flags values. The test then reads the
platform's alerts and stored readings straight from the database (the HTTP API needs
credentials) and reports precision and recall of both the alerts and the quality
flags. Only loose bounds are asserted: the figures are what the run measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg
import pytest

from citybrain.platform import Platform
from simulators.faults import Fault, FaultKind, FaultPlan
from simulators.fleet import Fleet, FleetConfig, FleetStats, SimDevice
from simulators.scenario import Scenario, load_scenario, oracle_alerts, score
from simulators.score import (
    ScoreReport,
    expected_quality,
    register_sites,
    score_platform,
    stored_values,
    wait_settled,
)
from tests.e2e.helpers import own_platform
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.e2e

# Starts 19:00 local in the past (the platform flags future event times as clock skew).
SCENARIO = """
id: e2e-compact-city
title: Rainstorm, sewage and night construction on a small city, for the e2e test
start: "2026-09-15T19:00:00+08:00"
duration: 9h
seed: 8
fleet: {manhole-cover: 10}
low_lying_share: 0.5
sites:
  - {name: houxi-river, model: water-station, district: "350211", attributes: {waterbody: river, target_class: 3}}
  - {name: maint-river, model: water-station, district: "350212", attributes: {waterbody: river, target_class: 3}}
  - {name: lujiang-residential, model: noise-monitor, district: "350203", attributes: {zone: "1"}}
  - {name: huli-commercial, model: noise-monitor, district: "350206", attributes: {zone: "2"}}
  - {name: spiky-air, model: air-station, district: "350205"}
  - {name: skewed-air, model: air-station, district: "350211"}
  # A plating plant under permit: its permit is the `permit` attribute the index would give.
  - name: jimei-plating
    model: wastewater-source
    district: "350211"
    attributes:
      operating_hours: "00:00-24:00"
      permit:
        number: 91350211SIM0001P
        holder: Jimei Plating
        valid_to: "2030-12-31"
        limits: {hg: {limit: 0.05, unit: mg/L, clause: "GB 8978-1996 表1 第1项 总汞"}}
effects:
  - {kind: rain, from: 1h, to: 5h, ramp: 30m, peak_mm_h: 90, elsewhere_mm_h: 15}
  - {kind: sewage, site: houxi-river, from: 1h, to: 6h, ramp: 30m, load: 1.0}
  # The same discharge at a station in maintenance: its flag-M data must raise nothing.
  - {kind: sewage, site: maint-river, from: 1h, to: 6h, ramp: 30m, load: 1.0}
  - {kind: construction, site: lujiang-residential, from: 0h, to: 9h, hours: [23, 3], level_db: 60}
  # Its mercury treatment fails for three hours: hourly means above GB 8978-1996 Table 1.
  - {kind: discharge, site: jimei-plating, from: 2h, to: 5h, load: 7}
expected:
  - {rule: manhole.water_level, select: {model: manhole-cover, tag: low_lying}, window: [1h, 6h]}
  - {rule: water.class.below_target, site: houxi-river, window: [1h, 7h]}
  - {rule: noise.night.over_limit, site: lujiang-residential, window: [4h, 8h]}
  - {rule: noise.night.burst, site: lujiang-residential, window: [4h, 8h]}
  - {rule: wastewater.hg.hour_limit, site: jimei-plating, window: [2h, 3h]}
"""

# A smaller one for the command line: covers only, over MQTT. Its codes overlap the first
# scenario's (both count from the same sequence base); it comes later in simulated time, as a
# device's rule state only moves forward in event time.
CLI_SCENARIO = """
id: e2e-cli-rain
title: A short rainstorm for `citybrain simulate --score`
start: "2026-10-01T12:00:00+08:00"
duration: 5h
seed: 3
fleet: {manhole-cover: 8}
low_lying_share: 0.5
effects:
  - {kind: rain, from: 30m, to: 3h, ramp: 30m, peak_mm_h: 90, elsewhere_mm_h: 10}
expected:
  - {rule: manhole.water_level, select: {model: manhole-cover, tag: low_lying}, window: [30m, 4h]}
"""


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    before = _descendants()
    # Simulated time runs 2400× the wall clock: far above the gateway's per-device flood
    # limit (100× a model's cadence), which would drop most of the run. A benchmark turns it
    # off the same way (CITYBRAIN_GATEWAY_FLOOD_FACTOR=0).
    with own_platform(tmp_path_factory, "scenario-platform", devices=1, gateway_flood_factor=0) as p:
        yield p
    assert wait_for(lambda: not (_descendants() - before), timeout=20), _descendants() - before


@dataclass
class Run:
    """One scenario run on the platform, with what it sent and what the platform made of it."""

    scenario: Scenario
    plan: FaultPlan
    stats: FleetStats
    sent_log: Path
    report: ScoreReport
    received_at: datetime


def _restart_edge(platform: Platform) -> None:
    # The HJ 212 server re-reads MNs and PWs every 30 s; restarting it makes the stations
    # registered just now known at once (the port stays: same argv).
    edge = platform.process("edge")
    edge.stop()
    edge.respawn()
    platform.wait_http(f"http://127.0.0.1:{platform.edge_port}/healthz", "edge", 60)


@pytest.fixture(scope="module")
def run(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Run:
    db = platform.services.database_url
    mqtt = platform.services.mqtt
    assert db and mqtt
    root = tmp_path_factory.mktemp("scenario-run")
    (root / "scenario.yaml").write_text(SCENARIO, encoding="utf-8")
    scenario = load_scenario(root / "scenario.yaml")
    named = {name: site.code for name, site in scenario.named.items()}
    with psycopg.connect(db) as conn:
        water = [s.code for s in scenario.sites() if s.model_id == "water-station"]
        imported = register_sites(conn, scenario.sites(), hj212_codes=water)
    assert not imported.issues, imported.issues
    _restart_edge(platform)
    covers = sorted(s.code for s in scenario.sites() if s.model_id == "manhole-cover")
    plan = FaultPlan(
        (
            # Humidity ×5 is physically impossible (> 100 %): stored as suspect, raises nothing.
            Fault(FaultKind.SPIKE, devices=(named["spiky-air"],), metrics=("humidity",), probability=0.3, magnitude=5),
            # A rare PM2.5 spike past the sensor's range: suspect, and an alert nobody expected.
            Fault(FaultKind.SPIKE, devices=(named["spiky-air"],), metrics=("pm25",), probability=0.005, magnitude=40),
            # A station clock 100 days fast for the first half hour: future event times.
            Fault(FaultKind.CLOCK_SKEW, devices=(named["skewed-air"],), end_s=1800, magnitude=100 * 86400),
            # The maintenance station flags all its data M (HJ 212 维护).
            Fault(FaultKind.DATA_FLAG, devices=(named["maint-river"],), flag="M"),
            Fault(FaultKind.DUPLICATE, devices=(named["huli-commercial"], *covers[:3]), probability=0.5),
            Fault(FaultKind.MALFORMED, devices=(named["huli-commercial"],), probability=0.1),
            Fault(FaultKind.LATE_BATCH, devices=(named["huli-commercial"],), start_s=3600, end_s=7200, magnitude=900),
        ),
        seed=8,
    )
    sent_log = root / "sent.ndjson"
    config = FleetConfig(
        mqtt.host,
        mqtt.port,
        start=scenario.start,
        username=mqtt.username,
        password=mqtt.password,
        connections=2,
        speed=2400.0,  # 9 simulated hours in under 15 s
        sent_log=sent_log,
        hj212=("127.0.0.1", platform.hj212_port),
        seed=8,
    )
    received_at = datetime.now(UTC)
    t0 = time.monotonic()
    stats = Fleet([SimDevice(m) for m in scenario.models()], config, plan).run(scenario.duration_s)
    keys = {(code, ts) for code, _, ts in expected_quality(sent_log, now=received_at)}
    codes = [s.code for s in scenario.sites()]
    since = min(ts for _, ts in keys)
    # Returns as soon as every expected row is there; the long quiet period only matters on
    # a loaded machine, where a worker can pause for seconds between batches.
    stored = wait_settled(db, codes, expected_rows=len(keys), since=since, timeout=150, quiet_s=30)
    report = score_platform(scenario, db, codes=codes, sent_log=sent_log, received_at=received_at)
    print(f"\nfleet: {stats.records} records, {stats.messages} MQTT messages, {stats.hj212_frames} HJ 212 frames")
    print(f"platform stored {stored}/{len(keys)} rows; run + drain {time.monotonic() - t0:.1f}s")
    print("\n".join(report.lines()))
    return Run(scenario, plan, stats, sent_log, report, received_at)


def test_the_compact_scenario_is_reachable_by_the_production_rules(tmp_path: Path) -> None:
    # The ground truth is right before the platform is blamed for missing it.
    (tmp_path / "s.yaml").write_text(SCENARIO, encoding="utf-8")
    scenario = load_scenario(tmp_path / "s.yaml")
    # The oracle knows no faults: without its M flags, the maintenance station would alert too.
    maint = scenario.named["maint-river"].code
    oracle = oracle_alerts(scenario, step_s=300)
    fired = [a for a in oracle if a.device != maint]
    assert len(fired) < len(oracle)
    precision, recall, details = score(scenario.expected(), fired)
    assert (precision, recall) == (1.0, 1.0), details


def test_scenario_alerts_on_the_platform_score_against_the_ground_truth(run: Run) -> None:
    report = run.report
    assert run.stats.hj212_replies["9014"] >= run.stats.hj212_frames * 0.9, run.stats.hj212_replies
    assert report.recall >= 0.5, report.lines()
    assert report.precision >= 0.5, report.lines()
    assert report.fired, "the platform raised no alert at all"
    # The sewage at the station in maintenance (flag M) never reaches the rules.
    maint = run.scenario.named["maint-river"].code
    # (Liveness alerts are not about the data: the fleet disconnects when the run ends, and a
    # device whose last word is its offline status is offline.)
    assert not [a for a in report.fired if a.device == maint and not a.rule.startswith("device.")], report.fired
    # The pollution source's hourly mercury means over MQTT, judged against the permit in its
    # ledger attributes: one exceedance, opened with the first failed hour.
    plant = run.scenario.named["jimei-plating"].code
    hg = [a for a in report.fired if a.device == plant and a.rule == "wastewater.hg.hour_limit"]
    assert len(hg) == 1, report.fired


def test_fault_injection_shows_in_the_stored_quality_flags(run: Run) -> None:
    quality = run.report.quality
    assert quality is not None
    assert quality.delivery >= 0.9, quality
    by_reason = quality.by_reason
    # Every kind of flagging fault happened, and the platform flagged (nearly) all of it.
    for reason in ("range", "future", "flag:M"):
        hit, total = by_reason[reason]
        assert total > 0 and hit >= 0.9 * total, (reason, by_reason, quality.wrong)
    assert quality.precision >= 0.9, quality.wrong


def test_stored_rows_tell_the_faults_apart(run: Run, platform: Platform) -> None:
    db = platform.services.database_url
    assert db
    named = {name: site.code for name, site in run.scenario.named.items()}
    with psycopg.connect(db) as conn:
        stored = stored_values(conn, named.values())
        maint = conn.execute(
            "select count(*), count(*) filter (where flags->>'ph' = 'suspect:M') from readings_water"
            " where device_code = %s",
            (named["maint-river"],),
        ).fetchone()
    assert maint is not None and maint[0] > 0 and maint[0] == maint[1], maint
    # Future rows of the skewed station are stored at the wire time, flagged suspect.
    future = [v for (code, _, ts), v in stored.items() if code == named["skewed-air"] and ts > run.received_at]
    assert future and {v.quality for v in future} == {"suspect"}
    # Corrupted messages store nothing; duplicates store once (the key is device + event time);
    # the late batch's records are all there.
    corrupt = duplicated = 0
    times: set[datetime] = set()
    with run.sent_log.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("device") != named["huli-commercial"] or "values" not in row:
                continue
            ts = datetime.fromisoformat(row["ts"])
            if row.get("corrupt"):
                corrupt += 1
                assert (named["huli-commercial"], "leq", ts) not in stored
            else:
                duplicated += row["copies"] > 1
                times.add(ts)
    huli = {ts for code, metric, ts in stored if code == named["huli-commercial"] and metric == "leq"}
    assert corrupt > 0 and duplicated > 0
    # Differences, not the sets: pytest's diff of two large sets of datetimes takes minutes.
    missing, extra = sorted(times - huli), sorted(huli - times)
    assert not missing and not extra, (len(missing), missing[:5], len(extra), extra[:5])


def test_simulate_command_scores_a_scenario_against_the_running_platform(platform: Platform, tmp_path: Path) -> None:
    path = tmp_path / "rain.yaml"
    path.write_text(CLI_SCENARIO, encoding="utf-8")
    env = platform.env()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "citybrain.cli",
            "simulate",
            "--scenario",
            str(path),
            "--speed",
            "0",
            "--quiet",
            "--sent-log",
            str(tmp_path / "sent.ndjson"),
            "--score",
            "--score-timeout",
            "40",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert "scenario e2e-cli-rain:" in proc.stdout
    line = next(x for x in proc.stdout.splitlines() if "recall" in x)
    recall = float(line.rsplit("recall", 1)[1])
    assert recall >= 0.5, proc.stdout
    assert "quality flags:" in proc.stdout and "delivery 1.000" in proc.stdout, proc.stdout
