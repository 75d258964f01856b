"""Rules as data: YAML files validated at load, evaluated by :mod:`alerts.engine`.

A rule file holds a list of rules::

    - id: air.pm25.high
      class: air
      scope: {districts: ["350203"]}            # optional: districts, devices, models, fence(s), fence_kind(s)
      when:                                       # a condition tree
        any:
          - {metric: pm25, op: ">", value: 75, deadband: 7.5}
          - {metric: pm10, op: ">", value: 150, deadband: 15}
      for: 0s                                     # the whole condition must hold this long to open
      clear_for: 60s                              # …and be false this long to clear (no flapping)
      severity:                                   # ladder: highest matching level wins
        - {level: warning}
        - {level: major, when: {metric: pm25, op: ">", value: 115}}
        - {level: critical, when: {metric: pm25, op: ">", value: 150}}
      message: "PM2.5 {pm25} µg/m³"

Conditions: ``{metric, op, value}`` with op one of ``> >= < <= == !=``;
``{metric, outside: [lo, hi]}``; ``{metric, rate_per_s: {op, value}}`` for rate of change;
``all: [...]``, ``any: [...]``, ``not: {...}``. A leaf may carry its own ``for``
(it is true only once its comparison has held that long, e.g. a tilt sustained
2 s) and a ``deadband`` (hysteresis: while the alert is open, the threshold is
relaxed by the deadband, so a value hovering at the threshold does not clear it).

A rule with ``each: [hg, cd, …]`` is a template: it stands for one rule per name,
with every ``$each`` in it (id, conditions, message) replaced by the name.

Scope narrows the class to some devices: ``districts`` / ``devices`` (lists
of codes) and ``models`` (device model ids, e.g. ``air-micro``) must each match
if given; ``fence`` or ``fences`` (one reference or
a list; each is a geofence **id or name**) and ``fence_kind`` or
``fence_kinds`` (e.g. ``school_zone``: every fence of that kind) together
are one alternative: the device must be inside at least one of them. A
device is in a fence as :mod:`alerts.geofence` says (fixed devices by their
registered location, mobile ones by their debounced position); a rule
scoped to fences only sees devices inside at least one of them. The
references become :func:`fence_keys`, matched against the keys the
membership cache gives each device, so the engine's check is one
``frozenset.isdisjoint`` per rule, with no lookup of names at run time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from alerts.errors import RuleError
from core.records import METRIC_NAME_RE, Severity

__all__ = [
    "FENCE_KINDS",
    "AllOf",
    "AnyOf",
    "Compare",
    "Condition",
    "Not",
    "Outside",
    "Rate",
    "Rule",
    "RuleSet",
    "fence_keys",
    "fence_kind_key",
    "fence_name_key",
    "load_rules",
    "parse_duration",
    "shipped_rules",
    "unknown_models",
]

_OPS = (">", ">=", "<", "<=", "==", "!=")

# The geofences.kind CHECK values (citybrain/sql/0500_geofences.sql, geo.fences.FenceKind);
# spelled out so that loading rules does not import shapely.
FENCE_KINDS = ("school_zone", "water_source_protection", "flood_underpass", "other")


def fence_name_key(name: str) -> str:
    """Membership key of a fence name; "/" cannot occur in a fence id, so names never collide with ids."""
    return f"name/{name.strip()}"


def fence_kind_key(kind: str) -> str:
    """Membership key of a fence kind."""
    return f"kind/{kind}"


def fence_keys(fence_id: str, name: str, kind: str) -> tuple[str, str, str]:
    """Every key under which a device inside this fence is found (id, name, kind).

    :mod:`alerts.geofence` gives each device the keys of the fences it is
    in; a rule's fence scope is a set of such keys.
    """
    return fence_id, fence_name_key(name), fence_kind_key(kind)


Op = Literal[">", ">=", "<", "<=", "==", "!="]


def parse_duration(value: str | float | int) -> float:
    """``90``, ``"90s"``, ``"5m"``, ``"2h"``, ``"1d"`` → seconds."""
    if isinstance(value, bool):
        raise RuleError(f"bad duration {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise RuleError(f"negative duration {value!r}")
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
    if not m:
        raise RuleError(f"bad duration {value!r}; use e.g. 30s, 5m, 2h")
    n = float(m.group(1))
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}[m.group(2)]


# --- condition tree (frozen, pure) ------------------------------------------


@dataclass(frozen=True, slots=True)
class Compare:
    """``metric op value``; ``deadband`` relaxes the threshold while open."""

    path: str
    metric: str
    op: Op
    value: float
    deadband: float = 0.0
    hold_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Outside:
    """``metric`` outside ``[low, high]``."""

    path: str
    metric: str
    low: float
    high: float
    deadband: float = 0.0
    hold_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Rate:
    """Rate of change of ``metric`` per second compared with ``value``."""

    path: str
    metric: str
    op: Op
    value: float
    hold_s: float = 0.0


@dataclass(frozen=True, slots=True)
class AllOf:
    path: str
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    path: str
    items: tuple[Condition, ...]


@dataclass(frozen=True, slots=True)
class Not:
    path: str
    item: Condition


Condition = Compare | Outside | Rate | AllOf | AnyOf | Not


def condition_metrics(cond: Condition) -> set[str]:
    """Metrics a condition reads."""
    if isinstance(cond, Compare | Outside | Rate):
        return {cond.metric}
    if isinstance(cond, AllOf | AnyOf):
        out: set[str] = set()
        for c in cond.items:
            out |= condition_metrics(c)
        return out
    return condition_metrics(cond.item)


def _parse_condition(raw: Any, path: str) -> Condition:
    if not isinstance(raw, Mapping):
        raise RuleError(f"{path}: a condition must be a mapping, got {type(raw).__name__}")
    keys = set(raw)
    if keys & {"all", "any"}:
        if len(keys) != 1:
            raise RuleError(f"{path}: 'all'/'any' must stand alone")
        kind = next(iter(keys))
        items = raw[kind]
        if not isinstance(items, list) or not items:
            raise RuleError(f"{path}.{kind}: needs a non-empty list")
        parsed = tuple(_parse_condition(c, f"{path}.{kind}[{i}]") for i, c in enumerate(items))
        return AllOf(path, parsed) if kind == "all" else AnyOf(path, parsed)
    if "not" in keys:
        if len(keys) != 1:
            raise RuleError(f"{path}: 'not' must stand alone")
        return Not(path, _parse_condition(raw["not"], f"{path}.not"))
    metric = raw.get("metric")
    if not isinstance(metric, str) or not METRIC_NAME_RE.fullmatch(metric):
        raise RuleError(f"{path}: needs a metric name")
    allowed = {"metric", "op", "value", "outside", "rate_per_s", "deadband", "for"}
    unknown = keys - allowed
    if unknown:
        raise RuleError(f"{path}: unknown keys {sorted(unknown)}")
    hold = parse_duration(raw.get("for", 0))
    deadband = float(raw.get("deadband", 0.0))
    if deadband < 0:
        raise RuleError(f"{path}: deadband must be >= 0")
    if "outside" in raw:
        lo, hi = raw["outside"]
        if float(lo) > float(hi):
            raise RuleError(f"{path}: outside range [{lo}, {hi}] is reversed")
        return Outside(path, metric, float(lo), float(hi), deadband, hold)
    if "rate_per_s" in raw:
        spec = raw["rate_per_s"]
        if not isinstance(spec, Mapping) or spec.get("op") not in _OPS or "value" not in spec:
            raise RuleError(f"{path}: rate_per_s needs op and value")
        return Rate(path, metric, spec["op"], float(spec["value"]), hold)
    op = raw.get("op")
    if op not in _OPS:
        raise RuleError(f"{path}: op must be one of {', '.join(_OPS)}")
    if not isinstance(raw.get("value"), int | float) or isinstance(raw.get("value"), bool):
        raise RuleError(f"{path}: value must be a number")
    return Compare(path, metric, op, float(raw["value"]), deadband, hold)


# --- rules ------------------------------------------------------------------


_SCOPE_KEYS = ("districts", "devices", "models", "fence", "fences", "fence_kind", "fence_kinds")


class _LevelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Literal["info", "warning", "major", "critical"]
    when: dict[str, Any] | None = None


class _RuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_.-]{0,80}$")
    device_class: str = Field(alias="class", pattern=r"^[a-z][a-z0-9_]{0,20}$")
    when: dict[str, Any]
    for_: str | float = Field(default=0, alias="for")
    clear_for: str | float = 0
    severity: list[_LevelSpec] = Field(default_factory=lambda: [_LevelSpec(level="warning")])
    message: str = ""
    scope: dict[str, list[str] | str] = Field(default_factory=dict)
    flap_count: int = Field(default=4, ge=2)
    flap_window: str | float = "30m"
    group_min_devices: int = Field(default=5, ge=2)
    group_window: str | float = "15m"
    description: str = ""
    standard: str = ""

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: dict[str, list[str] | str]) -> dict[str, list[str] | str]:
        bad = set(v) - set(_SCOPE_KEYS)
        if bad:
            raise ValueError(f"unknown scope keys {sorted(bad)}; known: {', '.join(_SCOPE_KEYS)}")
        out: dict[str, list[str] | str] = {}
        for key, value in v.items():
            # Singular keys take one value, plural ones a list; both are merged below.
            items = [value] if isinstance(value, str) else list(value)
            if not items or any(not isinstance(i, str) or not i.strip() for i in items):
                raise ValueError(f"scope {key}: needs non-empty strings, got {value!r}")
            if key in ("fence_kind", "fence_kinds"):
                unknown = [i for i in items if i not in FENCE_KINDS]
                if unknown:
                    raise ValueError(f"scope {key}: unknown fence kind(s) {unknown}; one of {', '.join(FENCE_KINDS)}")
            out[key] = items
        return out

    def scope_list(self, *keys: str) -> list[str]:
        """The values of the scope keys given (singular and plural forms), merged."""
        out: list[str] = []
        for key in keys:
            value = self.scope.get(key, [])
            out += [value] if isinstance(value, str) else value
        return out

    @model_validator(mode="after")
    def _ladder(self) -> _RuleSpec:
        if not self.severity:
            raise ValueError("severity ladder must not be empty")
        return self


@dataclass(frozen=True, slots=True)
class Level:
    """One rung of a severity ladder."""

    severity: Severity
    when: Condition | None


@dataclass(frozen=True, slots=True)
class Rule:
    """A validated rule."""

    id: str
    device_class: str
    when: Condition
    for_s: float
    clear_for_s: float
    levels: tuple[Level, ...]
    message: str
    districts: frozenset[str] = frozenset()
    devices: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    fences: frozenset[str] = frozenset()
    flap_count: int = 4
    flap_window_s: float = 1800.0
    group_min_devices: int = 5
    group_window_s: float = 900.0
    standard: str = ""
    metrics: frozenset[str] = field(default=frozenset())

    def applies_to(
        self, device_class: str, district: str, code: str, fences: Iterable[str] = (), model: str = ""
    ) -> bool:
        """Whether the rule's class and scope cover a device.

        Args:
            device_class: The device's class.
            district: Its district code.
            code: Its device code.
            fences: Its fence membership keys (:func:`fence_keys` of every
                fence it is in), e.g. from :mod:`alerts.geofence`.
            model: Its device model id, with or without ``@version`` (a rule
                scoped to models needs it).
        """
        if device_class != self.device_class:
            return False
        if self.districts and district not in self.districts:
            return False
        if self.devices and code not in self.devices:
            return False
        # A model scope names models without their version: "air-micro" covers "air-micro@1".
        if self.models and model.partition("@")[0] not in self.models:
            return False
        # isdisjoint stops at the first common key and builds no set.
        return not (self.fences and self.fences.isdisjoint(fences))


def _build(spec: _RuleSpec, where: str) -> Rule:
    try:
        when = _parse_condition(spec.when, f"{where}:{spec.id}.when")
        levels = []
        for i, lv in enumerate(spec.severity):
            cond = _parse_condition(lv.when, f"{where}:{spec.id}.severity[{i}]") if lv.when else None
            levels.append(Level(Severity.parse(lv.level), cond))
        metrics = condition_metrics(when)
        for lv2 in levels:
            if lv2.when is not None:
                metrics |= condition_metrics(lv2.when)
        return Rule(
            id=spec.id,
            device_class=spec.device_class,
            when=when,
            for_s=parse_duration(spec.for_),
            clear_for_s=parse_duration(spec.clear_for),
            levels=tuple(levels),
            message=spec.message,
            districts=frozenset(spec.scope_list("districts")),
            devices=frozenset(spec.scope_list("devices")),
            models=frozenset(spec.scope_list("models")),
            fences=frozenset(
                [k for ref in spec.scope_list("fence", "fences") for k in (ref.strip(), fence_name_key(ref))]
                + [fence_kind_key(kind) for kind in spec.scope_list("fence_kind", "fence_kinds")]
            ),
            flap_count=spec.flap_count,
            flap_window_s=parse_duration(spec.flap_window),
            group_min_devices=spec.group_min_devices,
            group_window_s=parse_duration(spec.group_window),
            standard=spec.standard,
            metrics=frozenset(metrics),
        )
    except RuleError as exc:
        raise RuleError(f"{where}: rule {spec.id}: {exc}") from None


class RuleSet:
    """Rules indexed by device class; immutable, replaced whole on reload."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        ids = [r.id for r in self.rules]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise RuleError(f"duplicate rule ids: {sorted(dup)}")
        self._by_class: dict[str, tuple[Rule, ...]] = {}
        for r in self.rules:
            self._by_class[r.device_class] = (*self._by_class.get(r.device_class, ()), r)

    def for_class(self, device_class: str) -> tuple[Rule, ...]:
        return self._by_class.get(device_class, ())

    def __len__(self) -> int:
        return len(self.rules)


def unknown_models(rules: RuleSet, known: Iterable[str]) -> list[tuple[str, str]]:
    """``(rule id, model)`` for each model a rule's scope names that is not in ``known``.

    Rules load without the model registry, and a model scope with a typo would
    quietly match no device; the worker warns with these (ids compared without
    their ``@version``).
    """
    ids = {k.partition("@")[0] for k in known}
    return sorted((r.id, m) for r in rules.rules for m in r.models if m not in ids)


def _substitute(value: Any, name: str) -> Any:
    if isinstance(value, str):
        return value.replace("$each", name)
    if isinstance(value, list):
        return [_substitute(v, name) for v in value]
    if isinstance(value, dict):
        return {_substitute(k, name): _substitute(v, name) for k, v in value.items()}
    return value


def _expand_each(data: list[Any], where: str) -> list[Any]:
    """A rule with ``each: [hg, cd]`` stands for one rule per name, ``$each`` replaced by it.

    One template per alert kind instead of a copy per pollutant
    (``id: source.$each.hour_limit`` → ``source.hg.hour_limit``, ``source.cd.hour_limit``).
    """
    out: list[Any] = []
    for i, raw in enumerate(data):
        if not isinstance(raw, dict) or "each" not in raw:
            out.append(raw)
            continue
        names = raw["each"]
        if (
            not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and METRIC_NAME_RE.fullmatch(n) for n in names)
        ):
            raise RuleError(f"{where}: rule {raw.get('id', f'#{i}')}: each must be a list of metric names")
        template = {k: v for k, v in raw.items() if k != "each"}
        out += [_substitute(template, n) for n in names]
    return out


def parse_rules(text: str, where: str = "<string>") -> list[Rule]:
    """Parse one YAML rule file.

    Raises:
        RuleError: with the file, the rule and the reason.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleError(f"{where}: not valid YAML: {exc}") from exc
    if data is None:
        return []
    if not isinstance(data, list):
        raise RuleError(f"{where}: a rule file is a list of rules")
    out = []
    for i, raw in enumerate(_expand_each(data, where)):
        try:
            spec = _RuleSpec.model_validate(raw)
        except ValidationError as exc:
            rid = raw.get("id", f"#{i}") if isinstance(raw, dict) else f"#{i}"
            raise RuleError(f"{where}: rule {rid}: {exc}") from None
        out.append(_build(spec, where))
    return out


def load_rules(directory: Path) -> RuleSet:
    """Load every ``*.yaml`` rule file in a directory (for hot reload from disk)."""
    rules: list[Rule] = []
    for f in sorted(directory.glob("*.yaml")):
        rules += parse_rules(f.read_text(encoding="utf-8"), f.name)
    return RuleSet(rules)


class RuleDirectory:
    """A directory of rule files that reloads itself when they change (hot reload).

    :meth:`poll` compares each ``*.yaml`` file's name, size and modification time
    with the last successful load; it re-parses only when they differ. A file that
    fails validation raises :class:`RuleError` and the caller keeps the rules it
    has: an operator's typo must never leave a worker without rules.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._signature: tuple[tuple[str, int, int], ...] | None = None

    def _current(self) -> tuple[tuple[str, int, int], ...]:
        try:
            return tuple(
                (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(self.directory.glob("*.yaml"))
            )
        except OSError as exc:
            raise RuleError(f"cannot read rule directory {self.directory}: {exc}") from exc

    def poll(self) -> RuleSet | None:
        """The new rules if the files changed since the last load, else ``None``.

        Raises:
            RuleError: A file is unreadable or invalid (the signature is kept, so the
                next poll tries again only after another change).
        """
        current = self._current()
        if current == self._signature:
            return None
        self._signature = current
        return load_rules(self.directory)


def shipped_rules() -> RuleSet:
    """The rules shipped in ``alerts/data/rules/``."""
    root = resources.files("alerts").joinpath("data/rules")
    rules: list[Rule] = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            rules += parse_rules(entry.read_text(encoding="utf-8"), entry.name)
    return RuleSet(rules)
