"""Downstream views of readings by data grade (issue 10: "downstream topics per grade").

A ``citybrain.readings`` record (docs/topics.md) carries every metric of one
device and event time. Metrics have a grade — ``public``, ``internal`` or
``sensitive`` — declared in ``devices/data/models/*.yaml``. The view of grade
``G`` keeps the readings whose grade is at most ``G``:

* ``public``: public metrics only (what any app may get);
* ``internal``: public and internal metrics;
* ``sensitive``: everything (the full record, the ``{prefix}.readings.{class}``
  topic that platform services such as the alerts worker consume).

The grades and the masking are the one policy of :mod:`devices.grades`, the
same the API applies (:class:`devices.grades.GradeMasker`): a device of a
sensitive class (gas, power, oil/gas manhole covers, ``sensitive: true`` in
``devices/data/classes.yaml``) has a sensitive exact location, so its position
metrics (``lon``/``lat``, when a model declares them) are coarsened to the grid
cell's label point in the views below ``sensitive``. A record carries no other
location (``grid`` is the cell itself). A metric whose model is unknown counts
as ``sensitive`` (fail closed: it never reaches a lower view).

This module plans the Kafka topics of the views (:func:`plan_views`): a class
gets ``{prefix}.readings.{class}.public`` only when its public view can differ
from the next higher one (it has an internal or sensitive metric, or sensitive
positions), and ``.internal`` only
when that view can differ from the full record. Classes whose metrics are all
public get no extra topic: their public view *is* the full topic, and
:meth:`ViewPlan.topic_for` names the topic that carries each grade's view.
Mode ``all`` produces both views for every class (uniform ACLs, up to 3× the
readings volume), ``off`` none.

Pure functions and a small cache; no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from core.topics import KafkaTopics
from devices.grades import GRADES, POSITION_METRICS, grade_rank, sensitive_class_codes
from devices.models import ModelRegistry

__all__ = [
    "VIEW_MODES",
    "ViewMode",
    "ViewPlan",
    "plan_views",
]

_SENSITIVE = grade_rank("sensitive")
ViewMode = Literal["auto", "all", "off"]
VIEW_MODES = ("auto", "all", "off")


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
    codes = sensitive_class_codes()
    distinct = {c: _class_distinct(models, c, codes) for c in models.device_classes()}
    if mode == "auto":
        views = {c: g for c, g in distinct.items() if g}
    elif mode == "all":
        views = {c: ("public", "internal") for c in distinct}
    else:
        views = {}
    return ViewPlan(views, distinct)
