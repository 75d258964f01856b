"""What a principal may see: district and class scoping, and masking by data grade.

* **Scope.** A principal's ``districts`` and ``classes`` grants narrow every
  device, reading and alert it can reach (empty = no restriction). Routes ask
  :class:`Scope`; a single object outside the scope answers 404 (so codes cannot
  be probed), a list is filtered.
* **Grades.** Every field a response can carry has a grade — ``public``,
  ``internal`` or ``sensitive``. The grades and the masking are the one policy
  of :mod:`devices.grades` (grades are a property of the device model), the
  same the stream worker applies to the downstream views. This module adds
  only what the API knows: reading a grade unmasked needs
  :data:`GRADE_PERMISSION` (``internal:read``, ``sensitive:read``), and
  :class:`Masker` applies the policy for one principal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from citybrain.security.identities import Principal
from devices.grades import GradeMasker
from devices.models import ModelRegistry

__all__ = [
    "GRADE_PERMISSION",
    "Masker",
    "Scope",
    "can_read",
]

GRADE_PERMISSION: Mapping[str, str | None] = {
    "public": None,
    "internal": "internal:read",
    "sensitive": "sensitive:read",
}


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


class Masker:
    """Masks device rows and readings by grade for one principal (:class:`devices.grades.GradeMasker`).

    Args:
        models: Device models (metric and attribute grades).
    """

    def __init__(self, models: ModelRegistry) -> None:
        self._policy = GradeMasker(models)

    def metric_grade(self, model_key: str | None, metric: str) -> str:
        """A metric's grade in a model (``public`` when the model does not declare the metric)."""
        return self._policy.metric_grade(model_key, metric)

    def class_metric_grade(self, device_class: str, metric: str) -> str:
        """The strictest grade any model of a class gives a metric."""
        return self._policy.class_metric_grade(device_class, metric)

    def device(self, row: Mapping[str, Any], principal: Principal) -> tuple[dict[str, Any], list[str]]:
        """A device row as the principal may see it, and the sensitive fields it reveals.

        The returned row has ``masked``: the fields that were masked.
        """
        return self._policy.device(row, lambda grade: can_read(principal, grade))
