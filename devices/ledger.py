"""The device ledger (物联终端台账) in PostgreSQL.

The :class:`Ledger` owns every write: registration, code allocation,
lifecycle transitions with history, updates, and MQTT credentials. It loads
the in-memory index of :mod:`devices.index`, and :class:`IndexFeed` keeps that
index current from the ledger's change feed. ``DeviceIndex``, ``DeviceInfo``
and ``IndexBuilder`` are re-exported here for older imports.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from devices.code import MAX_SEQUENCE, DeviceCode, code_bounds, load_class_table, resolve
from devices.credentials import hash_secret, mosquitto_hash, new_secret
from devices.errors import (
    AllocationError,
    DeviceCodeError,
    LedgerError,
    ModelError,
    TransitionError,
    UnknownDeviceError,
)
from devices.index import DeviceIndex, DeviceInfo, IndexBuilder
from devices.lifecycle import ACCEPTING, STATES, check_transition
from devices.models import ModelRegistry
from devices.permits import PERMIT_JOIN_SQL, PERMIT_JSON_SQL
from devices.rows import COLUMNS

__all__ = [
    "ACCEPTING",
    "STATES",
    "DeviceIndex",
    "DeviceInfo",
    "DeviceQuery",
    "IndexBuilder",
    "IndexFeed",
    "Ledger",
    "NewDevice",
    "Page",
    "allocate_codes",
    "load_index_sync",
]

log = logging.getLogger(__name__)


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
    serial: str | None = None


# --- code allocation ---------------------------------------------------------

# One statement, atomic under concurrency: the row lock taken by ON CONFLICT DO
# UPDATE serialises allocators of one (district, class), and the update reads
# the latest committed counter. The counter also never falls below the highest
# sequence already in the ledger (codes registered or imported by hand), found
# with one probe of the primary key: codes of one district and class are one
# contiguous key range.
_ALLOCATE = """
insert into code_sequences as s (district, class_code, next_seq)
values (
    %(district)s, %(class_code)s,
    greatest(coalesce((select substr(max(code), 11, 6)::int from devices where code between %(lo)s and %(hi)s), 0),
             %(floor)s)
    + 1 + %(n)s)
on conflict (district, class_code) do update
    set next_seq = greatest(s.next_seq, excluded.next_seq - %(n)s) + %(n)s
returning next_seq
"""


def _allocate_params(district: str, class_code: str, n: int, floor: int = 0) -> dict[str, Any]:
    if n < 1:
        raise AllocationError(f"cannot allocate {n} codes")
    table = load_class_table()
    if not table.has_minor(class_code):
        raise AllocationError(f"unknown class {class_code!r}")
    try:
        DeviceCode.build(district, class_code, 1)
        lo, hi = code_bounds(district, class_code)
    except DeviceCodeError as exc:
        raise AllocationError(str(exc)) from exc
    if district[:2] == "00" or district[4:] == "00":
        # xx0000 is a province, xxxx00 a prefecture (350200 厦门市): devices live in counties.
        raise AllocationError(f"{district} is not a county-level GB/T 2260 code")
    return {"district": district, "class_code": class_code, "n": n, "lo": lo, "hi": hi, "floor": floor}


def _allocated(district: str, class_code: str, n: int, next_seq: int) -> list[DeviceCode]:
    first = next_seq - n
    if next_seq - 1 > MAX_SEQUENCE:
        raise AllocationError(
            f"district {district} class {class_code}: sequence space exhausted "
            f"({n} more would end at {next_seq - 1}, the last is {MAX_SEQUENCE})"
        )
    return [DeviceCode.build(district, class_code, seq) for seq in range(first, next_seq)]


def allocate_codes(
    conn: psycopg.Connection, district: str, class_code: str, n: int = 1, *, floor: int = 0
) -> list[DeviceCode]:
    """Allocate ``n`` consecutive new codes (synchronous; bulk import, CLI).

    Runs in the caller's transaction: if it rolls back, so does the allocation,
    and on exhaustion :class:`AllocationError` is raised before anything is used.

    Args:
        floor: The highest sequence already taken outside the ledger (codes
            in the same import file); allocation starts above it.
    """
    params = _allocate_params(district, class_code, n, floor)
    with conn.transaction():
        row = conn.execute(_ALLOCATE, params).fetchone()
        assert row is not None
        return _allocated(district, class_code, n, int(row[0]))


# --- queries -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceQuery:
    """Filters and keyset pagination of the device list.

    ``bbox`` is (west, south, east, north) in degrees; ``after`` is the last
    code of the previous page.
    """

    q: str | None = None
    device_class: str | None = None
    class_code: str | None = None
    district: str | None = None
    state: str | None = None
    model: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    after: str | None = None
    limit: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= 10_000:
            raise LedgerError(f"limit must be 1..10000, got {self.limit}")
        if self.state is not None and self.state not in STATES:
            raise LedgerError(f"unknown state {self.state!r}; states are {', '.join(STATES)}")
        if self.bbox is not None:
            w, s, e, n = self.bbox
            if not all(math.isfinite(v) for v in self.bbox) or not (w <= e and s <= n):
                raise LedgerError("bbox must be west,south,east,north with west <= east and south <= north")
        if self.class_code is not None and (len(self.class_code) != 4 or not self.class_code.isdigit()):
            raise LedgerError(f"class_code {self.class_code!r} must be 4 digits")

    def where(self) -> sql.Composed:
        """The WHERE clause (without pagination), composed with placeholders."""
        parts: list[sql.Composable] = [sql.SQL("true")]
        if self.q and self.q.strip():
            text = self.q.strip()
            escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            parts.append(
                sql.SQL("(code like {p} or alias like {p} or name ilike {c} or serial = {t})").format(
                    p=sql.Literal(escaped + "%"), c=sql.Literal("%" + escaped + "%"), t=sql.Literal(text)
                )
            )
        for column, value in (
            ("device_class", self.device_class),
            ("district", self.district),
            ("state", self.state),
            ("model", self.model),
        ):
            if value is not None:
                parts.append(sql.SQL("{} = {}").format(sql.Identifier(column), sql.Literal(value)))
        if self.class_code is not None:
            parts.append(sql.SQL("substr(code, 7, 4) = {}").format(sql.Literal(self.class_code)))
        if self.bbox is not None:
            w, s, e, n = self.bbox
            # point <@ box uses the GiST index on point(lon, lat) (migration 0100).
            parts.append(
                sql.SQL(
                    "lon is not null and lat is not null and point(lon, lat) <@ box(point({}, {}), point({}, {}))"
                ).format(sql.Literal(w), sql.Literal(s), sql.Literal(e), sql.Literal(n))
            )
        return sql.SQL(" and ").join(parts)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of devices, the total matching the filters, and the cursor to the next page."""

    items: list[dict[str, Any]]
    total: int
    next_after: str | None


# A device as the API shows it: the ledger's keys, the registration columns, the lifecycle and the audit stamps.
_PUBLIC_COLUMNS = (
    "code",
    "alias",
    "device_class",
    *(c for c in COLUMNS if c not in ("code", "class_code")),
    "state",
    "created_at",
    "updated_at",
    "created_by",
    "updated_by",
)
_SELECT_PUBLIC = sql.SQL(", ").join(sql.Identifier(c) for c in _PUBLIC_COLUMNS)
# What an update may change: every registration column but those the code is made of.
_UPDATABLE = frozenset(COLUMNS) - {"code", "district", "class_code"} | {"alias"}


# The index's attributes carry an outlet's discharge permit (devices/permits.py) so the rules see it.
_SELECT_INDEX = (
    "select d.code, d.model, d.device_class, d.district, d.grid, d.state, "
    + PERMIT_JSON_SQL
    + " from devices d "
    + PERMIT_JOIN_SQL
)


# The change feed (citybrain/sql/0101_ledger_change_feed.sql). Getting the exclusive
# lock means no statement writing devices is in flight, so every change number up
# to the sequence's last value is committed (or rolled back): a safe watermark.
# Never waits: NULL when a writer holds the shared lock.
_CHANGE_LOCK = 1701017017
_SAFE_MARK = (
    f"select case when pg_try_advisory_xact_lock({_CHANGE_LOCK})"
    " then coalesce(pg_sequence_last_value('device_change_seq'), 0) end"
)
_SELECT_CHANGED = _SELECT_INDEX + " where change_seq > %s"
_COUNT_CHANGED = "select count(*) from devices where change_seq > %s"
# More changed devices than this (plus a quarter of the index): a full load instead.
_RELOAD_ABOVE = 100_000
_SELECT_REMOVED = (
    "select t.code from device_tombstones t where t.change_seq > %s"
    " and not exists (select 1 from devices d where d.code = t.code)"
)


class IndexFeed:
    """Keeps a :class:`DeviceIndex` current by reading only what changed in the ledger.

    :meth:`load` reads the whole ledger once (worker start); :meth:`refresh`
    then reads the devices whose ``change_seq`` is above the last safe
    watermark, and the tombstones of deleted ones, and applies them in place:
    its cost is proportional to the changes, not to the ledger.

    Watermark: sequence numbers are taken at write time but visible at commit.
    The watermark only advances to the sequence's last value when no write
    statement is in flight (a try of the exclusive advisory lock every writer
    holds shared, see the migration); otherwise the next refresh reads again
    from the old watermark, so a change committed late is never missed.
    """

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self.index = DeviceIndex()
        #: Every change numbered up to this is in :attr:`index` (None: never loaded).
        self.watermark: int | None = None

    async def _safe_mark(self, conn: psycopg.AsyncConnection[Any]) -> int | None:
        async with conn.transaction():
            row = await (await conn.execute(_SAFE_MARK)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    async def load(self) -> DeviceIndex:
        """Read the whole ledger into a new index (streamed in chunks) and return it."""
        builder = IndexBuilder()
        async with self.pool.connection() as conn:
            mark = await self._safe_mark(conn)
            for _ in range(20):  # a write in flight (e.g. a bulk import): wait a little for it
                if mark is not None:
                    break
                await asyncio.sleep(0.05)
                mark = await self._safe_mark(conn)
            async with conn.transaction():
                cur = conn.cursor(name="device_index")
                await cur.execute(_SELECT_INDEX)
                while rows := await cur.fetchmany(50_000):
                    for row in rows:
                        builder.add(row)
        self.index = builder.finish()
        # A writer in flight at load time: nothing is known to be settled, so the
        # first refreshes read from 0 until a quiet moment gives a watermark.
        self.watermark = 0 if mark is None else mark
        if mark is None:
            log.warning("device index: ledger writes in flight at load; re-reading changes until they settle")
        return self.index

    async def refresh(self) -> int:
        """Apply the ledger's changes since the watermark; return how many (loads first if never loaded)."""
        if self.watermark is None:
            await self.load()
            return len(self.index)
        since = self.watermark
        async with self.pool.connection() as conn:
            mark = await self._safe_mark(conn)
            row = await (await conn.execute(_COUNT_CHANGED, (since,))).fetchone()
            count = int(row[0]) if row is not None else 0
            if count <= _RELOAD_ABOVE + len(self.index) // 4:
                async with conn.transaction():
                    changed = await (await conn.execute(_SELECT_CHANGED, (since,))).fetchall()
                    removed = await (await conn.execute(_SELECT_REMOVED, (since,))).fetchall()
        if count > _RELOAD_ABOVE + len(self.index) // 4:
            # A bulk import changed a large part of the ledger: one streamed full read
            # costs less memory than that many rows fetched and overlaid.
            await self.load()
            return count
        n = self.index.apply(changed, (r[0] for r in removed))
        if mark is not None:
            self.watermark = max(since, mark)
        return n


def _info(row: Sequence[Any]) -> DeviceInfo:
    return DeviceInfo(row[0], row[1], row[2], row[3], row[4], row[5], row[6] or {})


class Ledger:
    """Ledger operations over an async PostgreSQL pool (passed in)."""

    def __init__(self, pool: AsyncConnectionPool, models: ModelRegistry, *, assigner: Any = None) -> None:
        """Args:
        pool: PostgreSQL pool.
        models: Device models.
        assigner: A :class:`geo.assign.Assigner`; when given, a device registered with a
            location gets its grid cell from it, and a location outside the city or in
            another district than its code says is refused.
        """
        self.pool = pool
        self.models = models
        self.assigner = assigner

    # -- registration -------------------------------------------------------------

    async def register(self, dev: NewDevice, *, actor: str = "system") -> DeviceInfo:
        """Register a device; idempotent for the same code and model.

        A real 16-digit 部件 code is accepted and registered under its
        17-character form (with the 16 digits as alias).

        Raises:
            LedgerError: invalid code, unknown model, or a conflicting registration.
        """
        try:
            code = resolve(dev.code)
        except DeviceCodeError as exc:
            raise LedgerError(str(exc)) from exc
        model = self._model_for(code, dev.model)
        if self.assigner is not None and dev.lon is not None and dev.lat is not None:
            dev = self._place(code, dev)
        try:
            return await self._insert(code, model, dev, actor)
        except psycopg.errors.UniqueViolation as exc:
            raise LedgerError(f"device {code.full}: {exc.diag.message_detail or exc}") from exc

    def _place(self, code: DeviceCode, dev: NewDevice) -> NewDevice:
        """District check and grid cell from the device's location (geo assignment)."""
        from dataclasses import replace

        from geo.coords import Crs, Location
        from geo.errors import GeoError

        assert dev.lon is not None and dev.lat is not None
        try:
            where = self.assigner.assign_location(Location(dev.lon, dev.lat, Crs(dev.crs)))
        except (GeoError, ValueError) as exc:
            raise LedgerError(f"device {code.full}: {exc}") from exc
        if where.district.code != code.district:
            raise LedgerError(
                f"device {code.full}: its location ({dev.lon}, {dev.lat}) is in district {where.district.code} "
                f"({where.district.name_zh}), but its code says {code.district}"
            )
        return replace(dev, grid=dev.grid or where.grid_cell)

    async def _insert(self, code: DeviceCode, model: Any, dev: NewDevice, actor: str) -> DeviceInfo:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "insert into devices (code, alias, model, device_class, name, district, grid, lon, lat, crs,"
                    " owner_unit, installer, contact, attributes, serial, created_by, updated_by)"
                    " values (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
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
                        dev.serial,
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
        return _info(row)

    def _model_for(self, code: DeviceCode, model_name: str) -> Any:
        try:
            model = self.models.get(model_name)
        except ModelError as exc:
            raise LedgerError(str(exc)) from exc
        if code.class_code not in model.class_codes:
            raise LedgerError(
                f"device {code.full}: class {code.class_code} does not fit model {model.key} "
                f"(allowed {', '.join(model.class_codes)})"
            )
        return model

    async def allocate_next(self, district: str, class_code: str) -> DeviceCode:
        """Allocate the next free code of a district and class (safe under concurrency).

        Raises:
            AllocationError: unknown class, bad district, or the 999999 sequences are used up.
        """
        return (await self.allocate(district, class_code, 1))[0]

    async def allocate(self, district: str, class_code: str, n: int) -> list[DeviceCode]:
        """Allocate ``n`` consecutive new codes at once (bulk registration)."""
        params = _allocate_params(district, class_code, n)
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute(_ALLOCATE, params)).fetchone()
            assert row is not None
            # Raising inside the transaction rolls the counter back on exhaustion.
            return _allocated(district, class_code, n, int(row[0]))

    # -- reading ------------------------------------------------------------------

    async def lookup(self, code_or_alias: str) -> str:
        """The device code for a code or an alias (a real 16-digit 部件 code).

        Raises:
            UnknownDeviceError: no device has that code or alias.
        """
        text = code_or_alias.strip().upper()
        async with self.pool.connection() as conn:
            if len(text) == 16:
                row = await (
                    await conn.execute(
                        "select code from devices where alias = %s"
                        " union all select code from devices where code = %s limit 1",
                        (text, _full_or_none(text)),
                    )
                ).fetchone()
            else:
                row = await (await conn.execute("select code from devices where code = %s", (text,))).fetchone()
        if row is None:
            raise UnknownDeviceError(code_or_alias)
        return str(row[0])

    async def get(self, code: str) -> dict[str, Any]:
        """Every public column of a device, by code or alias (contact NOT masked: callers mask)."""
        full = await self.lookup(code)
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql.SQL("select {} from devices where code = %s").format(_SELECT_PUBLIC), (full,))
            row = await cur.fetchone()
        if row is None:
            raise UnknownDeviceError(code)
        return row

    async def search(self, query: DeviceQuery) -> Page:
        """A page of devices in code order, with the total matching the filters."""
        where = query.where()
        page_where = where
        if query.after:
            page_where = sql.SQL("{} and code > {}").format(where, sql.Literal(query.after))
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                sql.SQL("select {} from devices where {} order by code limit {}").format(
                    _SELECT_PUBLIC, page_where, sql.Literal(query.limit)
                )
            )
            items = await cur.fetchall()
            count = sql.SQL("select count(*) from devices where {}").format(where)
            total_row = await (await conn.execute(count)).fetchone()
        total = int(total_row[0]) if total_row else 0
        next_after = items[-1]["code"] if len(items) == query.limit else None
        return Page(items, total, next_after)

    async def history(self, code: str) -> list[dict[str, Any]]:
        """The lifecycle history of a device, oldest first."""
        full = await self.lookup(code)
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "select at, from_state, to_state, reason, actor from device_state_history"
                " where code = %s order by at, ctid",
                (full,),
            )
            return await cur.fetchall()

    async def iter_export(
        self, query: DeviceQuery | None = None, *, chunk: int = 2000
    ) -> AsyncIterator[dict[str, Any]]:
        """Every device matching the filters, in code order, streamed in chunks (keyset)."""
        base = query or DeviceQuery()
        after = base.after
        while True:
            page_q = DeviceQuery(
                q=base.q,
                device_class=base.device_class,
                class_code=base.class_code,
                district=base.district,
                state=base.state,
                model=base.model,
                bbox=base.bbox,
                after=after,
                limit=chunk,
            )
            where = page_q.where()
            if after:
                where = sql.SQL("{} and code > {}").format(where, sql.Literal(after))
            async with self.pool.connection() as conn:
                cur = conn.cursor(row_factory=dict_row)
                await cur.execute(
                    sql.SQL("select {} from devices where {} order by code limit {}").format(
                        _SELECT_PUBLIC, where, sql.Literal(chunk)
                    )
                )
                rows = await cur.fetchall()
            for row in rows:
                yield row
            if len(rows) < chunk:
                return
            after = rows[-1]["code"]

    async def load_index(self) -> list[DeviceInfo]:
        async with self.pool.connection() as conn:
            rows = await (await conn.execute(_SELECT_INDEX)).fetchall()
        return [_info(r) for r in rows]

    async def load_compact_index(self) -> DeviceIndex:
        """The whole ledger as a compact :class:`DeviceIndex` (see :meth:`IndexFeed.load`)."""
        return await IndexFeed(self.pool).load()

    # -- lifecycle ----------------------------------------------------------------

    async def activate(self, codes: Iterable[str]) -> int:
        """Move registered devices to ``active`` (first valid message), with history.

        Only ``registered`` devices move: unknown, suspended and decommissioned
        codes are left alone (see :meth:`commission` for the reasons).
        """
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

    async def commission(self, codes: Iterable[str]) -> dict[str, str]:
        """Activate registered devices; return why every other code was refused.

        Returns:
            code → reason for each code not activated (``unknown device``,
            ``device is suspended``, ``device is decommissioned``,
            ``already active``). Empty when all were activated.
        """
        wanted = sorted(set(codes))
        if not wanted:
            return {}
        async with self.pool.connection() as conn:
            states: dict[str, str] = dict(
                await (await conn.execute("select code, state from devices where code = any(%s)", (wanted,))).fetchall()
            )
        await self.activate(c for c in wanted if states.get(c) == "registered")
        refused: dict[str, str] = {}
        for code in wanted:
            state = states.get(code)
            if state is None:
                refused[code] = "unknown device"
            elif state == "active":
                refused[code] = "already active"
            elif state != "registered":
                refused[code] = f"device is {state}"
        return refused

    async def transition(self, code: str, target: str, reason: str, *, actor: str) -> dict[str, Any]:
        """Move a device to another lifecycle state, with history.

        Decommissioning also revokes the device's MQTT credentials.

        Raises:
            UnknownDeviceError: no such device.
            TransitionError: the lifecycle does not allow it; the message says why.
        """
        full = await self.lookup(code)
        async with self.pool.connection() as conn, conn.transaction():
            row = await (await conn.execute("select state from devices where code = %s for update", (full,))).fetchone()
            if row is None:
                raise UnknownDeviceError(code)
            current = str(row[0])
            why = check_transition(full, current, target, reason)
            # A decommissioned device must never log in again.
            revoke = sql.SQL(", secret_hash = null, mosquitto_hash = null" if target == "decommissioned" else "")
            await conn.execute(
                sql.SQL("update devices set state = %s, updated_at = now(), updated_by = %s{} where code = %s").format(
                    revoke
                ),
                (target, actor, full),
            )
            await conn.execute(
                "insert into device_state_history (code, from_state, to_state, reason, actor) values (%s,%s,%s,%s,%s)",
                (full, current, target, why, actor),
            )
        log.info("device %s: %s -> %s by %s (%s)", full, current, target, actor, why)
        return {"code": full, "from": current, "to": target, "reason": why, "actor": actor}

    # -- updates ------------------------------------------------------------------

    async def update(self, code: str, changes: Mapping[str, Any], *, actor: str) -> dict[str, Any]:
        """Update descriptive fields of a device (PATCH semantics: only the keys given).

        The code, district and class never change (they are the identity);
        ``state`` changes only through :meth:`transition`.

        Raises:
            UnknownDeviceError: no such device.
            LedgerError: a field that cannot be changed, or an invalid value.
        """
        bad = sorted(set(changes) - _UPDATABLE)
        if bad:
            raise LedgerError(f"cannot update {', '.join(bad)}; updatable: {', '.join(sorted(_UPDATABLE))}")
        full = await self.lookup(code)
        values = dict(changes)
        if "model" in values:
            model = self._model_for(resolve(full), str(values["model"]))
            values["model"], values["device_class"] = model.key, model.device_class
        if "alias" in values and values["alias"] is not None:
            try:
                alias = resolve(str(values["alias"]))
            except DeviceCodeError as exc:
                raise LedgerError(f"alias: {exc}") from exc
            values["alias"] = alias.body
        if "install_date" in values and isinstance(values["install_date"], str):
            try:
                values["install_date"] = date.fromisoformat(values["install_date"])
            except ValueError as exc:
                raise LedgerError(f"install_date {values['install_date']!r} is not a date") from exc
        if "attributes" in values:
            values["attributes"] = Jsonb(dict(values["attributes"] or {}))
        if self.assigner is not None and values.keys() & {"lon", "lat", "crs"}:
            values = await self._moved(full, values)
        if not values:
            return await self.get(full)
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in sorted(values)
        )
        async with self.pool.connection() as conn, conn.transaction():
            try:
                await conn.execute(
                    sql.SQL("update devices set {}, updated_at = now(), updated_by = {} where code = {}").format(
                        assignments, sql.Placeholder("_actor"), sql.Placeholder("_code")
                    ),
                    {**values, "_actor": actor, "_code": full},
                )
            except psycopg.errors.UniqueViolation as exc:
                raise LedgerError(f"device {full}: {exc.diag.message_detail or exc}") from exc
            except psycopg.errors.CheckViolation as exc:
                raise LedgerError(f"device {full}: invalid value ({exc.diag.message_primary})") from exc
        return await self.get(full)

    async def _moved(self, full: str, values: dict[str, Any]) -> dict[str, Any]:
        """A device moved: refuse a location outside its district, and give it the new grid cell.

        A ``grid`` in the same update is kept (as on registration).
        """
        current = await self.get(full)
        lon, lat = values.get("lon", current.get("lon")), values.get("lat", current.get("lat"))
        if lon is None or lat is None:
            return values
        crs = str(values.get("crs") or current.get("crs") or "WGS84")
        try:
            dev = NewDevice(full, "", lon=float(lon), lat=float(lat), crs=crs, grid=values.get("grid"))
        except (TypeError, ValueError) as exc:
            raise LedgerError(f"device {full}: lon/lat must be numbers ({exc})") from exc
        return {**values, "grid": self._place(resolve(full), dev).grid}

    # -- credentials --------------------------------------------------------------

    async def rotate_credentials(self, code: str, *, actor: str) -> str:
        """Issue a new MQTT secret for a device; return it (shown once, stored hashed).

        The old secret stops working at the broker's next refresh.

        Raises:
            UnknownDeviceError: no such device.
            LedgerError: the device is decommissioned.
        """
        full = await self.lookup(code)
        secret = new_secret()
        hashed, mosq = hash_secret(secret), mosquitto_hash(secret)
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "update devices set secret_hash = %s, mosquitto_hash = %s, secret_rotated_at = now(),"
                    " updated_at = now(), updated_by = %s where code = %s and state <> 'decommissioned'"
                    " returning code",
                    (hashed, mosq, actor, full),
                )
            ).fetchone()
        if row is None:
            raise TransitionError(f"device {full} is decommissioned: it gets no credentials")
        log.info("device %s: credentials rotated by %s", full, actor)
        return secret

    async def revoke_credentials(self, code: str, *, actor: str) -> None:
        """Remove a device's MQTT secret; it can no longer log in."""
        full = await self.lookup(code)
        async with self.pool.connection() as conn:
            await conn.execute(
                "update devices set secret_hash = null, mosquitto_hash = null, secret_rotated_at = now(),"
                " updated_at = now(), updated_by = %s where code = %s",
                (actor, full),
            )
        log.info("device %s: credentials revoked by %s", full, actor)


def _full_or_none(body: str) -> str | None:
    try:
        return resolve(body).full
    except DeviceCodeError:
        return None


def load_index_sync(conn: psycopg.Connection) -> list[DeviceInfo]:
    """Synchronous index load (CLI, tests)."""
    rows = conn.execute(_SELECT_INDEX).fetchall()
    return [_info(r) for r in rows]
