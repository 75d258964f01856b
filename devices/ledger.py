"""The device ledger (物联终端台账) in PostgreSQL, and its in-memory index.

The index answers the hot-path questions (code → model, class, district,
state) in O(1) from a dict; it is loaded from the ledger and refreshed when
the ledger changes (periodically, and on demand after writes).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from devices.code import parse as parse_code
from devices.errors import LedgerError, ModelError, UnknownDeviceError
from devices.models import ModelRegistry

__all__ = ["DeviceIndex", "DeviceInfo", "Ledger", "NewDevice"]

log = logging.getLogger(__name__)

STATES = ("registered", "active", "suspended", "decommissioned")
ACCEPTING = frozenset({"registered", "active"})


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the hot path needs to know about a device."""

    code: str
    model: str
    device_class: str
    district: str
    grid: str | None
    state: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class NewDevice:
    """A device to register."""

    code: str
    model: str
    name: str = ""
    lon: float | None = None
    lat: float | None = None
    crs: str = "WGS84"
    grid: str | None = None
    owner_unit: str | None = None
    installer: str | None = None
    contact: str | None = None
    attributes: Mapping[str, Any] | None = None


class DeviceIndex:
    """In-memory code → :class:`DeviceInfo` map; O(1) lookups."""

    def __init__(self, devices: Iterable[DeviceInfo] = ()) -> None:
        self._by_code: dict[str, DeviceInfo] = {d.code: d for d in devices}

    def get(self, code: str) -> DeviceInfo | None:
        return self._by_code.get(code)

    def __len__(self) -> int:
        return len(self._by_code)

    def replace(self, devices: Iterable[DeviceInfo]) -> None:
        self._by_code = {d.code: d for d in devices}

    def put(self, info: DeviceInfo) -> None:
        self._by_code[info.code] = info


_SELECT_INDEX = "select code, model, device_class, district, grid, state, attributes from devices"


class Ledger:
    """Ledger operations over an async PostgreSQL pool (passed in)."""

    def __init__(self, pool: AsyncConnectionPool, models: ModelRegistry) -> None:
        self.pool = pool
        self.models = models

    async def register(self, dev: NewDevice, *, actor: str = "system") -> DeviceInfo:
        """Register a device; idempotent for the same code and model.

        Raises:
            LedgerError: invalid code, unknown model, or a conflicting registration.
        """
        code = parse_code(dev.code)
        try:
            model = self.models.get(dev.model)
        except ModelError as exc:
            raise LedgerError(str(exc)) from exc
        if code.class_code not in model.class_codes:
            raise LedgerError(
                f"device {dev.code}: class {code.class_code} does not fit model {model.key} "
                f"(allowed {', '.join(model.class_codes)})"
            )
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "insert into devices (code, alias, model, device_class, name, district, grid, lon, lat, crs,"
                    " owner_unit, installer, contact, attributes, created_by, updated_by)"
                    " values (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
                    " on conflict (code) do update set updated_at = devices.updated_at"
                    " returning code, model, device_class, district, grid, state, attributes,"
                    " (xmax = 0) as inserted",
                    (
                        code.full,
                        code.body,
                        model.key,
                        model.device_class,
                        dev.name,
                        code.district,
                        dev.grid,
                        dev.lon,
                        dev.lat,
                        dev.crs,
                        dev.owner_unit,
                        dev.installer,
                        dev.contact,
                        Jsonb(dict(dev.attributes or {})),
                        actor,
                        actor,
                    ),
                )
            ).fetchone()
            assert row is not None
            if row[1] != model.key:
                raise LedgerError(f"device {code.full} is already registered with model {row[1]}")
            if row[7]:
                await conn.execute(
                    "insert into device_state_history (code, from_state, to_state, reason, actor)"
                    " values (%s, null, 'registered', 'registered', %s)",
                    (code.full, actor),
                )
        return DeviceInfo(row[0], row[1], row[2], row[3], row[4], row[5], row[6] or {})

    async def get(self, code: str) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("select * from devices where code = %s or alias = %s", (code, code))
            row = await cur.fetchone()
        if row is None:
            raise UnknownDeviceError(code)
        row.pop("secret_hash", None)
        return row

    async def load_index(self) -> list[DeviceInfo]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_SELECT_INDEX)).fetchall()
        return [DeviceInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6] or {}) for r in rows]

    async def activate(self, codes: Iterable[str]) -> int:
        """Move registered devices to ``active`` (first valid message), with history."""
        codes = list(codes)
        if not codes:
            return 0
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "update devices set state = 'active', updated_at = now(), updated_by = 'commissioning'"
                    " where code = any(%s) and state = 'registered' returning code",
                    (codes,),
                )
            ).fetchall()
            if rows:
                async with conn.cursor() as cur:
                    await cur.executemany(
                        "insert into device_state_history (code, from_state, to_state, reason, actor)"
                        " values (%s, 'registered', 'active', 'first valid message', 'commissioning')",
                        [(r[0],) for r in rows],
                    )
        return len(rows)


def load_index_sync(conn: psycopg.Connection) -> list[DeviceInfo]:
    """Synchronous index load (CLI, tests)."""
    rows = conn.execute(_SELECT_INDEX).fetchall()
    return [DeviceInfo(r[0], r[1], r[2], r[3], r[4], r[5], r[6] or {}) for r in rows]
