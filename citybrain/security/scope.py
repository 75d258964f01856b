"""What a principal may see: district and class scoping, and masking by data grade.

* **Scope.** A principal's ``districts`` and ``classes`` grants narrow every
  device, reading and alert it can reach (empty = no restriction). Routes ask
  :class:`Scope`; a single object outside the scope answers 404 (so codes cannot
  be probed), a list is filtered.
* **Grades.** Every field a response can carry has a grade — ``public``,
  ``internal`` or ``sensitive`` — declared as data: metrics and model
  attributes in ``devices/data/models/*.yaml`` (``grade:``), ledger columns in
  :data:`DEVICE_FIELD_GRADES`, and the exact location of a device whose class is
  ``sensitive: true`` in ``devices/data/classes.yaml`` (gas, power and oil/gas
  manhole covers) in :data:`SENSITIVE_LOCATION_GRADE`. Reading a grade unmasked
  needs :data:`GRADE_PERMISSION` (``internal:read``, ``sensitive:read``).
  Masking: contacts keep their last 4 characters, other sensitive text becomes
  ``***``, internal fields become ``null``, sensitive locations are coarsened
  to their grid cell's label point (the same published point as the map).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from citybrain.security.identities import Principal
from devices.code import load_class_table
from devices.errors import ModelError
from devices.ledger import mask_contact
from devices.models import DeviceModel, ModelRegistry

__all__ = [
    "DEVICE_FIELD_GRADES",
    "GRADES",
    "GRADE_PERMISSION",
    "SENSITIVE_LOCATION_GRADE",
    "Masker",
    "Scope",
    "can_read",
]

GRADES = ("public", "internal", "sensitive")
GRADE_PERMISSION: Mapping[str, str | None] = {
    "public": None,
    "internal": "internal:read",
    "sensitive": "sensitive:read",
}
# Ledger columns that are not public. Everything else of a device row is public.
DEVICE_FIELD_GRADES: Mapping[str, str] = {
    "contact": "sensitive",  # a person's phone number
    "owner_unit": "internal",
    "installer": "internal",
    "serial": "internal",
    "created_by": "internal",
    "updated_by": "internal",
}
# The exact position of a device of a sensitive class (gas/power manholes …).
SENSITIVE_LOCATION_GRADE = "sensitive"
_CLASS_SLICE = slice(6, 10)


def can_read(principal: Principal, grade: str) -> bool:
    """Whether the principal sees data of this grade unmasked (an unknown grade counts as sensitive)."""
    permission = GRADE_PERMISSION.get(grade, "sensitive:read")
    return permission is None or principal.can(permission)


@dataclass(frozen=True, slots=True)
class Scope:
    """The districts and device classes a principal may see (empty = all)."""

    districts: frozenset[str] = frozenset()
    classes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, principal: Principal) -> Scope:
        """The scope granted to a principal."""
        return cls(principal.districts, principal.classes)

    @property
    def unrestricted(self) -> bool:
        """No district and no class restriction."""
        return not self.districts and not self.classes

    def allows(self, district: str | None, device_class: str | None) -> bool:
        """Whether an object of this district and class is visible."""
        if self.districts and district not in self.districts:
            return False
        return not (self.classes and device_class not in self.classes)

    def allows_district(self, district: str | None) -> bool:
        """Whether a district is visible (class left aside)."""
        return not self.districts or district in self.districts

    def allows_class(self, device_class: str | None) -> bool:
        """Whether a class is visible (district left aside)."""
        return not self.classes or device_class in self.classes

    def districts_for(self, requested: str | None) -> list[str] | None:
        """Districts to filter a query by: ``None`` for no filter, ``[]`` when nothing is visible."""
        return self._narrow(self.districts, requested)

    def classes_for(self, requested: str | None) -> list[str] | None:
        """Classes to filter a query by: ``None`` for no filter, ``[]`` when nothing is visible."""
        return self._narrow(self.classes, requested)

    @staticmethod
    def _narrow(granted: frozenset[str], requested: str | None) -> list[str] | None:
        if requested is not None:
            return [requested] if not granted or requested in granted else []
        return sorted(granted) if granted else None

    def visible_rows(self, rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """Rows whose ``district`` and ``device_class`` are visible."""
        return [r for r in rows if self.allows(r.get("district"), r.get("device_class"))]


@functools.cache
def _grid() -> Any:
    # Built once per process, and only when a sensitive location must be coarsened.
    from geo.districts import load_districts
    from geo.grid import Grid

    return Grid.build(load_districts())


@functools.cache
def _sensitive_class_codes() -> frozenset[str]:
    classes = load_class_table()
    return frozenset(c for c in classes.minors if classes.is_sensitive(c))


def is_sensitive_class(code: str) -> bool:
    """Whether a device code's class (大类+小类) is sensitive (its exact location is graded)."""
    return code[_CLASS_SLICE] in _sensitive_class_codes()


def coarsen(lon: float, lat: float, crs: str = "WGS84") -> tuple[float, float]:
    """The published (grid-cell) position of a WGS84 or GCJ-02 point, in WGS84."""
    from geo.coords import gcj02_to_wgs84
    from geo.service import coarsen_many

    if crs == "GCJ02":
        lon, lat = (float(v) for v in gcj02_to_wgs84(lon, lat))
    lons, lats = coarsen_many(_grid(), np.array([lon], dtype=np.float64), np.array([lat], dtype=np.float64))
    return float(lons[0]), float(lats[0])


class Masker:
    """Masks device rows and readings by grade for one principal.

    Args:
        models: Device models (metric and attribute grades).
    """

    def __init__(self, models: ModelRegistry) -> None:
        self._models = models

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
        order = {g: i for i, g in enumerate(GRADES)}
        worst = "public"
        for model in self._models.all():
            if model.device_class == device_class and metric in model.metrics:
                grade = model.metrics[metric].grade
                if order.get(grade, 2) > order[worst]:
                    worst = grade
        return worst

    def device(self, row: Mapping[str, Any], principal: Principal) -> tuple[dict[str, Any], list[str]]:
        """A device row as the principal may see it, and the sensitive fields it reveals.

        The returned row has ``masked``: the fields that were masked.
        """
        out = dict(row)
        masked: list[str] = []
        revealed: list[str] = []
        for name, grade in DEVICE_FIELD_GRADES.items():
            if out.get(name) in (None, ""):
                continue
            if can_read(principal, grade):
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
                if can_read(principal, grade):
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
        if code and lon is not None and lat is not None and is_sensitive_class(code):
            if can_read(principal, SENSITIVE_LOCATION_GRADE):
                revealed.append("location")
            else:
                out["lon"], out["lat"] = coarsen(float(lon), float(lat), str(out.get("crs") or "WGS84"))
                out["crs"] = "WGS84"
                masked.append("location")
        out["masked"] = masked
        return out, revealed
