"""The geo package's exceptions: one base, specific subclasses."""

from __future__ import annotations


class GeoError(Exception):
    """Base of every error raised by the geo package."""


class OutsideCityError(GeoError, ValueError):
    """A point lies outside every district."""


class GeometryError(GeoError, ValueError):
    """A geometry is invalid and could not be repaired."""


class CoordinateError(GeoError, ValueError):
    """A coordinate is not a finite number inside its valid range."""


class GridError(GeoError, ValueError):
    """A grid is misconfigured, or a cell code is malformed or unknown."""


class DistrictDataError(GeoError, ValueError):
    """District data is malformed (missing properties, duplicate codes, overlaps)."""


class FenceNotFoundError(GeoError, LookupError):
    """No geofence has the given id."""


class FenceExistsError(GeoError):
    """A geofence with the given id already exists."""
