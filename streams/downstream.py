"""Downstream views of readings by data grade (issue 10: "downstream topics per grade").

A ``citybrain.readings`` record (docs/topics.md) carries every metric of one
device and event time. Metrics have a grade — ``public``, ``internal`` or
``sensitive`` — declared in ``devices/data/models/*.yaml``. The view of grade
``G`` keeps the readings whose grade is at most ``G``:

* ``public``: public metrics only (what any app may get);
* ``internal``: public and internal metrics;
* ``sensitive``: everything (the full record, the ``{prefix}.readings.{class}``
  topic that platform services such as the alerts worker consume).

The rules are those of the API (:mod:`citybrain.security.scope`): a device of a
sensitive class (gas, power, oil/gas manhole covers, ``sensitive: true`` in
``devices/data/classes.yaml``) has a sensitive exact location, so its position
metrics (``lon``/``lat``, when a model declares them) are coarsened to the grid
cell's label point in the views below ``sensitive``. A record carries no other
location (``grid`` is the cell itself). A metric whose model is unknown counts
as ``sensitive`` (fail closed: it never reaches a lower view).

Kafka (:func:`plan_views`): a class gets ``{prefix}.readings.{class}.public``
only when its public view can differ from the next higher one (it has an
internal or sensitive metric, or sensitive positions), and ``.internal`` only
when that view can differ from the full record. Classes whose metrics are all
public get no extra topic: their public view *is* the full topic, and
:meth:`ViewPlan.topic_for` names the topic that carries each grade's view.
Mode ``all`` produces both views for every class (uniform ACLs, up to 3× the
readings volume), ``off`` none.

Pure functions and small caches; no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from core.topics import DOWNSTREAM_GRADES, KafkaTopics
from devices.errors import ModelError
from devices.models import ModelRegistry

__all__ = [
    "GRADES",
    "POSITION_METRICS",
    "GradeMasker",
    "ViewMode",
    "ViewPlan",
    "grade_rank",
    "masker_for",
    "plan_views",
]

GRADES = DOWNSTREAM_GRADES
_RANK = {g: i for i, g in enumerate(GRADES)}
_SENSITIVE = _RANK["sensitive"]
#: Metrics that together are a device's position (WGS84, as alerts.geofence reads them).
POSITION_METRICS = ("lon", "lat")
ViewMode = Literal["auto", "all", "off"]
VIEW_MODES = ("auto", "all", "off")


def grade_rank(grade: str) -> int:
    """0 public, 1 internal, 2 sensitive; an unknown grade counts as sensitive."""
    return _RANK.get(grade, _SENSITIVE)


def _sensitive_class_codes() -> frozenset[str]:
    from devices.code import load_class_table

    table = load_class_table()
    return frozenset(c for c in table.minors if table.is_sensitive(c))


class GradeMasker:
    """Masks readings records by grade, with the grades of a model registry.

    Args:
        models: Device models (metric grades).
        is_sensitive_code: Whether a device code's class has a sensitive location
            (default: :func:`citybrain.security.scope.is_sensitive_class`).
        coarsen: WGS84 ``(lon, lat)`` → the published grid-cell point
            (default: :func:`citybrain.security.scope.coarsen`).
    """

    def __init__(
        self,
        models: ModelRegistry,
        *,
        is_sensitive_code: Callable[[str], bool] | None = None,
        coarsen: Callable[[float, float], tuple[float, float]] | None = None,
    ) -> None:
        self._models = models
        self._grades: dict[str, Mapping[str, int] | None] = {}
        self._is_sensitive_code = is_sensitive_code
        self._coarsen = coarsen

    def metric_grades(self, model_key: str) -> Mapping[str, int] | None:
        """Grade rank of each metric of a model (``id@version``); None when the model is unknown."""
        if model_key not in self._grades:
            try:
                model = self._models.get(model_key)
            except ModelError:
                self._grades[model_key] = None
            else:
                self._grades[model_key] = {name: grade_rank(m.grade) for name, m in model.metrics.items()}
        return self._grades[model_key]

    def _sensitive_location(self, code: str) -> bool:
        if self._is_sensitive_code is None:
            from citybrain.security.scope import is_sensitive_class

            self._is_sensitive_code = is_sensitive_class
        return len(code) >= 10 and self._is_sensitive_code(code)

    def _coarse(self, lon: float, lat: float) -> tuple[float, float]:
        if self._coarsen is None:
            from citybrain.security.scope import coarsen

            self._coarsen = coarsen
        return self._coarsen(lon, lat)

    def view(self, doc: Mapping[str, Any], grade: str) -> Mapping[str, Any] | None:
        """The record as a holder of ``grade`` may see it.

        Returns ``doc`` itself when nothing is masked (callers can reuse its
        serialisation), a new record otherwise, and None when no reading is left
        (the schema needs at least one; nothing is published).
        """
        rank = grade_rank(grade)
        readings: Sequence[Mapping[str, Any]] = doc.get("readings") or ()
        if rank >= _SENSITIVE:
            return doc if readings else None
        grades = self.metric_grades(str(doc.get("model") or "")) or {}
        kept = [r for r in readings if grades.get(str(r.get("metric")), _SENSITIVE) <= rank]
        moved = False
        if any(r.get("metric") in POSITION_METRICS for r in kept) and self._sensitive_location(
            str(doc.get("device") or "")
        ):
            kept, moved = self._coarsen_position(kept), True
        if not kept:
            return None
        if len(kept) == len(readings) and not moved:
            return doc
        return {**doc, "readings": kept}

    def views(self, doc: Mapping[str, Any], grades: Iterable[str] = GRADES) -> dict[str, Mapping[str, Any] | None]:
        """:meth:`view` for several grades."""
        return {g: self.view(doc, g) for g in grades}

    def _coarsen_position(self, kept: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        lon_name, lat_name = POSITION_METRICS
        by_name = {r.get("metric"): r for r in kept}
        lon, lat = by_name.get(lon_name), by_name.get(lat_name)
        rest = [r for r in kept if r.get("metric") not in POSITION_METRICS]
        if lon is None or lat is None:
            return rest  # half a position cannot be coarsened: it is dropped
        try:
            x, y = self._coarse(float(lon["value"]), float(lat["value"]))
        except (KeyError, TypeError, ValueError):
            return rest
        return [*rest, {**lon, "value": x}, {**lat, "value": y}]


@functools.cache
def masker_for(models: ModelRegistry) -> GradeMasker:
    """One :class:`GradeMasker` per registry (its grade table is cached)."""
    return GradeMasker(models)


@dataclass(frozen=True, slots=True)
class ViewPlan:
    """Which graded Kafka views each device class gets.

    Attributes:
        views: Per class, the grades (``public``/``internal``) produced on a topic of their own.
        distinct: Per class, the grades whose view can differ from the next higher grade's.
    """

    views: Mapping[str, tuple[str, ...]]
    distinct: Mapping[str, tuple[str, ...]]

    def grades(self, device_class: str) -> tuple[str, ...]:
        """Grades of a class produced on a topic of their own (besides the full topic)."""
        return self.views.get(device_class, ())

    def topic_for(self, topics: KafkaTopics, device_class: str, grade: str) -> str | None:
        """The Kafka topic carrying exactly the ``grade`` view of a class (for ACLs and apps).

        The grade's own topic when it has one, else the next higher grade's whose
        content is the same, up to the full topic; None when the view differs
        from every produced topic (mode ``off``): grant nothing then.
        """
        own, distinct = self.grades(device_class), self.distinct.get(device_class, ())
        for g in GRADES[grade_rank(grade) :]:
            if g == "sensitive":
                return topics.readings(device_class)
            if g in own:
                return topics.readings_view(device_class, g)
            if g in distinct:
                return None
        return topics.readings(device_class)  # pragma: no cover - the loop ends at sensitive

    def kafka_topics(self, topics: KafkaTopics) -> list[str]:
        """Every graded view topic to create (the full topics are created as before)."""
        return [topics.readings_view(c, g) for c in sorted(self.views) for g in self.views[c]]


def _class_distinct(models: ModelRegistry, device_class: str, sensitive_codes: frozenset[str]) -> tuple[str, ...]:
    worst = 0
    positions = False
    sensitive_class = False
    for m in models.all():
        if m.device_class != device_class:
            continue
        worst = max([worst, *(grade_rank(x.grade) for x in m.metrics.values())])
        positions = positions or all(p in m.metrics for p in POSITION_METRICS)
        sensitive_class = sensitive_class or any(c in sensitive_codes for c in m.class_codes)
    if positions and sensitive_class:
        worst = _SENSITIVE  # exact positions of gas/power covers are coarsened below sensitive
    # public differs from internal when something is internal or sensitive; internal from
    # the full record when something is sensitive.
    return tuple(g for g in ("public", "internal") if worst > grade_rank(g))


@functools.lru_cache(maxsize=16)
def plan_views(models: ModelRegistry, mode: str = "auto") -> ViewPlan:
    """The graded Kafka views to produce for a registry's classes.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in VIEW_MODES:
        raise ValueError(f"unknown downstream view mode {mode!r} (one of {', '.join(VIEW_MODES)})")
    codes = _sensitive_class_codes()
    distinct = {c: _class_distinct(models, c, codes) for c in models.device_classes()}
    if mode == "auto":
        views = {c: g for c, g in distinct.items() if g}
    elif mode == "all":
        views = {c: ("public", "internal") for c in distinct}
    else:
        views = {}
    return ViewPlan(views, distinct)
