"""What every route module needs, built once by :func:`citybrain.api.create_api`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.feed import AlertFeed
from alerts.notify import TargetPolicy
from devices.models import ModelRegistry

__all__ = ["ApiContext", "utc_now"]


def utc_now() -> datetime:
    """The wall clock, in UTC: the default clock of the API."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ApiContext:
    """Dependencies shared by the route modules (passed in, never global)."""

    pool: AsyncConnectionPool
    models: ModelRegistry
    registry: CollectorRegistry
    alert_feed: AlertFeed | None = None
    assigner: Any = None  # geo.assign.Assigner: districts, grid cells, fences of a point
    # Injected so that windows "back from now" can be tested at any date.
    clock: Callable[[], datetime] = field(default=utc_now)
    #: ``CITYBRAIN_MAX_FUTURE_SKEW_S``: readings dated further ahead of their receive time
    #: (or of ``clock``) are a device clock running ahead, kept out of "latest".
    max_future_skew: timedelta = timedelta(minutes=5)
    #: ``CITYBRAIN_NOTIFY_ALLOWED_HOSTS``: where notification subscriptions may point.
    notify_targets: TargetPolicy = field(default_factory=TargetPolicy)
