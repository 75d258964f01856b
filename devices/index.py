"""The in-memory device index: code → model, class, district, state, without the database.

The index answers the hot-path questions of the stream worker and the edge
servers. It is compact — about 20 bytes per device in numpy arrays instead of
~400 for a dict of objects — so one process can hold a city's 18 million
terminals (:class:`DeviceIndex`). :class:`devices.ledger.Ledger` loads it from
PostgreSQL and :class:`devices.ledger.IndexFeed` keeps it current from the
ledger's change feed.
"""

from __future__ import annotations

import json
import logging
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from devices.errors import LedgerError

__all__ = ["DeviceIndex", "DeviceInfo", "IndexBuilder", "code_key"]

log = logging.getLogger(__name__)


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


# --- compact in-memory index --------------------------------------------------

_EMPTY: Mapping[str, Any] = {}
# Bit layout of the packed column (low to high): model 16 | class 8 | state 4 | district 12 | grid 24.
_MODEL_BITS, _CLASS_BITS, _STATE_BITS, _DISTRICT_BITS, _GRID_BITS = 16, 8, 4, 12, 24
_CLASS_SHIFT = _MODEL_BITS
_STATE_SHIFT = _CLASS_SHIFT + _CLASS_BITS
_DISTRICT_SHIFT = _STATE_SHIFT + _STATE_BITS
_GRID_SHIFT = _DISTRICT_SHIFT + _DISTRICT_BITS
# Packed value of a removed device (model id 0 means "none"; every device has a model).
_ABSENT = 0
# The overlay of new devices is folded into the arrays beyond this size (and 1/64 of them).
_FOLD_MIN = 4096


def code_key(code: str) -> int | None:
    """The index key of a 17-character code: ``int(body) * 11 + check``.

    Exact: a code with a wrong check character gets a different key, so it is
    not found. ``None`` for anything that is not code-shaped (``int()`` alone
    would accept spaces, underscores and non-ASCII digits).
    """
    if len(code) != 17 or not code.isascii():
        return None
    body = code[:16]
    if not body.isdigit():
        return None
    c = code[16]
    if c == "X":
        check = 10
    elif "0" <= c <= "9":
        check = ord(c) - 48
    else:
        return None
    return int(body) * 11 + check


class _Interner:
    """Value ↔ small integer (index 0 is reserved for "none")."""

    __slots__ = ("ids", "limit", "name", "values")

    def __init__(self, name: str, bits: int) -> None:
        self.name = name
        self.limit = 1 << bits
        self.values: list[Any] = [None]
        self.ids: dict[Any, int] = {}

    def id(self, key: Any, value: Any = None) -> int:
        if key is None:
            return 0
        found = self.ids.get(key)
        if found is None:
            found = len(self.values)
            if found >= self.limit:
                raise LedgerError(f"device index: more than {self.limit - 1} distinct {self.name} values")
            self.values.append(key if value is None else value)
            self.ids[key] = found
        return found

    def nbytes(self) -> int:
        return sys.getsizeof(self.values) + sys.getsizeof(self.ids) + sum(sys.getsizeof(v) for v in self.values)


class DeviceIndex:
    """Code → :class:`DeviceInfo`, compact.

    Layout: a sorted ``int64`` array of :func:`code_key` keys, a parallel
    ``uint64`` of bit-packed small ids (model, class, state, district, grid)
    and a ``uint32`` id of the device's attributes, deduplicated (most devices
    share ``{}`` or a handful of values). A lookup is one binary search. A
    device removed from the ledger keeps its key with a packed value of 0 (no
    model) until the next fold. Devices new since the arrays were built live in
    a small dict overlay that wins over the arrays (:meth:`put`, :meth:`apply`).
    """

    def __init__(self, devices: Iterable[DeviceInfo] = ()) -> None:
        self._keys: np.ndarray = np.empty(0, np.int64)
        self._packed: np.ndarray = np.empty(0, np.uint64)
        self._attrs: np.ndarray = np.empty(0, np.uint32)
        self._kv, self._pv, self._av = self._keys.data, self._packed.data, self._attrs.data
        self._tables: tuple[_Interner, ...] = tuple(_Interner("", 1) for _ in range(6))
        self._overlay: dict[str, DeviceInfo] = {}
        # Overlay devices not present in the arrays; array slots marked removed.
        self._extra = 0
        self._absent = 0
        if devices:
            self.replace(devices)

    # -- building ---------------------------------------------------------------

    def replace(self, devices: Iterable[DeviceInfo]) -> None:
        """Rebuild from devices (drops the overlay)."""
        builder = IndexBuilder()
        for d in devices:
            builder.add((d.code, d.model, d.device_class, d.district, d.grid, d.state, d.attributes))
        builder.finish_into(self)

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]]) -> DeviceIndex:
        """Build from ``(code, model, device_class, district, grid, state, attributes)`` rows.

        Rows can be a server-side cursor: nothing but the compact arrays is kept.
        """
        builder = IndexBuilder()
        for row in rows:
            builder.add(row)
        return builder.finish()

    def _install(self, keys: np.ndarray, packed: np.ndarray, attrs: np.ndarray, tables: tuple[_Interner, ...]) -> None:
        self._keys = keys
        self._packed = packed
        self._attrs = attrs
        self._kv, self._pv, self._av = keys.data, packed.data, attrs.data
        self._tables = tables
        self._overlay = {}
        self._extra = 0
        self._absent = 0

    # -- reading ----------------------------------------------------------------

    def _position(self, key: int) -> int:
        """The array slot of ``key`` (present or marked removed), or -1."""
        # ndarray.searchsorted (the method) and memoryview indexing: a third of
        # the cost of np.searchsorted and numpy scalar indexing per lookup.
        i = int(self._keys.searchsorted(key))
        if i < len(self._kv) and self._kv[i] == key:
            return i
        return -1

    def _slot(self, code: str) -> int:
        key = code_key(code)
        return -1 if key is None else self._position(key)

    def _info(self, code: str, i: int) -> DeviceInfo | None:
        v = self._pv[i]
        if v == _ABSENT:
            return None
        models, classes, states, districts, grids, attrs = self._tables
        return DeviceInfo(
            code,
            models.values[v & 0xFFFF],
            classes.values[(v >> _CLASS_SHIFT) & 0xFF],
            districts.values[(v >> _DISTRICT_SHIFT) & 0xFFF],
            grids.values[v >> _GRID_SHIFT],
            states.values[(v >> _STATE_SHIFT) & 0xF],
            attrs.values[self._av[i]] or _EMPTY,
        )

    def get(self, code: str) -> DeviceInfo | None:
        """The device with exactly this 17-character code, or None."""
        hit = self._overlay.get(code)
        if hit is not None:
            return hit
        key = code_key(code)
        if key is None:
            return None
        i = self._position(key)
        return None if i < 0 else self._info(code, i)

    def get_many(self, codes: Sequence[str]) -> list[DeviceInfo | None]:
        """Vectorised :meth:`get` for a batch (one ``searchsorted`` for all)."""
        keys = [code_key(c) for c in codes]
        probe = np.fromiter((-1 if k is None else k for k in keys), dtype=np.int64, count=len(keys))
        pos = np.searchsorted(self._keys, probe)
        n = len(self._keys)
        out: list[DeviceInfo | None] = []
        for code, key, i in zip(codes, keys, pos.tolist(), strict=True):
            hit = self._overlay.get(code)
            if hit is not None:
                out.append(hit)
            elif key is None or i >= n or self._kv[i] != key:
                out.append(None)
            else:
                out.append(self._info(code, i))
        return out

    def __len__(self) -> int:
        return len(self._keys) - self._absent + self._extra

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and self.get(code) is not None

    # -- changing ---------------------------------------------------------------

    def _present(self, i: int) -> bool:
        return i >= 0 and self._pv[i] != _ABSENT

    def put(self, info: DeviceInfo) -> None:
        """Add or replace one device (overlay) until the next :meth:`replace`."""
        if info.code not in self._overlay and not self._present(self._slot(info.code)):
            self._extra += 1
        self._overlay[info.code] = info

    def _drop_overlay(self, code: str, i: int) -> None:
        if self._overlay.pop(code, None) is not None and not self._present(i):
            self._extra -= 1

    def _write(self, i: int, row: Sequence[Any]) -> None:
        _code, model, device_class, district, grid, state, attributes = row[:7]
        models, classes, states, districts, grids, attrs = self._tables
        if self._pv[i] == _ABSENT:
            self._absent -= 1
        self._pv[i] = (
            models.id(model)
            | classes.id(device_class) << _CLASS_SHIFT
            | states.id(state) << _STATE_SHIFT
            | districts.id(district) << _DISTRICT_SHIFT
            | grids.id(grid) << _GRID_SHIFT
        )
        self._av[i] = attrs.id(json.dumps(attributes, sort_keys=True), dict(attributes)) if attributes else 0

    def apply(self, rows: Iterable[Sequence[Any]], removed: Iterable[str] = ()) -> int:
        """Apply ledger changes in place (the change feed, :class:`IndexFeed`).

        A device already in the arrays is updated there (one binary search and two
        array writes); a new device goes to the overlay, which is folded into the
        arrays once it holds more than :data:`_FOLD_MIN` devices and 1/64 of the
        arrays, so the cost stays proportional to what changed (amortised). A
        removed device is marked absent in the arrays and dropped from the overlay.

        Args:
            rows: ``(code, model, device_class, district, grid, state, attributes, ...)`` rows.
            removed: Codes of devices deleted from the ledger.

        Returns:
            The number of changes applied.
        """
        n = 0
        for row in rows:
            n += 1
            code = row[0]
            i = self._slot(code)
            if i < 0:
                if code_key(code) is not None:
                    self.put(DeviceInfo(code, row[1], row[2], row[3], row[4], row[5], row[6] or _EMPTY))
                continue
            self._drop_overlay(code, i)
            self._write(i, row)
        for code in removed:
            n += 1
            i = self._slot(code)
            self._drop_overlay(code, i)
            if self._present(i):
                self._pv[i] = _ABSENT
                self._absent += 1
        if len(self._overlay) > max(_FOLD_MIN, len(self._keys) >> 6):
            self.fold()
        return n

    def fold(self) -> None:
        """Merge the overlay into the arrays and drop removed slots (a copy of the arrays)."""
        new: list[DeviceInfo] = []
        for code, info in self._overlay.items():
            i = self._slot(code)
            if i >= 0:  # put() over a device of the arrays
                self._write(
                    i, (code, info.model, info.device_class, info.district, info.grid, info.state, info.attributes)
                )
            else:
                new.append(info)
        builder = IndexBuilder(self._tables)
        for d in new:
            builder.add((d.code, d.model, d.device_class, d.district, d.grid, d.state, d.attributes))
        nk, npk, na = builder.arrays()
        keep = self._packed != _ABSENT
        keys, packed, attrs = self._keys[keep], self._packed[keep], self._attrs[keep]
        at = np.searchsorted(keys, nk)
        self._install(np.insert(keys, at, nk), np.insert(packed, at, npk), np.insert(attrs, at, na), self._tables)

    def memory_bytes(self) -> int:
        """Bytes held by the arrays, the interned tables and the overlay (approximate)."""
        arrays = self._keys.nbytes + self._packed.nbytes + self._attrs.nbytes
        tables = sum(t.nbytes() for t in self._tables)
        return arrays + tables + sys.getsizeof(self._overlay) + 200 * len(self._overlay)


class IndexBuilder:
    """Builds a :class:`DeviceIndex` row by row (e.g. from a cursor, chunk by chunk)."""

    def __init__(self, tables: tuple[_Interner, ...] | None = None) -> None:
        """Args:
        tables: Interned value tables to extend (an index's own, when folding), or fresh ones.
        """
        if tables is None:
            tables = (
                _Interner("model", _MODEL_BITS),
                _Interner("device class", _CLASS_BITS),
                _Interner("state", _STATE_BITS),
                _Interner("district", _DISTRICT_BITS),
                _Interner("grid", _GRID_BITS),
                _Interner("attributes", 32),
            )
        self.models, self.classes, self.states, self.districts, self.grids, self.attrs = tables
        self.keys: array[int] = array("q")
        self.packed: array[int] = array("Q")
        self.attr_ids: array[int] = array("I")
        self.skipped = 0

    def add(self, row: Sequence[Any]) -> None:
        """Add one ``(code, model, device_class, district, grid, state, attributes)`` row."""
        code, model, device_class, district, grid, state, attributes = row
        key = code_key(code)
        if key is None:
            self.skipped += 1
            return
        self.keys.append(key)
        self.packed.append(
            self.models.id(model)
            | self.classes.id(device_class) << _CLASS_SHIFT
            | self.states.id(state) << _STATE_SHIFT
            | self.districts.id(district) << _DISTRICT_SHIFT
            | self.grids.id(grid) << _GRID_SHIFT
        )
        if attributes:
            self.attr_ids.append(self.attrs.id(json.dumps(attributes, sort_keys=True), dict(attributes)))
        else:
            self.attr_ids.append(0)

    def finish(self) -> DeviceIndex:
        """The index (this builder must not be used afterwards)."""
        index = DeviceIndex()
        self.finish_into(index)
        return index

    def finish_into(self, index: DeviceIndex) -> None:
        if self.skipped:
            log.warning("device index: skipped %d ledger rows whose code is not a 17-character code", self.skipped)
        k, p, a = self.arrays()
        index._install(k, p, a, (self.models, self.classes, self.states, self.districts, self.grids, self.attrs))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keys, packed ids and attribute ids so far, sorted by key (fresh, writable arrays)."""
        k = np.frombuffer(self.keys, dtype=np.int64) if len(self.keys) else np.empty(0, np.int64)
        p = np.frombuffer(self.packed, dtype=np.uint64) if len(self.packed) else np.empty(0, np.uint64)
        a = np.frombuffer(self.attr_ids, dtype=np.uint32) if len(self.attr_ids) else np.empty(0, np.uint32)
        order = np.argsort(k, kind="stable")
        # Fancy indexing copies: the arrays are writable and own their memory.
        return k[order], p[order], a[order]
