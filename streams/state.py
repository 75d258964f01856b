"""What rule and detector evaluation keeps in PostgreSQL between batches, and what it reads.

* ``rule_state``: per device, the rule engine's watermark (event time in µs),
  its snapshot of the latest values and each rule's hysteresis state;
* ``anomaly_state``: per device, the detectors' states and what the device
  contributes to its peers' drift median (:func:`alerts.anomaly.stream.peer_entry`);
* ``maintenance_windows``: the windows in force now (their devices are not evaluated).

The ``lock_*`` and ``save_*`` functions run inside the evaluation's transaction
(:meth:`streams.pipeline.Pipeline.evaluate`): the state is locked, advanced and
written back with the alerts it produced, so a replayed batch changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from alerts.anomaly.stream import peer_entry
from core.jsonio import dumps_text, loads
from devices.models import ModelRegistry

__all__ = [
    "MaintenanceWindow",
    "RuleState",
    "active_maintenance_windows",
    "lock_anomaly_state",
    "lock_rule_state",
    "peer_medians",
    "save_anomaly_state",
    "save_rule_state",
]

#: ``(district, device code, device class)``; None matches every value.
MaintenanceWindow = tuple[str | None, str | None, str | None]
#: ``(watermark in µs, snapshot metric → latest values, rule id → state)``.
RuleState = tuple[int, dict[str, list[float]], dict[str, Any]]


async def lock_rule_state(conn: psycopg.AsyncConnection, codes: Sequence[str]) -> dict[str, RuleState]:
    """The saved rule state of these devices, locked until the transaction ends."""
    # As text, parsed here with orjson: psycopg's jsonb loader (the standard json module)
    # was a twentieth of the worker's CPU on city-like traffic.
    rows = await (
        await conn.execute(
            "select device_code, watermark_us, snapshot::text, states::text from rule_state"
            " where device_code = any(%s) for update",
            (list(codes),),
        )
    ).fetchall()
    return {r[0]: (int(r[1]), _load_snapshot(loads(r[2])), loads(r[3])) for r in rows}


async def save_rule_state(conn: psycopg.AsyncConnection, updates: Sequence[tuple[str, RuleState]]) -> None:
    """Write devices' advanced rule state (``(code, state)`` pairs), in one statement."""
    if not updates:
        return
    # One statement over arrays, not a statement per device: a city batch has a device per message.
    # %b sends the arrays in binary: psycopg's text-format array dumper escapes every element
    # with a regular expression, which cost more than the JSON it carried.
    await conn.execute(
        "insert into rule_state (device_code, watermark_us, snapshot, states)"
        " select c, w, s::jsonb, t::jsonb from unnest(%b::text[], %b::int8[], %b::text[], %b::text[]) as u(c, w, s, t)"
        " on conflict (device_code) do update set watermark_us = excluded.watermark_us,"
        " snapshot = excluded.snapshot, states = excluded.states, updated_at = now()",
        (
            [code for code, _ in updates],
            [wm for _, (wm, _, _) in updates],
            [dumps_text(_dump_snapshot(snap)) for _, (_, snap, _) in updates],
            [dumps_text(states) for _, (_, _, states) in updates],
        ),
    )


async def lock_anomaly_state(conn: psycopg.AsyncConnection, codes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The saved detector states of these devices, locked until the transaction ends."""
    rows = await (
        await conn.execute(
            "select device_code, states::text from anomaly_state where device_code = any(%s) for update",
            (list(codes),),
        )
    ).fetchall()
    return {r[0]: loads(r[1]) for r in rows}


async def save_anomaly_state(
    conn: psycopg.AsyncConnection, states: Mapping[str, Mapping[str, Any]], changed: Iterable[str]
) -> None:
    """Write the detector states of the ``changed`` devices, and their peer entries, in one statement."""
    codes = sorted(changed)
    if not codes:
        return
    await conn.execute(
        "insert into anomaly_state (device_code, states, peers)"
        " select c, s::jsonb, p::jsonb from unnest(%b::text[], %b::text[], %b::text[]) as u(c, s, p)"
        " on conflict (device_code) do update set states = excluded.states,"
        " peers = excluded.peers, updated_at = now()",
        (
            codes,
            [dumps_text(states[code]) for code in codes],
            [dumps_text(peer_entry(states[code])) for code in codes],
        ),
    )


async def peer_medians(pool: AsyncConnectionPool, models: ModelRegistry) -> dict[tuple[str, str, str], float]:
    """Drift peers: median of offset-corrected latest values per (district, model, metric).

    One aggregate over ``anomaly_state.peers``; a value counts while younger
    than 3 × its model's cadence, and a group needs 3 peers.
    """
    keys = [m.key for m in models.all()] + [m.id for m in models.latest()]
    cadences = [float(m.cadence_s) for m in models.all()] + [float(m.cadence_s) for m in models.latest()]
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                "select d.district, split_part(d.model, '@', 1), p.key,"
                " percentile_cont(0.5) within group (order by (p.value->>0)::float8 - (p.value->>2)::float8)"
                " from anomaly_state a join devices d on d.code = a.device_code"
                " join unnest(%b::text[], %s::float8[]) as m(model, cadence_s) on m.model = d.model"
                " cross join lateral jsonb_each(a.peers) as p(key, value)"
                " where (p.value->>1)::float8 >= extract(epoch from now()) - 3 * m.cadence_s"
                " group by 1, 2, 3 having count(*) >= 3",
                (keys, cadences),
            )
        ).fetchall()
    return {(r[0], r[1], r[2]): float(r[3]) for r in rows}


async def active_maintenance_windows(pool: AsyncConnectionPool) -> list[MaintenanceWindow]:
    """The maintenance windows in force now."""
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                "select district, device_code, device_class from maintenance_windows"
                " where starts_at <= now() and ends_at > now()"
            )
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def _load_snapshot(raw: dict[str, list[float | None]]) -> dict[str, list[float]]:
    # JSON has no NaN: missing previous values are stored as null.
    return {k: [math.nan if x is None else float(x) for x in v] for k, v in raw.items()}


def _dump_snapshot(snap: dict[str, list[float]]) -> dict[str, list[float | None]]:
    return {k: [None if math.isnan(x) or math.isinf(x) else x for x in v] for k, v in snap.items()}
