"""Data grades and masking: the one policy, used by the API and by the downstream views.

Every field the platform hands out has a grade — ``public``, ``internal`` or
``sensitive`` (:data:`GRADES`, lowest first) — and grades are a property of the
device model, declared as data:

* metrics and model attributes: ``grade:`` in ``devices/data/models/*.yaml``;
* ledger columns: :data:`DEVICE_FIELD_GRADES`;
* the exact location of a device whose class is ``sensitive: true`` in
  ``devices/data/classes.yaml`` (gas, power and oil/gas manhole covers):
  :data:`SENSITIVE_LOCATION_GRADE`.

Masking: contacts keep their last 4 characters (:func:`mask_contact`), other
sensitive text becomes ``***``, internal fields become ``null``, metrics above
the reader's grade are dropped, and sensitive locations are coarsened to their
grid cell's label point (:func:`coarsen`, the same published point as the map).

Two readers apply it, through :class:`GradeMasker`:

* the HTTP API (``citybrain/security/scope.py``) masks a ledger row for a
  principal (:meth:`GradeMasker.device`, given which grades the principal may
  read) and filters metrics by :meth:`GradeMasker.metric_grade`;
* the stream worker and the gateway's MQTT bridge publish one view of each
  ``citybrain.readings`` record per grade (:meth:`GradeMasker.view`; the Kafka
  topics of the views are planned in :mod:`streams.downstream`).

An undeclared metric of a known model is ``public`` to the API (its columns are
the model's) but a record whose model is unknown to the worker is
``sensitive`` in the views (fail closed: it never reaches a lower view).

Pure functions and small caches; the city grid used by :func:`coarsen` is
built on first use, not at import.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from core.topics import DOWNSTREAM_GRADES
from devices.code import load_class_table
from devices.errors import ModelError
from devices.models import DeviceModel, ModelRegistry

__all__ = [
    "DEVICE_FIELD_GRADES",
    "GRADES",
    "POSITION_METRICS",
    "SENSITIVE_LOCATION_GRADE",
    "GradeMasker",
    "coarsen",
    "grade_rank",
    "is_sensitive_class",
    "mask_contact",
    "masker_for",
    "sensitive_class_codes",
]

#: Data grades, lowest first.
GRADES = DOWNSTREAM_GRADES
_RANK = {g: i for i, g in enumerate(GRADES)}
_SENSITIVE = _RANK["sensitive"]

#: Ledger columns that are not public. Everything else of a device row is public.
DEVICE_FIELD_GRADES: Mapping[str, str] = {
    "contact": "sensitive",  # a person's phone number
    "owner_unit": "internal",
    "installer": "internal",
    "serial": "internal",
    "created_by": "internal",
    "updated_by": "internal",
}
#: The grade of the exact position of a device of a sensitive class (gas/power manholes …).
SENSITIVE_LOCATION_GRADE = "sensitive"
#: Metrics that together are a device's position (WGS84, as alerts.geofence reads them).
POSITION_METRICS = ("lon", "lat")
# 大类+小类 of a 17-character city code (docs/device-code.md).
_CLASS_SLICE = slice(6, 10)


def grade_rank(grade: str) -> int:
    """0 public, 1 internal, 2 sensitive; an unknown grade counts as sensitive."""
    return _RANK.get(grade, _SENSITIVE)


def mask_contact(value: str | None) -> str | None:
    """Mask personal contact data: keep the last 4 characters of a long value, hide the rest."""
    if not value:
        return value
    keep = value[-4:] if len(value) >= 8 else ""
    return "*" * max(3, len(value) - len(keep)) + keep


@functools.cache
def sensitive_class_codes() -> frozenset[str]:
    """The 4-digit class codes (大类+小类) marked ``sensitive: true`` in ``devices/data/classes.yaml``."""
    table = load_class_table()
    return frozenset(c for c in table.minors if table.is_sensitive(c))


def is_sensitive_class(code: str) -> bool:
    """Whether a device code's class (大类+小类) is sensitive (its exact location is graded)."""
    return code[_CLASS_SLICE] in sensitive_class_codes()


@functools.cache
def _grid() -> Any:
    # Built once per process, and only when a sensitive location must be coarsened.
    from geo.districts import load_districts
    from geo.grid import Grid

    return Grid.build(load_districts())


def _wgs84(lon: float, lat: float, crs: str) -> tuple[float, float]:
    if crs == "GCJ02":
        from geo.coords import gcj02_to_wgs84

        lon, lat = (float(v) for v in gcj02_to_wgs84(lon, lat))
    return lon, lat


def coarsen(lon: float, lat: float, crs: str = "WGS84") -> tuple[float, float]:
    """The published (grid-cell) position of a WGS84 or GCJ-02 point, in WGS84."""
    from geo.service import coarsen_many

    lon, lat = _wgs84(lon, lat, crs)
    lons, lats = coarsen_many(_grid(), np.array([lon], dtype=np.float64), np.array([lat], dtype=np.float64))
    return float(lons[0]), float(lats[0])


class GradeMasker:
    """The grades of a model registry, and masking by them.

    Args:
        models: Device models (metric and attribute grades).
        is_sensitive_code: Whether a device code's class has a sensitive location
            (default :func:`is_sensitive_class`).
        coarsen: WGS84 ``(lon, lat)`` → the published grid-cell point
            (default :func:`coarsen`).
    """

    def __init__(
        self,
        models: ModelRegistry,
        *,
        is_sensitive_code: Callable[[str], bool] = is_sensitive_class,
        coarsen: Callable[[float, float], tuple[float, float]] = coarsen,
    ) -> None:
        self._models = models
        self._ranks: dict[str, Mapping[str, int] | None] = {}
        self._is_sensitive_code = is_sensitive_code
        self._coarsen = coarsen

    # -- grades ---------------------------------------------------------------

    def _model(self, key: str | None) -> DeviceModel | None:
        if not key:
            return None
        try:
            return self._models.get(key)
        except ModelError:
            return None

    def metric_grade(self, model_key: str | None, metric: str) -> str:
        """A metric's grade in a model (``public`` when the model does not declare the metric)."""
        model = self._model(model_key)
        if model is None or metric not in model.metrics:
            return "public"
        return model.metrics[metric].grade

    def class_metric_grade(self, device_class: str, metric: str) -> str:
        """The strictest grade any model of a class gives a metric."""
        worst = "public"
        for model in self._models.all():
            if model.device_class == device_class and metric in model.metrics:
                grade = model.metrics[metric].grade
                if grade_rank(grade) > grade_rank(worst):
                    worst = grade
        return worst

    def metric_grades(self, model_key: str) -> Mapping[str, int] | None:
        """Grade rank of each metric of a model (``id@version``); None when the model is unknown."""
        if model_key not in self._ranks:
            model = self._model(model_key)
            self._ranks[model_key] = (
                None if model is None else {name: grade_rank(m.grade) for name, m in model.metrics.items()}
            )
        return self._ranks[model_key]

    def sensitive_location(self, code: str) -> bool:
        """Whether the exact location of this device is sensitive (its class says so)."""
        return len(code) >= 10 and self._is_sensitive_code(code)

    # -- a ledger row, for a reader of some grades ------------------------------

    def device(self, row: Mapping[str, Any], readable: Callable[[str], bool]) -> tuple[dict[str, Any], list[str]]:
        """A device row as a reader who may read the grades ``readable`` says may see it.

        Returns:
            The row, with ``masked`` (the fields that were masked), and the
            sensitive fields it reveals (for the audit log).
        """
        out = dict(row)
        masked: list[str] = []
        revealed: list[str] = []
        for name, grade in DEVICE_FIELD_GRADES.items():
            if out.get(name) in (None, ""):
                continue
            if readable(grade):
                if grade == "sensitive":
                    revealed.append(name)
                continue
            out[name] = mask_contact(out[name]) if name == "contact" else None
            masked.append(name)
        model = self._model(out.get("model"))
        attributes = out.get("attributes")
        if model is not None and isinstance(attributes, dict) and attributes:
            shown = dict(attributes)
            for spec in model.attributes:
                attr = str(spec.get("name"))
                grade = str(spec.get("grade", "public"))
                if attr not in shown or grade == "public":
                    continue
                if readable(grade):
                    if grade == "sensitive":
                        revealed.append(f"attributes.{attr}")
                    continue
                value = shown[attr]
                if grade == "sensitive":
                    shown[attr] = mask_contact(value) if isinstance(value, str) else "***"
                else:
                    shown[attr] = None
                masked.append(f"attributes.{attr}")
            out["attributes"] = shown
        code = str(out.get("code") or "")
        lon, lat = out.get("lon"), out.get("lat")
        if code and lon is not None and lat is not None and self._is_sensitive_code(code):
            if readable(SENSITIVE_LOCATION_GRADE):
                revealed.append("location")
            else:
                out["lon"], out["lat"] = self._coarsen(*_wgs84(float(lon), float(lat), str(out.get("crs") or "WGS84")))
                out["crs"] = "WGS84"
                masked.append("location")
        out["masked"] = masked
        return out, revealed

    # -- a citybrain.readings record, for one grade -----------------------------

    def view(self, doc: Mapping[str, Any], grade: str) -> Mapping[str, Any] | None:
        """The ``citybrain.readings`` record as a holder of ``grade`` may see it.

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
        if any(r.get("metric") in POSITION_METRICS for r in kept) and self.sensitive_location(
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
            x, y = self._coarsen(float(lon["value"]), float(lat["value"]))
        except (KeyError, TypeError, ValueError):
            return rest
        return [*rest, {**lon, "value": x}, {**lat, "value": y}]


@functools.cache
def masker_for(models: ModelRegistry) -> GradeMasker:
    """One :class:`GradeMasker` per registry (its grade table is cached)."""
    return GradeMasker(models)
