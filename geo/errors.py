"""The geo package's exceptions: one base, specific subclasses."""

from __future__ import annotations


class GeoError(Exception):
    """Base of every error raised by the geo package."""


class OutsideCityError(GeoError, ValueError):
    """A point lies outside every district."""


class GeometryError(GeoError, ValueError):
    """A geometry is invalid and could not be repaired."""
