"""Scenarios over simulated time, with their ground truth, and precision/recall scoring.

A scenario file (``simulators/scenarios/*.yaml``) says when it starts and how
long it lasts, which devices it needs (a seeded city fleet plus named sites),
which *effects* act on them, and which alerts must fire (``expected``: rule id
from ``alerts/data/rules``, device or district, time window). Effects become
the value models' drivers (:mod:`simulators.base`); nothing else changes, so
a scenario runs through the very same fleet, encoders and faults as normal
traffic.

Effect kinds:

``rain``          ``rain_mm_h`` = ``peak_mm_h`` in low-lying cells, ``elsewhere_mm_h`` elsewhere,
                  ramping up and down over ``ramp``.
``plume``         ``pm_factor`` around a centre that moves through district centres
                  (``path: [{at, district}]``), Gaussian with ``radius_km``.
``sewage``        ``sewage`` load (0..1) at one named site.
``construction``  ``construction_db`` at one named site, each night between local hours.
``discharge``     ``discharge_factor`` at one named pollution source: its concentrations × (1 + load).
``outage``        ``outage`` at one named pollution source: its monitor sends nothing.

:func:`score` compares fired alerts with the ground truth; :func:`oracle_alerts`
runs the production rule engine (pure, no I/O) over the scenario's simulated
readings, so a test can prove the ground truth is reachable before a benchmark
blames the platform.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from alerts.engine import DeviceContext, evaluate_device
from alerts.rules import RuleSet, parse_duration, shipped_rules
from core.records import Reading
from devices.code import DeviceCode
from geo.spatial import haversine_m
from simulators.base import Drivers, Site, ValueModel, local_hour
from simulators.city import CLASS_CODES, build_sites, city_layout, make_model

__all__ = [
    "Effect",
    "ExpectedAlert",
    "FiredAlert",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "oracle_alerts",
    "score",
    "shipped_scenarios",
]

_NAMED_SEQUENCE_BASE = 900_000


class ScenarioError(ValueError):
    """A scenario file is invalid."""


def _duration(value: Any, where: str) -> float:
    try:
        return float(parse_duration(value))
    except Exception as exc:
        raise ScenarioError(f"{where}: bad duration {value!r}") from exc


@dataclass(frozen=True, slots=True)
class Effect:
    """One effect of a scenario; times are seconds after the scenario's start."""

    kind: str
    start_s: float
    end_s: float
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ExpectedAlert:
    """An alert the scenario must raise.

    Attributes:
        rule: Rule id from ``alerts/data/rules``.
        device: Device code, or ``None`` when any device of ``district`` counts.
        district: District code (always set).
        start: Window start: the alert must open within ``[start, end]``.
        end: Window end.
    """

    rule: str
    device: str | None
    district: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class FiredAlert:
    """An alert the platform (or the oracle) opened."""

    rule: str
    device: str
    district: str
    opened_at: datetime


@dataclass(slots=True)
class Scenario:
    """A loaded scenario.

    Attributes:
        id: Scenario id.
        title: One line.
        start: Simulated start (aware).
        duration_s: Simulated length.
        seed: Seed of the fleet and models.
        fleet: Model id → number of city devices.
        named: Named sites (name → site).
        effects: The effects.
        expected_spec: The raw ``expected`` entries (resolved by :meth:`expected`).
        low_lying_share: Share of manhole covers placed in low-lying cells.
    """

    id: str
    title: str
    start: datetime
    duration_s: float
    seed: int
    fleet: Mapping[str, int]
    named: dict[str, Site]
    effects: tuple[Effect, ...]
    expected_spec: tuple[Mapping[str, Any], ...]
    low_lying_share: float | None = None
    _sites: list[Site] | None = field(default=None, repr=False)

    @property
    def end(self) -> datetime:
        """Simulated end."""
        return self.start + timedelta(seconds=self.duration_s)

    def sites(self) -> list[Site]:
        """City sites plus named sites (built once, seeded)."""
        if self._sites is None:
            city = build_sites(self.fleet, self.seed, low_lying_share=self.low_lying_share) if self.fleet else []
            self._sites = city + list(self.named.values())
        return self._sites

    def models(self) -> list[ValueModel]:
        """Value models of every site, driven by this scenario."""
        drivers = self.drivers()
        return [make_model(site, self.seed * 100_003 + i, drivers) for i, site in enumerate(self.sites())]

    def drivers(self) -> Drivers:
        """The drivers function of all effects together."""
        effects = self.effects
        start = self.start
        centres = {d.code: city_layout().centre(d.code) for d in city_layout().districts}

        def drivers(site: Site, t: datetime) -> Mapping[str, float]:
            elapsed = (t - start).total_seconds()
            out: dict[str, float] = {}
            for eff in effects:
                if not eff.start_s <= elapsed < eff.end_s:
                    continue
                value = _EFFECTS[eff.kind](eff, site, t, elapsed, centres)
                if value is not None:
                    name, amount = value
                    if name == "pm_factor":
                        out[name] = out.get(name, 1.0) * amount
                    else:
                        out[name] = out.get(name, 0.0) + amount
            return out

        return drivers

    def expected(self) -> list[ExpectedAlert]:
        """The ground truth, with selectors resolved to device codes."""
        out: list[ExpectedAlert] = []
        sites = self.sites()
        for i, spec in enumerate(self.expected_spec):
            where = f"{self.id}: expected[{i}]"
            window = spec.get("window")
            if not (isinstance(window, list) and len(window) == 2):
                raise ScenarioError(f"{where}: window must be [from, to]")
            lo = self.start + timedelta(seconds=_duration(window[0], where))
            hi = self.start + timedelta(seconds=_duration(window[1], where))
            rule = str(spec["rule"])
            if "site" in spec:
                site = self.named.get(str(spec["site"]))
                if site is None:
                    raise ScenarioError(f"{where}: unknown site {spec['site']!r}")
                out.append(ExpectedAlert(rule, site.code, site.district, lo, hi))
            elif "district" in spec:
                out.append(ExpectedAlert(rule, None, str(spec["district"]), lo, hi))
            elif "select" in spec:
                sel = spec["select"]
                for site in sites:
                    if site.model_id == sel.get("model") and (not sel.get("tag") or sel["tag"] in site.tags):
                        out.append(ExpectedAlert(rule, site.code, site.district, lo, hi))
            else:
                raise ScenarioError(f"{where}: needs site, district or select")
        return out

    def rules(self) -> set[str]:
        """Rule ids the ground truth is about (the scope of precision)."""
        return {str(spec["rule"]) for spec in self.expected_spec}


# --- effects ---------------------------------------------------------------------------------------

EffectFn = Callable[[Effect, Site, datetime, float, Mapping[str, tuple[float, float]]], tuple[str, float] | None]


def _ramp(eff: Effect, elapsed: float) -> float:
    ramp = float(eff.params.get("ramp_s", 0.0))
    if ramp <= 0:
        return 1.0
    return max(0.0, min(1.0, (elapsed - eff.start_s) / ramp, (eff.end_s - elapsed) / ramp))


def _rain(eff: Effect, site: Site, t: datetime, elapsed: float, c: Any) -> tuple[str, float] | None:
    districts = eff.params.get("districts")
    if districts and site.district not in districts:
        return None
    peak = float(eff.params["peak_mm_h"]) if "low_lying" in site.tags else float(eff.params.get("elsewhere_mm_h", 0))
    return "rain_mm_h", peak * _ramp(eff, elapsed)


def _plume(
    eff: Effect, site: Site, t: datetime, elapsed: float, centres: Mapping[str, tuple[float, float]]
) -> tuple[str, float] | None:
    path: list[tuple[float, tuple[float, float]]] = eff.params["path_points"]
    if elapsed <= path[0][0]:
        lon, lat = path[0][1]
    elif elapsed >= path[-1][0]:
        lon, lat = path[-1][1]
    else:
        for (t0, p0), (t1, p1) in itertools.pairwise(path):
            if t0 <= elapsed <= t1:
                f = (elapsed - t0) / (t1 - t0)
                lon, lat = p0[0] + (p1[0] - p0[0]) * f, p0[1] + (p1[1] - p0[1]) * f
                break
    distance_km = float(haversine_m(site.lon, site.lat, lon, lat)) / 1000
    radius = float(eff.params.get("radius_km", 5.0))
    factor = float(eff.params.get("factor", 4.0))
    return "pm_factor", 1 + (factor - 1) * math.exp(-((distance_km / radius) ** 2)) * _ramp(eff, elapsed)


def _at_site(name: str) -> EffectFn:
    def fn(eff: Effect, site: Site, t: datetime, elapsed: float, c: Any) -> tuple[str, float] | None:
        if site.code != eff.params["site_code"]:
            return None
        if name == "construction_db":
            lo, hi = eff.params.get("hours", [23, 3])
            hour = local_hour(t)
            inside = lo <= hour < hi if lo < hi else (hour >= lo or hour < hi)
            return (name, float(eff.params["level_db"])) if inside else None
        return name, float(eff.params.get("load", 1.0)) * _ramp(eff, elapsed)

    return fn


_EFFECTS: Mapping[str, EffectFn] = {
    "rain": _rain,
    "plume": _plume,
    "sewage": _at_site("sewage"),
    "construction": _at_site("construction_db"),
    "discharge": _at_site("discharge_factor"),
    "outage": _at_site("outage"),
}


# --- loading -----------------------------------------------------------------------------------------


def _named_sites(raw: Any, where: str) -> dict[str, Site]:
    out: dict[str, Site] = {}
    sequences: dict[tuple[str, str], int] = {}
    layout = city_layout()
    for spec in raw or []:
        name = str(spec["name"])
        model_id = str(spec["model"])
        district = str(spec["district"])
        if model_id not in CLASS_CODES:
            raise ScenarioError(f"{where}: site {name}: unknown model {model_id!r}")
        class_code = CLASS_CODES[model_id][0]
        seq = sequences.get((district, class_code), _NAMED_SEQUENCE_BASE)
        sequences[(district, class_code)] = seq + 1
        lon, lat = (float(spec["lon"]), float(spec["lat"])) if "lon" in spec else layout.centre(district)
        code = DeviceCode.build(district, class_code, seq).full
        cell = layout.grid.code_in(district, lon, lat)
        tags = frozenset({name, *(["low_lying"] if cell in layout.low_lying else [])})
        out[name] = Site(code, model_id, district, lon, lat, cell, dict(spec.get("attributes", {})), tags)
    return out


def _parse(data: Any, where: str) -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: a scenario is a mapping")
    try:
        start = datetime.fromisoformat(str(data["start"]))
    except (KeyError, ValueError) as exc:
        raise ScenarioError(f"{where}: start must be ISO 8601 with a zone") from exc
    if start.tzinfo is None:
        raise ScenarioError(f"{where}: start needs a zone")
    named = _named_sites(data.get("sites"), where)
    layout = city_layout()
    effects = []
    for i, raw in enumerate(data.get("effects", [])):
        kind = str(raw.get("kind"))
        if kind not in _EFFECTS:
            raise ScenarioError(f"{where}: effects[{i}]: unknown kind {kind!r}")
        params = {k: v for k, v in raw.items() if k not in ("kind", "from", "to")}
        if "ramp" in raw:
            params["ramp_s"] = _duration(raw["ramp"], where)
        if "site" in raw:
            if raw["site"] not in named:
                raise ScenarioError(f"{where}: effects[{i}]: unknown site {raw['site']!r}")
            params["site_code"] = named[raw["site"]].code
        if kind == "plume":
            params["path_points"] = [
                (_duration(p["at"], where), layout.centre(str(p["district"]))) for p in raw.get("path", [])
            ]
            if len(params["path_points"]) < 1:
                raise ScenarioError(f"{where}: effects[{i}]: a plume needs a path")
        effects.append(Effect(kind, _duration(raw.get("from", 0), where), _duration(raw["to"], where), params))
    return Scenario(
        id=str(data["id"]),
        title=str(data.get("title", "")),
        start=start,
        duration_s=_duration(data["duration"], where),
        seed=int(data.get("seed", 0)),
        fleet={str(k): int(v) for k, v in (data.get("fleet") or {}).items()},
        named=named,
        effects=tuple(effects),
        expected_spec=tuple(data.get("expected", [])),
        low_lying_share=data.get("low_lying_share"),
    )


def load_scenario(source: str | Path) -> Scenario:
    """Load a scenario: a path to a YAML file, or the id of a shipped one.

    Raises:
        ScenarioError: the file is missing or invalid.
    """
    path = Path(source)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        entry = resources.files("simulators").joinpath("scenarios", f"{source}.yaml")
        if not entry.is_file():
            raise ScenarioError(f"no scenario {source!r}")
        text = entry.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}: not valid YAML: {exc}") from exc
    return _parse(data, str(source))


def shipped_scenarios() -> list[str]:
    """Ids of the scenarios shipped in ``simulators/scenarios``."""
    root = resources.files("simulators").joinpath("scenarios")
    return sorted(e.name[:-5] for e in root.iterdir() if e.name.endswith(".yaml"))


# --- scoring ---------------------------------------------------------------------------------------


def _as_fired(item: FiredAlert | Mapping[str, Any]) -> FiredAlert:
    if isinstance(item, FiredAlert):
        return item
    opened = item["opened_at"]
    if isinstance(opened, str):
        opened = datetime.fromisoformat(opened.replace("Z", "+00:00"))
    return FiredAlert(str(item["rule"]), str(item["device"]), str(item["district"]), opened)


def score(
    expected: Sequence[ExpectedAlert],
    fired: Iterable[FiredAlert | Mapping[str, Any]],
    *,
    rules: Iterable[str] | None = None,
) -> tuple[float, float, dict[str, Any]]:
    """Precision and recall of fired alerts against a scenario's ground truth.

    A fired alert is a true positive when some expected entry has its rule, its
    device (or, for a district-level entry, its district) and a window that
    contains its ``opened_at``. An expected entry is recalled when at least one
    fired alert matches it.

    Args:
        expected: The ground truth (:meth:`Scenario.expected`).
        fired: Opened alerts: :class:`FiredAlert` or ``citybrain.alerts`` v1 dicts
            (``rule``, ``device``, ``district``, ``opened_at``).
        rules: Only fired alerts of these rules count (default: the rules named in
            ``expected``, so unrelated traffic does not dilute a scenario's precision);
            pass ``()`` to count every fired alert.

    Returns:
        ``(precision, recall, details)``; details lists ``true_positives``,
        ``false_positives`` and ``missed`` entries. An empty side scores 1.0.
    """
    scope = {e.rule for e in expected} if rules is None else set(rules)
    alerts = [a for a in map(_as_fired, fired) if not scope or a.rule in scope]
    hit: set[int] = set()
    tps: list[FiredAlert] = []
    fps: list[FiredAlert] = []
    for alert in alerts:
        matched = False
        for i, exp in enumerate(expected):
            same_target = alert.device == exp.device if exp.device else alert.district == exp.district
            if exp.rule == alert.rule and same_target and exp.start <= alert.opened_at <= exp.end:
                hit.add(i)
                matched = True
        (tps if matched else fps).append(alert)
    precision = len(tps) / len(alerts) if alerts else 1.0
    recall = len(hit) / len(expected) if expected else 1.0
    missed = [e for i, e in enumerate(expected) if i not in hit]
    return precision, recall, {"true_positives": tps, "false_positives": fps, "missed": missed}


def oracle_alerts(scenario: Scenario, *, step_s: float = 300.0, rules: RuleSet | None = None) -> list[FiredAlert]:
    """Alerts the production rule engine opens on the scenario's noise-free readings.

    Samples every device every ``step_s`` simulated seconds (no faults, no
    transport), feeds the readings through :func:`alerts.engine.evaluate_device`
    with the device's attributes, and returns the ``open`` transitions.

    Args:
        scenario: The scenario.
        step_s: Sampling step in simulated seconds.
        rules: Rules to use (default: the shipped rules).

    Returns:
        The opened alerts, in time order per device.
    """
    ruleset = rules or shipped_rules()
    out: list[FiredAlert] = []
    for model in scenario.models():
        site = model.site
        ctx = DeviceContext(
            site.code, site.district, model.model.device_class, attributes=dict(site.attributes), model=model.model.id
        )
        snapshot: dict[str, list[float]] = {}
        states: dict[str, Any] = {}
        watermark = -1
        applicable = ruleset.for_class(ctx.device_class)
        t = scenario.start.astimezone(UTC)
        while t < scenario.end:
            readings = [
                Reading(site.code, name, t, t, value, model.model.metrics[name].unit)
                for name, value in model.sample(t).items()
            ]
            transitions, watermark = evaluate_device(applicable, readings, ctx, snapshot, states, watermark)
            out += [
                FiredAlert(tr.alert.rule, site.code, site.district, tr.alert.opened_at)
                for tr in transitions
                if tr.kind == "open"
            ]
            t += timedelta(seconds=step_s)
    return out
