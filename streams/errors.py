"""Errors of the streams package: one base class, specific subclasses.

Callers that only care that "the store side failed" catch :class:`StreamsError`;
the subclasses say what failed, so a worker can retry a write but stop on a
query that can never succeed.
"""

from __future__ import annotations

__all__ = ["MaintenanceError", "QueryError", "StreamsError"]


class StreamsError(Exception):
    """Base class of every error raised by the streams package."""


class QueryError(StreamsError):
    """A read query was asked for something that cannot be answered.

    The message is meant for the API user (it becomes a 422): unknown metric,
    ``from`` after ``to``, too many points for the bucket, a bad cursor.
    """


class MaintenanceError(StreamsError):
    """A maintenance step (rollup refresh, retention, partitioning) failed."""
