"""What every route module needs, built once by :func:`citybrain.api.create_api`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from psycopg_pool import AsyncConnectionPool

from alerts.feed import AlertFeed
from devices.models import ModelRegistry

__all__ = ["ApiContext"]


@dataclass(frozen=True, slots=True)
class ApiContext:
    """Dependencies shared by the route modules (passed in, never global)."""

    pool: AsyncConnectionPool
    models: ModelRegistry
    registry: CollectorRegistry
    alert_feed: AlertFeed | None = None
    assigner: Any = None  # geo.assign.Assigner: districts, grid cells, fences of a point
