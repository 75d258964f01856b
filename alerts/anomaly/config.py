"""Which anomaly detectors run on which series: data (YAML), validated at load.

The shipped file is ``alerts/data/anomaly/detectors.yaml``::

    defaults: {severity: warning, clear_after: 5, flap_count: 3, flap_window: 1h}
    series:
      - class: air                      # every gauge metric of every air model …
        detectors:
          ewma: {}                      # … runs the EWMA chart with default parameters
          stuck: {samples: 60}
      - class: air
        models: [air-micro]             # optional: model ids (any version)
        metrics: [pm25]                 # optional: metric names (default: the model's gauges)
        detectors:
          ewma: off                     # later entries override earlier ones; off turns it off
          robust_z: {k: 7, severity: info, clear_after: 10}

A detector entry holds the detector's parameters (the fields of
``RobustZParams`` …) plus the alert policy keys ``severity``, ``clear_after``
(accepted samples without firing before the alert clears), ``flap_count``
and ``flap_window``. ``silence`` is not configured here: liveness owns it
(``streams.liveness``). Unknown keys, detectors or parameters are refused
at load, so a typo cannot silently turn a detector off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from alerts.anomaly.detectors import DriftParams, EwmaParams, RateParams, RobustZParams, StuckParams
from alerts.anomaly.result import DetectorKind
from alerts.errors import AnomalyError, RuleError
from alerts.rules import parse_duration
from core.records import RecordError, Severity

__all__ = [
    "AnomalyConfig",
    "DetectorParams",
    "DetectorSpec",
    "load_anomaly_config",
    "parse_anomaly_config",
    "shipped_anomaly_config",
]

DetectorParams = RobustZParams | EwmaParams | RateParams | StuckParams | DriftParams

_PARAMS: dict[DetectorKind, type[Any]] = {
    DetectorKind.ROBUST_Z: RobustZParams,
    DetectorKind.EWMA: EwmaParams,
    DetectorKind.RATE: RateParams,
    DetectorKind.STUCK: StuckParams,
    DetectorKind.DRIFT: DriftParams,
}
_POLICY_KEYS = ("severity", "clear_after", "flap_count", "flap_window")
_ENTRY_KEYS = {"class", "models", "metrics", "detectors"}


@dataclass(frozen=True, slots=True)
class DetectorSpec:
    """One detector on one series, with the policy that turns its firings into an alert.

    Attributes:
        kind: The detector.
        params: Its parameters (frozen, hashable: series sharing them share a bank).
        severity: Severity of the alert it raises.
        clear_after: Accepted samples in a row without firing before the alert clears.
        flap_count: Opens within ``flap_window_s`` that mark the alert flapping
            (held open, cleared only once quiet for ``flap_window_s / flap_count``).
        flap_window_s: See ``flap_count``.
    """

    kind: DetectorKind
    params: DetectorParams
    severity: Severity = Severity.WARNING
    clear_after: int = 5
    flap_count: int = 3
    flap_window_s: float = 3600.0
    #: ``kind.value``, read per series on the hot path (an enum's ``value`` is a property).
    name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.kind.value)


@dataclass(frozen=True, slots=True)
class _Entry:
    device_class: str
    models: frozenset[str]
    metrics: frozenset[str]
    detectors: tuple[tuple[DetectorKind, Mapping[str, Any] | None], ...]


class AnomalyConfig:
    """The parsed configuration; :meth:`plan` answers per (model, metric), memoised.

    The memo is keyed by (class, model id, metric), so it is bounded by the
    number of model metrics, not by the number of devices.
    """

    def __init__(self, defaults: Mapping[str, Any], entries: tuple[_Entry, ...]) -> None:
        self.defaults = dict(defaults)
        self.entries = entries
        self._memo: dict[tuple[str, str, str, bool], tuple[DetectorSpec, ...]] = {}
        # Resolve every entry once with a neutral series, so bad parameters fail at load, not in the stream.
        for e in entries:
            for kind, raw in e.detectors:
                if raw is not None:
                    _spec(kind, {**self.defaults, **raw}, "load")

    @classmethod
    def empty(cls) -> AnomalyConfig:
        """No detector anywhere (the worker then skips anomaly evaluation)."""
        return cls({}, ())

    def __bool__(self) -> bool:
        return any(raw is not None for e in self.entries for _, raw in e.detectors)

    def plan(self, device_class: str, model_id: str, metric: str, *, gauge: bool = True) -> tuple[DetectorSpec, ...]:
        """The detectors for one series, in a stable order.

        Args:
            device_class: The device's class.
            model_id: The model id without version (``air-station``).
            metric: The metric name.
            gauge: Whether the metric is a gauge; entries without ``metrics``
                cover gauges only (booleans and states are for rules).
        """
        key = (device_class, model_id, metric, gauge)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        chosen: dict[DetectorKind, Mapping[str, Any] | None] = {}
        for e in self.entries:
            if e.device_class != device_class or (e.models and model_id not in e.models):
                continue
            if e.metrics:
                if metric not in e.metrics:
                    continue
            elif not gauge:
                continue
            for kind, raw in e.detectors:
                chosen[kind] = raw
        out = tuple(
            _spec(kind, {**self.defaults, **raw}, f"{device_class}/{model_id}/{metric}")
            for kind, raw in sorted(chosen.items(), key=lambda kv: kv[0].value)
            if raw is not None
        )
        self._memo[key] = out
        return out


def _spec(kind: DetectorKind, raw: Mapping[str, Any], where: str) -> DetectorSpec:
    params = {k: v for k, v in raw.items() if k not in _POLICY_KEYS}
    cls = _PARAMS[kind]
    known = {f.name for f in fields(cls)}
    unknown = set(params) - known
    if unknown:
        raise AnomalyError(f"{where}: {kind.value}: unknown parameters {sorted(unknown)}")
    try:
        p = cls(**params)
        severity = Severity.parse(str(raw.get("severity", "warning")))
        flap_window = parse_duration(raw.get("flap_window", "1h"))
    except (TypeError, RecordError, RuleError) as exc:
        raise AnomalyError(f"{where}: {kind.value}: {exc}") from None
    clear_after, flap_count = raw.get("clear_after", 5), raw.get("flap_count", 3)
    for name, value, low in (("clear_after", clear_after, 1), ("flap_count", flap_count, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise AnomalyError(f"{where}: {kind.value}: {name} must be an integer >= {low}")
    return DetectorSpec(kind, p, severity, clear_after, flap_count, flap_window)


def parse_anomaly_config(text: str, where: str = "<string>") -> AnomalyConfig:
    """Parse one YAML configuration.

    Raises:
        AnomalyError: naming the file, the entry and the reason.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AnomalyError(f"{where}: not valid YAML: {exc}") from exc
    if data is None:
        return AnomalyConfig.empty()
    if not isinstance(data, Mapping) or set(data) - {"defaults", "series"}:
        raise AnomalyError(f"{where}: expected a mapping with 'defaults' and 'series'")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping) or set(defaults) - set(_POLICY_KEYS):
        raise AnomalyError(f"{where}: defaults may only set {', '.join(_POLICY_KEYS)}")
    series = data.get("series") or []
    if not isinstance(series, list):
        raise AnomalyError(f"{where}: 'series' must be a list")
    entries = []
    for i, raw in enumerate(series):
        at = f"{where}: series[{i}]"
        if not isinstance(raw, Mapping) or not isinstance(raw.get("class"), str):
            raise AnomalyError(f"{at}: needs a 'class'")
        if set(raw) - _ENTRY_KEYS:
            raise AnomalyError(f"{at}: unknown keys {sorted(set(raw) - _ENTRY_KEYS)}")
        dets = raw.get("detectors")
        if not isinstance(dets, Mapping) or not dets:
            raise AnomalyError(f"{at}: needs a non-empty 'detectors' mapping")
        parsed: list[tuple[DetectorKind, Mapping[str, Any] | None]] = []
        for name, spec in dets.items():
            try:
                kind = DetectorKind(name)
            except ValueError:
                raise AnomalyError(f"{at}: unknown detector {name!r}") from None
            if kind is DetectorKind.SILENCE:
                raise AnomalyError(f"{at}: silence is configured by CITYBRAIN_OFFLINE_AFTER_CADENCES, not here")
            if spec is False or spec == "off":
                parsed.append((kind, None))
            elif spec is None or spec is True:
                parsed.append((kind, {}))
            elif isinstance(spec, Mapping):
                parsed.append((kind, dict(spec)))
            else:
                raise AnomalyError(f"{at}: {name}: expected parameters, {{}} or off")
        entries.append(
            _Entry(
                raw["class"],
                frozenset(_names(raw.get("models", []), f"{at}.models")),
                frozenset(_names(raw.get("metrics", []), f"{at}.metrics")),
                tuple(parsed),
            )
        )
    try:
        return AnomalyConfig(defaults, tuple(entries))
    except AnomalyError as exc:
        raise AnomalyError(f"{where}: {exc}") from None


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AnomalyError(f"{where}: expected a list of names")
    return value


def load_anomaly_config(path: Path) -> AnomalyConfig:
    """Load a configuration file from disk."""
    return parse_anomaly_config(path.read_text(encoding="utf-8"), path.name)


def shipped_anomaly_config() -> AnomalyConfig:
    """The configuration shipped in ``alerts/data/anomaly/detectors.yaml``."""
    entry = resources.files("alerts").joinpath("data/anomaly/detectors.yaml")
    return parse_anomaly_config(entry.read_text(encoding="utf-8"), "detectors.yaml")
