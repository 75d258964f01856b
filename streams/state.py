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

import itertools
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
    "StateCache",
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


class StateCache:
    """Devices' rule or detector state as this worker last read or wrote it, with the row's version.

    Each ``rule_state`` / ``anomaly_state`` write increments the row's ``version``
    (migration 0430). A batch still locks its devices' rows (``for update``) but
    reads only their versions; a device whose version is the one cached here is
    evaluated from memory, any other is read in full. So the state a batch sees
    is always the committed row's, as if read every time: after a restart the
    cache is empty, and after a rebalance another worker's writes have moved the
    versions. What the cache saves is the JSON of every device's state, read and
    parsed per batch (docs/store.md, "State in memory").

    The caller must :meth:`forget` the batch's devices if its transaction does not
    commit: evaluation advances the cached objects in place.

    Bounded: past ``max_devices`` the entries written longest ago are dropped.
    """

    __slots__ = ("_entries", "hits", "max_devices", "misses")

    def __init__(self, max_devices: int = 100_000) -> None:
        if max_devices < 0:
            raise ValueError("max_devices must be >= 0")
        self.max_devices = max_devices
        self._entries: dict[str, tuple[int, Any]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, code: str, version: int) -> Any | None:
        """The cached state of ``code`` if it was cached at ``version``, else None."""
        entry = self._entries.get(code)
        if entry is not None and entry[0] == version:
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, code: str, version: int, state: Any) -> None:
        """Cache ``state`` as the row of ``code`` at ``version``."""
        if self.max_devices == 0:
            return
        entries = self._entries
        entries.pop(code, None)
        entries[code] = (version, state)
        if len(entries) > self.max_devices:
            # Oldest first (dicts keep insertion order; put re-inserts): drop a tenth at once.
            for old in list(itertools.islice(entries, max(1, self.max_devices // 10))):
                del entries[old]

    def forget(self, codes: Iterable[str]) -> None:
        """Drop these devices (their batch did not commit)."""
        for code in codes:
            self._entries.pop(code, None)


async def _lock(
    conn: psycopg.AsyncConnection,
    table: str,
    columns: str,
    codes: Sequence[str],
    cache: StateCache | None,
) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """Lock the rows of ``codes``; the cached states still current, and the rows to read in full."""
    codes = list(codes)
    if cache is None:
        full = await (
            await conn.execute(
                f"select device_code, version, {columns} from {table} where device_code = any(%s) for update", (codes,)
            )
        ).fetchall()
        return {}, full
    locked = await (
        await conn.execute(f"select device_code, version from {table} where device_code = any(%s) for update", (codes,))
    ).fetchall()
    hits: dict[str, Any] = {}
    missing = []
    for code, version in locked:
        state = cache.get(code, version)
        if state is None:
            missing.append(code)
        else:
            hits[code] = state
    full = []
    if missing:
        full = await (
            await conn.execute(
                f"select device_code, version, {columns} from {table} where device_code = any(%s)", (missing,)
            )
        ).fetchall()
    return hits, full


async def lock_rule_state(
    conn: psycopg.AsyncConnection, codes: Sequence[str], cache: StateCache | None = None
) -> dict[str, RuleState]:
    """The saved rule state of these devices, locked until the transaction ends.

    With a ``cache``, states it holds at the row's version come from memory
    (see :class:`StateCache`) and the others are cached as read.
    """
    # As text, parsed here with orjson: psycopg's jsonb loader (the standard json module)
    # was a twentieth of the worker's CPU on city-like traffic.
    out, rows = await _lock(conn, "rule_state", "watermark_us, snapshot::text, states::text", codes, cache)
    for code, version, wm, snap, states in rows:
        state: RuleState = (int(wm), _load_snapshot(loads(snap)), loads(states))
        out[code] = state
        if cache is not None:
            cache.put(code, version, state)
    return out


async def save_rule_state(
    conn: psycopg.AsyncConnection, updates: Sequence[tuple[str, RuleState]], cache: StateCache | None = None
) -> None:
    """Write devices' advanced rule state (``(code, state)`` pairs), in one statement.

    Each row's ``version`` goes up by one; with a ``cache``, the states are cached at it.
    """
    if not updates:
        return
    # One statement over arrays, not a statement per device: a city batch has a device per message.
    # %b sends the arrays in binary: psycopg's text-format array dumper escapes every element
    # with a regular expression, which cost more than the JSON it carried.
    cur = await conn.execute(
        "insert into rule_state (device_code, watermark_us, snapshot, states, version)"
        " select c, w, s::json, t::json, 1 from unnest(%b::text[], %b::int8[], %b::text[], %b::text[])"
        " as u(c, w, s, t)"
        " on conflict (device_code) do update set watermark_us = excluded.watermark_us,"
        " snapshot = excluded.snapshot, states = excluded.states, version = rule_state.version + 1,"
        " updated_at = now()"
        " returning device_code, version",
        (
            [code for code, _ in updates],
            [wm for _, (wm, _, _) in updates],
            # orjson writes NaN (no previous value) and infinities as null, as JSON needs.
            [dumps_text(snap) for _, (_, snap, _) in updates],
            [dumps_text(states) for _, (_, _, states) in updates],
        ),
    )
    if cache is not None:
        written = dict(updates)
        for code, version in await cur.fetchall():
            cache.put(code, version, written[code])


async def lock_anomaly_state(
    conn: psycopg.AsyncConnection, codes: Sequence[str], cache: StateCache | None = None
) -> dict[str, dict[str, Any]]:
    """The saved detector states of these devices, locked until the transaction ends (see :func:`lock_rule_state`)."""
    out, rows = await _lock(conn, "anomaly_state", "states::text", codes, cache)
    for code, version, states in rows:
        doc = loads(states)
        out[code] = doc
        if cache is not None:
            cache.put(code, version, doc)
    return out


async def save_anomaly_state(
    conn: psycopg.AsyncConnection,
    states: Mapping[str, dict[str, Any]],
    changed: Iterable[str],
    cache: StateCache | None = None,
) -> None:
    """Write the detector states of the ``changed`` devices, and their peer entries, in one statement.

    Each row's ``version`` goes up by one; with a ``cache``, the states are cached at it.
    """
    codes = sorted(changed)
    if not codes:
        return
    cur = await conn.execute(
        "insert into anomaly_state (device_code, states, peers, version)"
        " select c, s::json, p::jsonb, 1 from unnest(%b::text[], %b::text[], %b::text[]) as u(c, s, p)"
        " on conflict (device_code) do update set states = excluded.states,"
        " peers = excluded.peers, version = anomaly_state.version + 1, updated_at = now()"
        " returning device_code, version",
        (
            codes,
            [dumps_text(states[code]) for code in codes],
            [dumps_text(peer_entry(states[code])) for code in codes],
        ),
    )
    if cache is not None:
        for code, version in await cur.fetchall():
            cache.put(code, version, states[code])


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
