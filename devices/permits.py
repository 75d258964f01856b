"""Discharge permits (排污许可证) of pollution sources, as ledger data.

A :class:`Permit` names its holder and validity; each :class:`PermitLimit` binds one
monitored outlet (a device) and one pollutant (a metric of the device's model) to an
hourly-mean concentration limit and daily / monthly / annual load caps, and names the
clause it comes from. Limits a permit does not set take the national standard's value a
permit usually cites (:func:`default_limits`: GB 8978-1996 Table 1 first-class pollutants
for wastewater, GB 13223-2011 Table 1 for flue gas; docs/standards.md §8).

The stream worker sees a device's permit in its ledger attributes under ``permit``
(the device index joins ``permit_limits``; :data:`PERMIT_JSON_SQL`), shaped::

    {"number": "...", "holder": "...", "valid_to": "2029-12-31",
     "limits": {"hg": {"limit": 0.05, "unit": "mg/L", "clause": "...",
                       "day_kg": 0.01, "month_kg": null, "year_kg": 2.0}}}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from importlib import resources
from typing import Any

import psycopg
import yaml

from devices.errors import PermitError
from devices.models import DeviceModel

__all__ = [
    "PERMIT_JSON_SQL",
    "Permit",
    "PermitLimit",
    "default_limits",
    "load_permit",
    "parse_permit",
    "permit_attributes",
    "permit_document",
    "save_permit",
]


@dataclass(frozen=True, slots=True)
class PermitLimit:
    """One outlet's limits for one pollutant.

    Attributes:
        device_code: The outlet's monitoring device.
        metric: The pollutant, a metric of the device's model (``hg``, ``so2``).
        limit: Hourly-mean concentration limit in the metric's canonical unit; 0 is
            不得检出; ``None`` when only loads are capped.
        unit: The limit's unit (the metric's canonical unit).
        clause: The permit clause or standard row the limit comes from.
        day_kg, month_kg, year_kg: Load caps in kg, or ``None``.
    """

    device_code: str
    metric: str
    limit: float | None
    unit: str
    clause: str
    day_kg: float | None = None
    month_kg: float | None = None
    year_kg: float | None = None

    def __post_init__(self) -> None:
        if not self.clause.strip():
            raise PermitError(f"limit {self.device_code}/{self.metric}: a limit names its clause")
        if self.limit is not None and not (math.isfinite(self.limit) and self.limit >= 0):
            raise PermitError(f"limit {self.device_code}/{self.metric}: concentration {self.limit!r} must be ≥ 0")
        for name in ("day_kg", "month_kg", "year_kg"):
            cap = getattr(self, name)
            if cap is not None and not (math.isfinite(cap) and cap > 0):
                raise PermitError(f"limit {self.device_code}/{self.metric}: {name} {cap!r} must be > 0")
        if self.limit is None and self.day_kg is None and self.month_kg is None and self.year_kg is None:
            raise PermitError(f"limit {self.device_code}/{self.metric}: neither a concentration limit nor a cap")


@dataclass(frozen=True, slots=True)
class Permit:
    """A discharge permit and its limits."""

    number: str
    holder: str
    valid_from: date
    valid_to: date
    limits: tuple[PermitLimit, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.number.strip() or not self.holder.strip():
            raise PermitError("a permit has a number and a holder")
        if self.valid_from > self.valid_to:
            raise PermitError(f"permit {self.number}: valid_from {self.valid_from} after valid_to {self.valid_to}")
        seen = set()
        for lim in self.limits:
            key = (lim.device_code, lim.metric)
            if key in seen:
                raise PermitError(f"permit {self.number}: two limits for {key}")
            seen.add(key)


@cache
def _defaults() -> dict[str, dict[str, dict[str, Any]]]:
    text = resources.files("devices").joinpath("data/discharge_limits.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return {cls: dict(rows) for cls, rows in data.items()}


def default_limits(
    model: DeviceModel,
    device_code: str,
    caps: Mapping[str, Mapping[str, float]] | None = None,
) -> list[PermitLimit]:
    """The national-standard limits for every pollutant of ``model`` that has one.

    Args:
        model: The outlet device's model (its class picks the table; its metrics the rows).
        device_code: The outlet device.
        caps: Optional load caps per metric (``{"hg": {"day_kg": 0.01, "year_kg": 2}}``);
            a metric with caps but no default concentration limit gets a load-only limit
            whose clause is the permit's.

    Returns:
        One :class:`PermitLimit` per metric.
    """
    table = _defaults().get(model.device_class, {})
    caps = caps or {}
    out: list[PermitLimit] = []
    for metric in model.metrics.values():
        row = table.get(metric.name)
        cap = caps.get(metric.name, {})
        if row is None and not cap:
            continue
        out.append(
            PermitLimit(
                device_code,
                metric.name,
                None if row is None else float(row["limit"]),
                metric.unit,
                "permit load cap" if row is None else str(row["clause"]),
                cap.get("day_kg"),
                cap.get("month_kg"),
                cap.get("year_kg"),
            )
        )
    return out


async def save_permit(conn: psycopg.AsyncConnection[Any], permit: Permit) -> None:
    """Insert or replace a permit and all its limits (idempotent).

    The limits of the permit's devices are replaced as a whole, so a re-imported permit
    that dropped a pollutant no longer caps it. Devices are refreshed in the worker's
    index on its next ledger reload.
    """
    async with conn.transaction():
        await conn.execute(
            "insert into permits (permit_no, holder, valid_from, valid_to) values (%s, %s, %s, %s)"
            " on conflict (permit_no) do update set holder = excluded.holder, valid_from = excluded.valid_from,"
            " valid_to = excluded.valid_to, updated_at = now()",
            (permit.number, permit.holder, permit.valid_from, permit.valid_to),
        )
        await conn.execute("delete from permit_limits where permit_no = %s", (permit.number,))
        devices = sorted({lim.device_code for lim in permit.limits})
        await conn.execute("delete from permit_limits where device_code = any(%s)", (devices,))
        async with conn.cursor() as cur:
            await cur.executemany(
                "insert into permit_limits (permit_no, device_code, metric, conc_limit, unit, clause,"
                " day_cap_kg, month_cap_kg, year_cap_kg) values (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (permit.number, lim.device_code, lim.metric, lim.limit, lim.unit, lim.clause, *_caps(lim))
                    for lim in permit.limits
                ],
            )
        # Bump the devices so incremental index refreshes pick the new permit up.
        await conn.execute("update devices set updated_at = now() where code = any(%s)", (devices,))


async def load_permit(conn: psycopg.AsyncConnection[Any], number: str) -> Permit | None:
    """A permit with its limits, or ``None``."""
    row = await (
        await conn.execute(
            "select permit_no, holder, valid_from, valid_to from permits where permit_no = %s", (number,)
        )
    ).fetchone()
    if row is None:
        return None
    rows = await (
        await conn.execute(
            "select device_code, metric, conc_limit, unit, clause, day_cap_kg, month_cap_kg, year_cap_kg"
            " from permit_limits where permit_no = %s order by device_code, metric",
            (number,),
        )
    ).fetchall()
    return Permit(row[0], row[1], row[2], row[3], tuple(PermitLimit(*r) for r in rows))


def permit_attributes(permit: Permit, device_code: str) -> dict[str, Any]:
    """The ``permit`` attribute the stream worker sees for one outlet (same shape as :data:`PERMIT_JSON_SQL`)."""
    return {
        "number": permit.number,
        "holder": permit.holder,
        "valid_to": permit.valid_to.isoformat(),
        "limits": {
            lim.metric: {
                "limit": lim.limit,
                "unit": lim.unit,
                "clause": lim.clause,
                "day_kg": lim.day_kg,
                "month_kg": lim.month_kg,
                "year_kg": lim.year_kg,
            }
            for lim in _of(permit.limits, device_code)
        },
    }


def parse_permit(doc: Mapping[str, Any], model_of: Callable[[str], DeviceModel]) -> Permit:
    """A permit from its file form (``citybrain devices permit import``)::

        number: 91350200TEST0001P
        holder: Test Plating Co.
        valid_from: 2026-01-01
        valid_to: 2030-12-31
        outlets:
          - device: "35020603100000017"
            defaults: true                 # the national-standard limits of its model (§8)
            limits:                        # the permit's own values, over the defaults
              cod: {day_kg: 20, year_kg: 5000}
              hg: {limit: 0.03, clause: "permit §3.1"}

    Args:
        doc: The parsed document.
        model_of: Device code → its model (to check metrics and take units and defaults).

    Raises:
        PermitError: a missing field, an unknown metric, or an invalid value.
    """
    try:
        number, holder = str(doc["number"]), str(doc["holder"])
        valid_from, valid_to = _date(doc["valid_from"]), _date(doc["valid_to"])
        outlets = doc.get("outlets") or []
    except (KeyError, TypeError, ValueError) as exc:
        raise PermitError(f"permit: missing or bad field {exc}") from None
    limits: list[PermitLimit] = []
    for outlet in outlets:
        if not isinstance(outlet, Mapping) or "device" not in outlet:
            raise PermitError(f"permit {number}: each outlet names its device")
        code = str(outlet["device"])
        model = model_of(code)
        own = outlet.get("limits") or {}
        if not isinstance(own, Mapping):
            raise PermitError(f"permit {number}: outlet {code}: limits must be a mapping")
        unknown = sorted(set(own) - set(model.metrics))
        if unknown:
            raise PermitError(f"permit {number}: outlet {code}: {unknown} are not metrics of {model.key}")
        base = {lim.metric: lim for lim in default_limits(model, code)} if outlet.get("defaults", True) else {}
        for metric in sorted(set(base) | set(own)):
            given = own.get(metric) or {}
            if not isinstance(given, Mapping):
                raise PermitError(f"permit {number}: outlet {code}: {metric} must be a mapping")
            d = base.get(metric)
            try:
                limits.append(
                    PermitLimit(
                        code,
                        metric,
                        _num(given["limit"]) if "limit" in given else (d.limit if d else None),
                        model.metrics[metric].unit,
                        str(given.get("clause") or (d.clause if d else f"permit {number}")),
                        _num(given.get("day_kg")),
                        _num(given.get("month_kg")),
                        _num(given.get("year_kg")),
                    )
                )
            except (TypeError, ValueError) as exc:
                raise PermitError(f"permit {number}: outlet {code}: {metric}: {exc}") from None
    return Permit(number, holder, valid_from, valid_to, tuple(limits))


def permit_document(permit: Permit) -> dict[str, Any]:
    """The file form of a permit (:func:`parse_permit` reads it back), every limit explicit."""
    outlets: dict[str, dict[str, Any]] = {}
    for lim in permit.limits:
        row: dict[str, Any] = {"clause": lim.clause}
        for key, value in (("limit", lim.limit), *zip(("day_kg", "month_kg", "year_kg"), _caps(lim), strict=True)):
            if value is not None:
                row[key] = value
        outlets.setdefault(lim.device_code, {})[lim.metric] = row
    return {
        "number": permit.number,
        "holder": permit.holder,
        "valid_from": permit.valid_from.isoformat(),
        "valid_to": permit.valid_to.isoformat(),
        "outlets": [{"device": code, "defaults": False, "limits": lims} for code, lims in outlets.items()],
    }


def _date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _num(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _caps(lim: PermitLimit) -> tuple[float | None, float | None, float | None]:
    return lim.day_kg, lim.month_kg, lim.year_kg


def _of(limits: Iterable[PermitLimit], device_code: str) -> list[PermitLimit]:
    return [lim for lim in limits if lim.device_code == device_code]


#: The device index's ``attributes`` column: the ledger attributes, plus ``permit`` for an
#: outlet with permit limits (:func:`permit_attributes` is the same shape in Python).
PERMIT_JSON_SQL = """\
case when pl.permit is null then d.attributes else d.attributes || jsonb_build_object('permit', pl.permit) end"""
PERMIT_JOIN_SQL = """\
left join lateral (
    select jsonb_build_object(
        'number', p.permit_no, 'holder', p.holder, 'valid_to', p.valid_to::text,
        'limits', jsonb_object_agg(l.metric, jsonb_build_object(
            'limit', l.conc_limit, 'unit', l.unit, 'clause', l.clause,
            'day_kg', l.day_cap_kg, 'month_kg', l.month_cap_kg, 'year_kg', l.year_cap_kg))) as permit
    from permit_limits l join permits p on p.permit_no = l.permit_no
    where l.device_code = d.code
    group by p.permit_no, p.holder, p.valid_to
    order by p.permit_no
    limit 1
) pl on true"""
