"""Device models (thing models), declared as data.

Each model is a YAML file in ``devices/data/models/``: its metrics (name, HJ 212
code and, where it differs from the station type's, the unit stations send it in over
HJ 212; canonical unit, accepted input units, physical range, cadence), its
attributes and its commands. Models are versioned; a device is bound to one
model version. Files are validated at start-up; an invalid file stops the
process with the file name and the reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.records import METRIC_NAME_PATTERN
from devices.errors import ModelError, UnitError
from devices.units import Conversion, canonical_unit_name, conversion

__all__ = [
    "Command",
    "DeviceModel",
    "Metric",
    "ModelRegistry",
    "is_assessment_station",
    "load_models",
    "shipped_models",
]

# Commands and attributes are named like metrics.
_NAME_RE = METRIC_NAME_PATTERN

#: The HJ 212 interval uploads (minute 2051, hour 2061, day 2031; standards reference §2.4)
#: a source model may give their own metrics.
INTERVAL_CNS = frozenset({"2051", "2061", "2031"})
#: Sub-items of an interval upload and the metric suffix each becomes (``Avg`` is the metric itself).
INTERVAL_FIELDS = (("Min", "_min"), ("Max", "_max"), ("Cou", "_cou"))


class _MetricSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_RE)
    unit: str
    accepts: list[str] = Field(default_factory=list)
    range: tuple[float, float]
    hj212: str | None = None
    hj212_unit: str | None = None
    #: Canonical unit of the discharge amount (HJ 212 ``-Cou``) of a source model's metric
    #: (``kg``, ``g`` … or ``m3`` for a flow); only with the model's ``hj212_intervals``.
    cou_unit: str | None = None
    molar_mass: float | None = Field(default=None, gt=0)
    kind: Literal["gauge", "boolean", "state", "counter"] = "gauge"
    grade: Literal["public", "internal", "sensitive"] = "public"
    label: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> _MetricSpec:
        lo, hi = self.range
        if lo > hi:
            raise ValueError(f"metric {self.name}: range low {lo} > high {hi}")
        canonical_unit_name(self.unit)
        for u in self.accepts:
            conversion(u, self.unit, molar_mass=self.molar_mass)
        if self.hj212_unit is not None:
            # The unit stations of this model send the factor in over HJ 212 must be one the
            # metric converts from, or every value would be rejected as bad_unit.
            if self.hj212 is None:
                raise ValueError(f"metric {self.name}: hj212_unit without an hj212 code")
            known = {canonical_unit_name(u) for u in (self.unit, *self.accepts)}
            if canonical_unit_name(self.hj212_unit) not in known:
                raise ValueError(f"metric {self.name}: hj212_unit {self.hj212_unit!r} is not its unit or in accepts")
        if self.cou_unit is not None:
            if self.hj212 is None:
                raise ValueError(f"metric {self.name}: cou_unit without an hj212 code")
            canonical_unit_name(self.cou_unit)
        return self


class _ParamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["int", "float", "bool", "str", "enum"]
    min: float | None = None
    max: float | None = None
    values: list[str] | None = None
    required: bool = True


class _CommandSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_RE)
    params: dict[str, _ParamSpec] = Field(default_factory=dict)
    ttl_s: int = Field(default=600, gt=0)
    timeout_s: int = Field(default=30, gt=0)
    label: dict[str, str] = Field(default_factory=dict)


class _AttributeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME_RE)
    type: Literal["int", "float", "bool", "str", "enum"]
    values: list[str] | None = None
    grade: Literal["public", "internal", "sensitive"] = "public"
    default: Any = None


class _ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9-]{0,40}$")
    version: int = Field(ge=1)
    device_class: str = Field(pattern=r"^[a-z][a-z0-9_]{0,20}$")
    class_codes: list[str]
    name: dict[str, str]
    adapter: Literal["json", "hj212", "manhole-tlv"] = "json"
    hj212_st: str | None = None
    #: Pollution-source models: HJ 212 CN → metric suffix for the interval data (2051
    #: minute, 2061 hour, 2031 day), so an hourly mean is its own metric (``hg_hour``),
    #: never confused with the real-time value (``hg``) of the same instant.
    hj212_intervals: dict[str, str] = Field(default_factory=dict)
    cadence_s: int = Field(gt=0)
    metrics: list[_MetricSpec]
    attributes: list[_AttributeSpec] = Field(default_factory=list)
    commands: list[_CommandSpec] = Field(default_factory=list)

    @field_validator("class_codes")
    @classmethod
    def _codes(cls, v: list[str]) -> list[str]:
        for c in v:
            if not re.match(r"^[0-9]{4}$", c):
                raise ValueError(f"class code {c!r} must be 4 digits")
        if not v:
            raise ValueError("a model needs at least one class code")
        return v

    @model_validator(mode="after")
    def _unique(self) -> _ModelSpec:
        names = [m.name for m in self.metrics]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate metrics: {sorted(dup)}")
        codes = [m.hj212 for m in self.metrics if m.hj212]
        dupc = {c for c in codes if codes.count(c) > 1}
        if dupc:
            raise ValueError(f"duplicate HJ 212 codes: {sorted(dupc)}")
        for cn, suffix in self.hj212_intervals.items():
            if cn not in INTERVAL_CNS:
                raise ValueError(f"hj212_intervals: {cn!r} is not one of {sorted(INTERVAL_CNS)}")
            if not re.fullmatch(r"_[a-z][a-z0-9]{0,10}", suffix):
                raise ValueError(f"hj212_intervals: suffix {suffix!r} must look like _hour")
        return self


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric of a model, with its conversions precomputed."""

    name: str
    unit: str
    low: float
    high: float
    hj212: str | None
    kind: str
    grade: str
    label: Mapping[str, str]
    conversions: Mapping[str, Conversion]
    #: The unit an HJ 212 station of this model sends the factor in, when the model says so
    #: (else the station type's default applies: ``ingest.adapters.hj212.units``).
    hj212_unit: str | None = None

    def convert_from(self, unit: str | None) -> Conversion:
        """The conversion from a sent unit to this metric's canonical unit.

        ``None`` means the device sent no unit: the canonical unit is assumed,
        which is the documented contract of the canonical JSON payload.

        Raises:
            UnitError: the unit is unknown or not accepted for this metric.
        """
        if unit is None:
            return self.conversions[self.unit]
        try:
            key = canonical_unit_name(unit)
        except UnitError:
            raise UnitError(f"unknown unit {unit!r} for {self.name}") from None
        conv = self.conversions.get(key)
        if conv is None:
            raise UnitError(f"unit {unit!r} is not accepted for {self.name} (canonical {self.unit})")
        return conv

    def in_range(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True, slots=True)
class Command:
    """A command a device of this model accepts."""

    name: str
    params: Mapping[str, Mapping[str, Any]]
    ttl_s: int
    timeout_s: int
    label: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceModel:
    """A validated, versioned device model."""

    id: str
    version: int
    device_class: str
    class_codes: tuple[str, ...]
    name: Mapping[str, str]
    adapter: str
    hj212_st: str | None
    cadence_s: int
    metrics: Mapping[str, Metric]
    attributes: tuple[Mapping[str, Any], ...]
    commands: Mapping[str, Command]
    by_hj212: Mapping[str, str] = field(default_factory=dict)
    #: HJ 212 CN → metric suffix of interval data (empty: every upload feeds the base metric).
    hj212_intervals: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``id@version``, the binding a device stores."""
        return f"{self.id}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "device_class": self.device_class,
            "class_codes": list(self.class_codes),
            "name": dict(self.name),
            "adapter": self.adapter,
            "hj212_st": self.hj212_st,
            **({"hj212_intervals": dict(self.hj212_intervals)} if self.hj212_intervals else {}),
            "cadence_s": self.cadence_s,
            "metrics": [
                {
                    "name": m.name,
                    "unit": m.unit,
                    "range": [m.low, m.high],
                    "hj212": m.hj212,
                    **({"hj212_unit": m.hj212_unit} if m.hj212_unit else {}),
                    "kind": m.kind,
                    "grade": m.grade,
                    "accepts": sorted(m.conversions),
                    "label": dict(m.label),
                }
                for m in self.metrics.values()
            ],
            "attributes": [dict(a) for a in self.attributes],
            "commands": [
                {
                    "name": c.name,
                    "label": dict(c.label),
                    "params": {k: dict(v) for k, v in c.params.items()},
                    "ttl_s": c.ttl_s,
                }
                for c in self.commands.values()
            ],
        }


# HJ 664 / HJ 663: national (国控) and provincial (省控) stations are the assessment
# stations (评价点位) an area's air quality is computed from; municipal stations
# and micro-stations are not (docs/standards.md §3.6).
_ASSESSMENT_LEVELS = frozenset({"national", "provincial"})


def _truthy(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no"):
        return False
    return None


def is_assessment_station(attributes: Mapping[str, Any], model: DeviceModel | None) -> bool:
    """Whether an air device is an assessment station, whose values set its area's AQI.

    The one rule (docs/standards.md §3.6), first that applies:

    1. the device's ``assessment`` attribute (true/false), if set;
    2. its ``station_level``: ``national`` or ``provincial`` → yes, any other → no;
    3. the model's default for ``assessment`` (``air-station`` true,
       ``air-micro`` false);
    4. no.

    Args:
        attributes: The device's attributes from the ledger.
        model: Its model, or None when unknown.
    """
    explicit = _truthy(attributes.get("assessment"))
    if explicit is not None:
        return explicit
    level = attributes.get("station_level")
    if isinstance(level, str) and level:
        return level in _ASSESSMENT_LEVELS
    if model is not None:
        for spec in model.attributes:
            if spec.get("name") == "assessment":
                return _truthy(spec.get("default")) is True
    return False


def _build(spec: _ModelSpec) -> DeviceModel:
    metrics: dict[str, Metric] = {}
    for m in spec.metrics:
        canonical = canonical_unit_name(m.unit)
        convs = {canonical: conversion(canonical, canonical)}
        for u in m.accepts:
            convs[canonical_unit_name(u)] = conversion(u, m.unit, molar_mass=m.molar_mass)
        metrics[m.name] = Metric(
            name=m.name,
            unit=canonical,
            low=m.range[0],
            high=m.range[1],
            hj212=m.hj212,
            kind=m.kind,
            grade=m.grade,
            label=dict(m.label),
            conversions=convs,
            hj212_unit=None if m.hj212_unit is None else canonical_unit_name(m.hj212_unit),
        )
    for m in spec.metrics:
        if m.hj212 is None:
            continue
        base = metrics[m.name]
        for cn, suffix in spec.hj212_intervals.items():
            _add_interval_metrics(metrics, base, suffix, m, stats=cn != "2051")
    return DeviceModel(
        id=spec.id,
        version=spec.version,
        device_class=spec.device_class,
        class_codes=tuple(spec.class_codes),
        name=dict(spec.name),
        adapter=spec.adapter,
        hj212_st=spec.hj212_st,
        cadence_s=spec.cadence_s,
        metrics=metrics,
        attributes=tuple(a.model_dump() for a in spec.attributes),
        commands={
            c.name: Command(
                c.name, {k: p.model_dump() for k, p in c.params.items()}, c.ttl_s, c.timeout_s, dict(c.label)
            )
            for c in spec.commands
        },
        by_hj212={m.hj212: m.name for m in spec.metrics if m.hj212},
        hj212_intervals=dict(spec.hj212_intervals),
    )


def _add_interval_metrics(
    metrics: dict[str, Metric], base: Metric, suffix: str, spec: _MetricSpec, *, stats: bool
) -> None:
    """``hg`` → ``hg_hour`` (Avg), ``hg_hour_min``, ``hg_hour_max`` and, with a ``cou_unit``, ``hg_hour_cou``.

    The statistics share the base metric's unit, range and conversions; the discharge
    amount is a mass (or a volume for a flow) in ``cou_unit``, never negative. Minute data
    keep only Avg and Cou (``stats=False``): their Min/Max add a column per factor to every
    class and rollup table for a detail no rule or report uses; they are left out like
    any sub-item a model does not declare.
    """
    name = base.name + suffix
    for metric_name in (name, name + "_min", name + "_max") if stats else (name,):
        if metric_name in metrics:
            raise ModelError(f"metric {metric_name} is both declared and derived from {base.name}")
        metrics[metric_name] = Metric(
            name=metric_name,
            unit=base.unit,
            low=base.low,
            high=base.high,
            hj212=None,
            kind=base.kind,
            grade=base.grade,
            label=dict(base.label),
            conversions=base.conversions,
            hj212_unit=base.hj212_unit,
        )
    if spec.cou_unit is None:
        return
    cou = canonical_unit_name(spec.cou_unit)
    convs = {u: conversion(u, cou) for u in _SAME_FAMILY.get(cou, (cou,))}
    metrics[name + "_cou"] = Metric(
        name=name + "_cou",
        unit=cou,
        low=0.0,
        high=1e12,
        hj212=None,
        kind="gauge",
        grade=base.grade,
        label={k: f"{v} (排放量)" if k == "zh" else f"{v} (discharged)" for k, v in base.label.items()},
        conversions=convs,
    )


# Units a discharge amount may arrive in, per canonical unit (HJ 212-2017 附录B 排放量: t, kg, g, mg; m³).
_SAME_FAMILY: dict[str, tuple[str, ...]] = {
    "kg": ("kg", "g", "mg", "t"),
    "g": ("g", "kg", "mg", "t"),
    "mg": ("mg", "g", "kg"),
    "m3": ("m3", "L"),
}


class ModelRegistry:
    """All loaded models, by ``id@version`` and by device class."""

    def __init__(self, models: Iterable[DeviceModel]) -> None:
        self._by_key: dict[str, DeviceModel] = {}
        self._latest: dict[str, DeviceModel] = {}
        for m in models:
            if m.key in self._by_key:
                raise ModelError(f"model {m.key} is defined twice")
            self._by_key[m.key] = m
            cur = self._latest.get(m.id)
            if cur is None or m.version > cur.version:
                self._latest[m.id] = m

    def get(self, key: str) -> DeviceModel:
        """A model by ``id@version`` (or bare ``id`` for the latest version)."""
        found = self._latest.get(key) if "@" not in key else self._by_key.get(key)
        if found is None:
            raise ModelError(f"unknown device model {key!r}")
        return found

    def latest(self) -> list[DeviceModel]:
        return sorted(self._latest.values(), key=lambda m: m.id)

    def all(self) -> list[DeviceModel]:
        return sorted(self._by_key.values(), key=lambda m: (m.id, m.version))

    def device_classes(self) -> list[str]:
        return sorted({m.device_class for m in self._by_key.values()})

    def metrics_of_class(self, device_class: str) -> list[str]:
        """Union of metric names over every version of the class's models (the wide columns)."""
        names: dict[str, None] = {}
        for m in self.all():
            if m.device_class == device_class:
                for name in m.metrics:
                    names.setdefault(name, None)
        return list(names)


def _parse_file(name: str, text: str) -> DeviceModel:
    try:
        data = yaml.safe_load(text)
        spec = _ModelSpec.model_validate(data)
    except yaml.YAMLError as exc:
        raise ModelError(f"{name}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise ModelError(f"{name}: {exc}") from exc
    except UnitError as exc:
        raise ModelError(f"{name}: {exc}") from exc
    return _build(spec)


def load_models(directory: Path) -> ModelRegistry:
    """Load and validate every ``*.yaml`` model in a directory.

    Raises:
        ModelError: with the file name and the reason.
    """
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise ModelError(f"no device models in {directory}")
    return ModelRegistry(_parse_file(f.name, f.read_text(encoding="utf-8")) for f in files)


@cache
def shipped_models() -> ModelRegistry:
    """The models shipped with the platform in ``devices/data/models/``."""
    root = resources.files("devices").joinpath("data/models")
    models = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            models.append(_parse_file(entry.name, entry.read_text(encoding="utf-8")))
    if not models:
        raise ModelError("no device models shipped in devices/data/models")
    return ModelRegistry(models)
