"""The alerts package's exceptions: one base, specific subclasses."""

from __future__ import annotations


class AlertsError(Exception):
    """Base of every error raised by the alerts package."""


class IndicatorError(AlertsError, ValueError):
    """An indicator cannot be computed from the given input."""


class RuleError(AlertsError):
    """A rule definition is invalid."""


class AnomalyError(AlertsError, ValueError):
    """An anomaly detector was given invalid parameters, input or saved state."""
