"""Statistical anomaly detectors per (device, metric) series, as the stream worker runs them. Pure numpy, no I/O.

Each detector is a **bank**: ``<Name>Bank(size, params).update(t, x, index=None)``
updates many series at once with numpy, one sample per series per call.
Its per-series state is a small frozen dataclass ``<Name>State`` with
``to_dict`` / ``from_dict`` (JSON-safe: no NaN, so it fits a PostgreSQL
``jsonb`` column); banks convert to and from those states (:meth:`state`,
``from_states``) and, column-wise, to and from their dicts (``from_dicts``,
``to_dicts``), which is what :mod:`alerts.anomaly.stream` uses.

The same detectors written one sample and one series at a time (an online
``<Name>Detector`` and a batch ``<name>_batch`` over a whole series) are the
reference the banks are tested against; they live with the tests
(``tests/unit/alerts/oracles.py``), not here, because production runs only
the banks.

Input policy: a non-finite value (NaN, ±inf) is *ignored* — it is neither
scored nor remembered, and the state is unchanged; so is a sample whose time
is not after the series' last accepted one (a late or duplicate reading),
because raising inside a stream worker's loop would stall it. Invalid
parameters or saved state raise :class:`~alerts.errors.AnomalyError`.

Warm-up: no detector scores a sample before it has accepted
``min_samples`` samples (the stuck detector needs ``samples`` flat ones by
construction), so a fresh state never alarms at start.
"""

from __future__ import annotations

import base64
import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from alerts.anomaly.result import BankUpdate, DetectorKind
from alerts.errors import AnomalyError

__all__ = [
    "LIVENESS_CODES",
    "MAD_SCALE",
    "NEVER_SEEN",
    "DriftBank",
    "DriftParams",
    "DriftState",
    "EwmaBank",
    "EwmaParams",
    "EwmaState",
    "Liveness",
    "RateBank",
    "RateParams",
    "RateState",
    "RobustZBank",
    "RobustZParams",
    "RobustZState",
    "StuckBank",
    "StuckParams",
    "StuckState",
    "liveness_many",
    "peer_median",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Scales a MAD to the standard deviation of a normal distribution (1 / Φ⁻¹(3/4)).
MAD_SCALE = 1.4826

#: Sentinel for "no time yet" inside banks and for never-seen devices in :func:`liveness_many`.
NEVER_SEEN = int(np.iinfo(np.int64).min)

_STATE_VERSION = 1
# Rows per chunk in the batch robust z-score, so memory stays ~chunk × window floats.
_CHUNK = 8192


# --------------------------------------------------------------------------- helpers


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise AnomalyError(f"{name} must be a finite number > 0, got {value!r}")


def _check_non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise AnomalyError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise AnomalyError(f"{name} must be an integer >= {low}, got {value!r}")


def _load(data: object, kind: DetectorKind) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise AnomalyError("saved state must be a mapping")
    if data.get("v") != _STATE_VERSION or data.get("kind") != kind.value:
        raise AnomalyError(f"saved state is not a v{_STATE_VERSION} {kind.value} state")
    return data


_I32_MAX = 2**31 - 1


def _binary_window(d: Mapping[str, Any]) -> tuple[FloatArray, IntArray]:
    """A robust_z window saved binary (``vb``, ``tb``, ``t0``; see ``RobustZBank.to_dicts``)."""
    try:
        v = np.frombuffer(base64.b64decode(d["vb"], validate=True), dtype="<f8").astype(np.float64)
        t = np.frombuffer(base64.b64decode(d["tb"], validate=True), dtype="<i4").astype(np.int64) + _int(d, "t0")
    except (KeyError, TypeError, ValueError) as exc:
        raise AnomalyError(f"robust_z state has a bad binary window: {exc}") from exc
    if v.size != t.size or not np.all(np.isfinite(v)):
        raise AnomalyError("robust_z state's binary window needs as many finite values as times")
    return v, t


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise AnomalyError(f"state field {key!r} must be an integer")
    return value


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    return None if data.get(key) is None else _int(data, key)


def _float(data: Mapping[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AnomalyError(f"state field {key!r} must be a finite number")
    return float(value)


def _column(values: list[Any], key: str, kind: str) -> npt.NDArray[Any]:
    """One saved-state field over many series, validated like the per-state ``from_dict``."""
    if kind == "time":
        values = [NEVER_SEEN if v is None else v for v in values]
    if kind in ("count", "time"):
        if not all(type(v) is int for v in values):
            raise AnomalyError(f"state field {key!r} must be an integer")
        out = np.asarray(values, dtype=np.int64)
        if kind == "count" and out.size and out.min() < 0:
            raise AnomalyError(f"state field {key!r} must be >= 0")
        return out
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise AnomalyError(f"state field {key!r} must be a finite number")
    arr = np.asarray(values, dtype=np.float64)
    if not bool(np.all(np.isfinite(arr))) or (kind == "nonneg" and arr.size and arr.min() < 0):
        raise AnomalyError(f"state field {key!r} must be a finite number{' >= 0' if kind == 'nonneg' else ''}")
    return arr


class _Bank:
    """Shared plumbing of the vectorised banks: selection and validation of a step,
    and the columnar conversion of many saved states at once (:meth:`from_dicts`, :meth:`to_dicts`)."""

    __slots__ = ("size",)

    #: The detector whose states the bank holds.
    KIND: ClassVar[DetectorKind]
    #: Version of the saved state (the compact row's second element).
    VERSION: ClassVar[int] = _STATE_VERSION
    #: ``(array attribute, state key, column type)`` per array; column types are ``count``
    #: (int >= 0), ``time`` (int or None, stored as :data:`NEVER_SEEN`), ``float`` and
    #: ``nonneg`` (float >= 0). Empty for banks whose state is not a row of scalars.
    FIELDS: ClassVar[tuple[tuple[str, str, str], ...]] = ()

    def __init__(self, size: int) -> None:
        _check_int("size", size, 0)
        self.size = size

    @classmethod
    def from_dicts(cls, dicts: Sequence[Mapping[str, Any] | Sequence[Any] | None], params: Any = None) -> Any:
        """A bank whose series ``i`` continues from the saved ``dicts[i]`` (None: a fresh series).

        Same result as ``from_states([State.from_dict(d) …])`` without building a
        dataclass per series: each field is converted as one column, which is what
        makes loading the state of a whole stream batch cheap. A saved state is a
        dict (:meth:`to_dict`) or a compact row (:meth:`to_dicts` with ``compact``).

        Raises:
            AnomalyError: if any dict is not a valid saved state of this detector.
        """
        # Every concrete bank takes (size, params); RateBank requires params.
        bank = cls(len(dicts), params) if params is not None else cls(len(dicts))  # type: ignore[call-arg]
        rows = [i for i, d in enumerate(dicts) if d is not None]
        if not rows:
            return bank
        idx = np.asarray(rows, dtype=np.intp)
        present: list[Any] = [d for d in dicts if d is not None]
        width = 2 + len(cls.FIELDS)
        if all(type(d) is list or type(d) is tuple for d in present):
            # The compact form (to_dicts(compact=True)): [kind, version, field, …], fields in FIELDS order.
            for d in present:
                if len(d) != width or d[0] != cls.KIND.value or d[1] != _STATE_VERSION:
                    raise AnomalyError(f"saved state is not a v{_STATE_VERSION} {cls.KIND.value} state row")
            columns = list(zip(*present, strict=True))
            for pos, (attr, key, kind) in enumerate(cls.FIELDS, start=2):
                getattr(bank, attr)[idx] = _column(list(columns[pos]), key, kind)
            return bank
        loaded = [_load(d, cls.KIND) for d in present]
        for attr, key, kind in cls.FIELDS:
            getattr(bank, attr)[idx] = _column([d.get(key) for d in loaded], key, kind)
        return bank

    def to_dicts(self, index: npt.ArrayLike | None = None, *, compact: bool = False) -> list[Any]:
        """Every series' state (or those in ``index``, in its order) as :meth:`to_dict` of its
        state would give it, in one pass.

        With ``compact``, each state is a row instead, ``(kind, version, field, …)`` in
        :attr:`FIELDS` order: what the stream worker persists for every series of every
        batch, at a fraction of the cost and size (JSON without the keys).
        :meth:`from_dicts` reads both forms.
        """
        sel = slice(None) if index is None else np.asarray(index, dtype=np.intp)
        n = self.size if index is None else len(sel)  # type: ignore[arg-type]
        keys = ["kind", "v"]
        cols: list[list[Any]] = [[self.KIND.value] * n, [_STATE_VERSION] * n]
        for attr, key, kind in self.FIELDS:
            values = getattr(self, attr)[sel].tolist()
            keys.append(key)
            cols.append([None if v == NEVER_SEEN else v for v in values] if kind == "time" else values)
        if compact:
            return list(zip(*cols, strict=True))
        return [dict(zip(keys, row, strict=True)) for row in zip(*cols, strict=True)]

    def packed(self, index: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The states of the series in ``index`` as 64-bit words, a column per :attr:`FIELDS`
        entry: integers as they are, floats as their IEEE 754 bits (every bit kept).

        What the stream worker persists for the detectors of a series, base64 in one string
        (:mod:`alerts.anomaly.stream`); :meth:`row_from_packed` reads a row back.
        """
        sel = np.asarray(index, dtype=np.intp)
        out = np.empty((sel.size, len(self.FIELDS)), dtype=np.int64)
        for c, (attr, _key, kind) in enumerate(self.FIELDS):
            col = getattr(self, attr)[sel]
            out[:, c] = col.view(np.int64) if kind in ("float", "nonneg") else col
        return out

    @classmethod
    def from_packed(cls, words: npt.NDArray[np.int64], params: Any = None) -> Any:
        """A bank whose series ``i`` continues from the packed state ``words[i]`` (a row of
        :meth:`packed`, of this version): the states of many series loaded at once, checked as
        :meth:`from_dicts` checks them.

        Raises:
            AnomalyError: ``words`` is not a matrix of packed states of this detector, or a
                state holds a value its field does not allow.
        """
        if words.ndim != 2 or words.shape[1] != len(cls.FIELDS):
            raise AnomalyError(f"packed {cls.KIND.value} states have {len(cls.FIELDS)} words each")
        n = words.shape[0]
        bank = cls(n, params) if params is not None else cls(n)  # type: ignore[call-arg]
        for c, (attr, key, kind) in enumerate(cls.FIELDS):
            col = np.ascontiguousarray(words[:, c], dtype=np.int64)
            if kind in ("float", "nonneg"):
                arr = col.view(np.float64)
                if not bool(np.all(np.isfinite(arr))) or (kind == "nonneg" and n and arr.min() < 0):
                    raise AnomalyError(f"state field {key!r} must be a finite number")
                getattr(bank, attr)[:] = arr
            else:
                if kind == "count" and n and col.min() < 0:
                    raise AnomalyError(f"state field {key!r} must be >= 0")
                getattr(bank, attr)[:] = col
        return bank

    @classmethod
    def row_from_packed(cls, words: npt.NDArray[np.int64], version: int) -> tuple[Any, ...]:
        """The compact row (:meth:`to_dicts` with ``compact``) of one state of :meth:`packed`,
        saved at state ``version``; :meth:`from_dicts` checks the version and the values.

        Raises:
            AnomalyError: ``words`` is not one packed state of this detector.
        """
        if words.shape != (len(cls.FIELDS),):
            raise AnomalyError(f"a packed {cls.KIND.value} state has {len(cls.FIELDS)} words, not {words.shape}")
        floats = words.view(np.float64).tolist()
        ints = words.tolist()
        row: list[Any] = [cls.KIND.value, version]
        for c, (_attr, _key, kind) in enumerate(cls.FIELDS):
            if kind in ("float", "nonneg"):
                row.append(floats[c])
            elif kind == "time":
                row.append(None if ints[c] == NEVER_SEEN else ints[c])
            else:
                row.append(ints[c])
        return tuple(row)

    def _arrays(self) -> tuple[str, ...]:
        # Every slot of a concrete bank but its parameters is an array with a row per series.
        return tuple(a for a in type(self).__slots__ if a != "params")

    def grow(self, size: int) -> None:
        """Add fresh series (warming up) up to ``size`` rows; existing rows keep their state."""
        if size <= self.size:
            return
        fresh = type(self)(size - self.size, self.params)  # type: ignore[call-arg,attr-defined]
        for attr in self._arrays():
            setattr(self, attr, np.concatenate([getattr(self, attr), getattr(fresh, attr)]))
        self.size = size

    def put_rows(self, rows: npt.ArrayLike, other: _Bank) -> None:
        """Overwrite series ``rows`` with series ``0 … len(rows) - 1`` of ``other`` (same detector)."""
        idx = np.asarray(rows, dtype=np.intp)
        for attr in self._arrays():
            getattr(self, attr)[idx] = getattr(other, attr)

    def _select(
        self, t: npt.ArrayLike, x: npt.ArrayLike, index: npt.ArrayLike | None
    ) -> tuple[npt.NDArray[np.intp], IntArray, FloatArray]:
        if index is None:
            sel = np.arange(self.size, dtype=np.intp)
        else:
            sel = np.asarray(index)
            if sel.ndim != 1 or (sel.size and not np.issubdtype(sel.dtype, np.integer)):
                raise AnomalyError("index must be a 1-D integer array")
            sel = sel.astype(np.intp, copy=False)
            if sel.size and (sel.min() < 0 or sel.max() >= self.size):
                raise AnomalyError("index out of range")
            # Fancy-index assignment with repeated indices keeps an arbitrary one; refuse instead.
            if np.unique(sel).size != sel.size:
                raise AnomalyError("index must not repeat a series")
        xs = np.asarray(x, dtype=np.float64)
        if xs.shape != sel.shape:
            raise AnomalyError(f"x must have shape {sel.shape}, got {xs.shape}")
        ts = np.asarray(t)
        if ts.size and not np.issubdtype(ts.dtype, np.integer):
            raise AnomalyError("t must be integer epoch seconds")
        try:
            tt = np.broadcast_to(ts, sel.shape).astype(np.int64)
        except ValueError as exc:
            raise AnomalyError(f"t must be a scalar or have shape {sel.shape}") from exc
        return sel, tt, xs


def _opt_time(value: np.int64) -> int | None:
    return None if int(value) == NEVER_SEEN else int(value)


def _time_or_never(value: int | None) -> int:
    return NEVER_SEEN if value is None else value


# --------------------------------------------------------------------------- robust z-score


@dataclass(frozen=True, slots=True)
class RobustZParams:
    """Robust z-score against a rolling median / MAD.

    Attributes:
        window: How many previous accepted samples form the baseline (count, not time).
        k: Fire when ``|x − median| / scale > k``.
        min_samples: Warm-up: samples needed in the window before scoring.
        min_scale: Floor of the scale, in metric units (set it to the sensor's
            resolution). With the default 0 a window whose MAD is 0 (over half
            of it identical) is not scored at all, so quantised or idle sensors
            never alarm on their first change.
    """

    window: int = 90
    k: float = 6.0
    min_samples: int = 30
    min_scale: float = 0.0

    def __post_init__(self) -> None:
        _check_int("window", self.window, 3)
        _check_int("min_samples", self.min_samples, 3)
        if self.min_samples > self.window:
            raise AnomalyError("min_samples cannot exceed window")
        _check_positive("k", self.k)
        _check_non_negative("min_scale", self.min_scale)


@dataclass(frozen=True, slots=True)
class RobustZState:
    """The last ``window`` accepted samples, oldest first, and the last accepted time."""

    values: tuple[float, ...] = ()
    times: tuple[int, ...] = ()
    last_t: int | None = None

    def __post_init__(self) -> None:
        if len(self.values) != len(self.times):
            raise AnomalyError("robust_z state needs one time per value")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict for persistence."""
        return {
            "v": _STATE_VERSION,
            "kind": DetectorKind.ROBUST_Z.value,
            "values": list(self.values),
            "times": list(self.times),
            "last_t": self.last_t,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RobustZState:
        """Rebuild from :meth:`to_dict` output; raises AnomalyError if malformed."""
        d = _load(data, DetectorKind.ROBUST_Z)
        vals, times = d.get("values"), d.get("times")
        if not isinstance(vals, list | tuple) or not isinstance(times, list | tuple):
            raise AnomalyError("robust_z state needs lists 'values' and 'times'")
        values = tuple(_float({"x": v}, "x") for v in vals)
        stamps = tuple(_int({"t": v}, "t") for v in times)
        return cls(values=values, times=stamps, last_t=_opt_int(d, "last_t"))


def _sorted_median(srt: FloatArray, counts: IntArray) -> FloatArray:
    """Median of each row of ``srt`` (sorted, NaN padding last) over its first ``counts`` entries.

    ``(a + b) / 2`` of the two middle order statistics — for an odd count
    ``a == b`` and this is exact — so every form computes bit-identical medians.
    """
    c = np.maximum(counts, 1)
    lo = ((c - 1) // 2)[:, None]
    hi = (c // 2)[:, None]
    a = np.take_along_axis(srt, lo, axis=1)[:, 0]
    b = np.take_along_axis(srt, hi, axis=1)[:, 0]
    return np.asarray((a + b) / 2, dtype=np.float64)


def _row_stats(rows: FloatArray, counts: IntArray) -> tuple[FloatArray, FloatArray]:
    """Median and MAD-based scale of each row (NaN marks empty slots)."""
    med = _sorted_median(np.sort(rows, axis=1), counts)
    dev = np.abs(rows - med[:, None])
    mad = _sorted_median(np.sort(dev, axis=1), counts)
    return med, MAD_SCALE * mad


def _robust_scores(
    med: FloatArray, scale: FloatArray, x: FloatArray, p: RobustZParams
) -> tuple[BoolArray, FloatArray, FloatArray]:
    s = np.maximum(scale, p.min_scale)
    scored = s > 0
    score = np.full(x.shape, np.nan)
    score[scored] = np.abs(x[scored] - med[scored]) / s[scored]
    baseline = np.where(scored, med, np.nan)
    return scored & (score > p.k), score, baseline


class RobustZBank(_Bank):
    """Robust z-score over many series at once: a ``size × window`` ring buffer.

    Cost per step: two row sorts of ``window`` floats per series updated.
    """

    __slots__ = ("_buf", "_count", "_last_t", "_pos", "_tbuf", "params")
    KIND = DetectorKind.ROBUST_Z
    FIELDS = ()

    def __init__(self, size: int, params: RobustZParams | None = None) -> None:
        super().__init__(size)
        self.params = params or RobustZParams()
        w = self.params.window
        self._buf = np.full((size, w), np.nan)
        self._tbuf = np.zeros((size, w), dtype=np.int64)
        self._count = np.zeros(size, dtype=np.int64)
        self._pos = np.zeros(size, dtype=np.int64)
        self._last_t = np.full(size, NEVER_SEEN, dtype=np.int64)

    @classmethod
    def from_states(cls, states: Sequence[RobustZState], params: RobustZParams | None = None) -> RobustZBank:
        """A bank whose series ``i`` continues from ``states[i]``."""
        bank = cls(len(states), params)
        w = bank.params.window
        for i, st in enumerate(states):
            vals, times = st.values[-w:], st.times[-w:]
            n = len(vals)
            bank._buf[i, :n] = vals
            bank._tbuf[i, :n] = times
            bank._count[i] = n
            bank._pos[i] = n % w
            bank._last_t[i] = _time_or_never(st.last_t)
        return bank

    @classmethod
    def from_dicts(cls, dicts: Sequence[Mapping[str, Any] | Sequence[Any] | None], params: Any = None) -> RobustZBank:
        """A bank from saved states (None: a fresh series); see :meth:`_Bank.from_dicts`."""
        bank = cls(len(dicts), params)
        w = bank.params.window
        for i, raw in enumerate(dicts):
            if raw is None:
                continue
            d = _load(raw, cls.KIND)
            if "vb" in d:
                v, t = _binary_window(d)
                v, t = v[-w:], t[-w:]
            else:
                vals, times = d.get("values"), d.get("times")
                if not isinstance(vals, list | tuple) or not isinstance(times, list | tuple) or len(vals) != len(times):
                    raise AnomalyError("robust_z state needs lists 'values' and 'times' of one length")
                v = _column(list(vals[-w:]), "values", "float")
                t = _column(list(times[-w:]), "times", "time")
            n = v.size
            bank._buf[i, :n], bank._tbuf[i, :n] = v, t
            bank._count[i], bank._pos[i] = n, n % w
            bank._last_t[i] = _time_or_never(_opt_int(d, "last_t"))
        return bank

    def to_dicts(self, index: npt.ArrayLike | None = None, *, compact: bool = False) -> list[Any]:
        """Every series' state (or those in ``index``, in its order) as ``state(i).to_dict()``
        would give it, in one pass.

        With ``compact`` (what the stream worker persists every batch), a full window is
        binary instead of two lists: ``vb``, the values as little-endian float64, and
        ``tb``, the times as little-endian int32 seconds after ``t0``, both base64. The
        window is the bulk of a device's state document (90 samples per metric), and
        formatting 180 numbers per series per batch as JSON was most of the cost of
        saving it. :meth:`from_dicts` reads both forms; the values are the same bits.
        """
        w = self.params.window
        sel = slice(None) if index is None else np.asarray(index, dtype=np.intp)
        count, pos = self._count[sel], self._pos[sel]
        order = (pos[:, None] - count[:, None] + np.arange(w)[None, :]) % w
        if compact:
            return self._binary(
                count,
                np.take_along_axis(self._buf[sel], order, axis=1),
                np.take_along_axis(self._tbuf[sel], order, axis=1),
                self._last_t[sel],
            )
        vals = np.take_along_axis(self._buf[sel], order, axis=1).tolist()
        times = np.take_along_axis(self._tbuf[sel], order, axis=1).tolist()
        return [
            {
                "v": _STATE_VERSION,
                "kind": self.KIND.value,
                "values": vals[i][:n],
                "times": times[i][:n],
                "last_t": None if last == NEVER_SEEN else last,
            }
            for i, (n, last) in enumerate(zip(count.tolist(), self._last_t[sel].tolist(), strict=True))
        ]

    def _binary(self, count: IntArray, vals: FloatArray, times: IntArray, last_t: IntArray) -> list[dict[str, Any]]:
        """Compact states: full windows binary, the rest (warming up) as lists."""
        w = self.params.window
        full = count == w
        t0 = times[:, 0]
        deltas = times - t0[:, None]
        # int32 seconds cover 68 years of window; a window that does not fit stays lists.
        full &= (deltas.max(axis=1, initial=0) <= _I32_MAX) & (deltas.min(axis=1, initial=0) >= 0)
        vb = vals.astype("<f8", copy=False).tobytes()
        tb = deltas.astype("<i4").tobytes()
        nv, nt = 8 * w, 4 * w
        out: list[dict[str, Any]] = []
        kind = self.KIND.value
        for i, (n, last, is_full, first) in enumerate(
            zip(count.tolist(), last_t.tolist(), full.tolist(), t0.tolist(), strict=True)
        ):
            last_t_ = None if last == NEVER_SEEN else last
            if is_full:
                out.append(
                    {
                        "v": _STATE_VERSION,
                        "kind": kind,
                        "t0": first,
                        "vb": base64.b64encode(vb[i * nv : (i + 1) * nv]).decode(),
                        "tb": base64.b64encode(tb[i * nt : (i + 1) * nt]).decode(),
                        "last_t": last_t_,
                    }
                )
            else:
                out.append(
                    {
                        "v": _STATE_VERSION,
                        "kind": kind,
                        "values": vals[i, :n].tolist(),
                        "times": times[i, :n].tolist(),
                        "last_t": last_t_,
                    }
                )
        return out

    def state(self, i: int) -> RobustZState:
        """Series ``i``'s state, as the online detector would hold it."""
        w, n = self.params.window, int(self._count[i])
        order = (int(self._pos[i]) - n + np.arange(n)) % w
        return RobustZState(
            tuple(float(v) for v in self._buf[i, order]),
            tuple(int(v) for v in self._tbuf[i, order]),
            _opt_time(self._last_t[i]),
        )

    def window_start(self, index: npt.ArrayLike) -> IntArray:
        """Per series in ``index``: the oldest time in its window, the start of the
        window its next sample is judged on (:data:`NEVER_SEEN` while empty)."""
        sel = np.asarray(index, dtype=np.intp)
        n = self._count[sel]
        oldest = self._tbuf[sel, (self._pos[sel] - n) % self.params.window]
        return np.where(n > 0, oldest, NEVER_SEEN).astype(np.int64)

    def update(self, t: npt.ArrayLike, x: npt.ArrayLike, index: npt.ArrayLike | None = None) -> BankUpdate:
        """One sample for each series in ``index`` (default: all, in order).

        Args:
            t: Epoch seconds, a scalar or one per selected series.
            x: One value per selected series; non-finite values are ignored.
            index: Which series the samples belong to (no repeats).
        """
        p = self.params
        sel, tt, xs = self._select(t, x, index)
        ok = np.isfinite(xs) & (tt > self._last_t[sel])
        counts = self._count[sel]
        fired = np.zeros(sel.size, dtype=np.bool_)
        score = np.full(sel.size, np.nan)
        baseline = np.full(sel.size, np.nan)
        scoring = ok & (counts >= p.min_samples)
        if scoring.any():
            rows = self._buf[sel[scoring]]
            med, scale = _row_stats(rows, counts[scoring])
            fired[scoring], score[scoring], baseline[scoring] = _robust_scores(med, scale, xs[scoring], p)
        w = sel[ok]
        pos = self._pos[w]
        self._buf[w, pos] = xs[ok]
        self._tbuf[w, pos] = tt[ok]
        self._pos[w] = (pos + 1) % p.window
        self._count[w] = np.minimum(self._count[w] + 1, p.window)
        self._last_t[w] = tt[ok]
        return BankUpdate(fired, score, baseline)


# --------------------------------------------------------------------------- EWMA control chart


@dataclass(frozen=True, slots=True)
class EwmaParams:
    """EWMA control chart with an EWMA'd variance.

    Attributes:
        lam: Smoothing weight of the newest sample, ``0 < lam <= 1``; memory ≈ ``2/lam − 1`` samples.
        sigmas: Fire when ``|x − mean| > sigmas · sd`` (the L of the chart).
        min_samples: Warm-up: samples accepted before scoring. Until then the
            weight is ``max(lam, 1/n)``, i.e. a plain running mean/variance,
            so the baseline is sound by the time scoring starts.
        min_sigma: Floor of the standard deviation, in metric units. With the
            default 0 a series with zero variance is not scored.
        clip: After warm-up each sample is winsorised to ``mean ± clip · sd``
            before it updates the baseline, so an outlier, or the first
            samples of a noise burst, inflate the variance by at most a factor
            ``(1 − lam)(1 + lam · clip²)`` per sample instead of masking the
            rest of the burst; a lasting level shift is still absorbed.
    """

    lam: float = 0.05
    sigmas: float = 5.0
    min_samples: int = 30
    min_sigma: float = 0.0
    clip: float = 3.0

    def __post_init__(self) -> None:
        _check_positive("lam", self.lam)
        if self.lam > 1:
            raise AnomalyError("lam must be <= 1")
        _check_positive("sigmas", self.sigmas)
        _check_int("min_samples", self.min_samples, 2)
        _check_non_negative("min_sigma", self.min_sigma)
        _check_positive("clip", self.clip)


@dataclass(frozen=True, slots=True)
class EwmaState:
    """Samples accepted, EWMA mean and variance, last accepted time."""

    n: int = 0
    mean: float = 0.0
    var: float = 0.0
    last_t: int | None = None

    def __post_init__(self) -> None:
        if self.n < 0 or self.var < 0:
            raise AnomalyError("ewma state needs n >= 0 and var >= 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict for persistence."""
        return {
            "v": _STATE_VERSION,
            "kind": DetectorKind.EWMA.value,
            "n": self.n,
            "mean": self.mean,
            "var": self.var,
            "last_t": self.last_t,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EwmaState:
        """Rebuild from :meth:`to_dict` output; raises AnomalyError if malformed."""
        d = _load(data, DetectorKind.EWMA)
        return cls(_int(d, "n"), _float(d, "mean"), _float(d, "var"), _opt_int(d, "last_t"))


class EwmaBank(_Bank):
    """EWMA chart over many series at once: four arrays, O(1) per series per step."""

    __slots__ = ("_last_t", "_mean", "_n", "_var", "params")
    KIND = DetectorKind.EWMA
    FIELDS = (
        ("_n", "n", "count"),
        ("_mean", "mean", "float"),
        ("_var", "var", "nonneg"),
        ("_last_t", "last_t", "time"),
    )

    def __init__(self, size: int, params: EwmaParams | None = None) -> None:
        super().__init__(size)
        self.params = params or EwmaParams()
        self._n = np.zeros(size, dtype=np.int64)
        self._mean = np.zeros(size)
        self._var = np.zeros(size)
        self._last_t = np.full(size, NEVER_SEEN, dtype=np.int64)

    @classmethod
    def from_states(cls, states: Sequence[EwmaState], params: EwmaParams | None = None) -> EwmaBank:
        """A bank whose series ``i`` continues from ``states[i]``."""
        bank = cls(len(states), params)
        for i, st in enumerate(states):
            bank._n[i], bank._mean[i], bank._var[i] = st.n, st.mean, st.var
            bank._last_t[i] = _time_or_never(st.last_t)
        return bank

    def state(self, i: int) -> EwmaState:
        """Series ``i``'s state, as the online detector would hold it."""
        return EwmaState(int(self._n[i]), float(self._mean[i]), float(self._var[i]), _opt_time(self._last_t[i]))

    def window_start(self, index: npt.ArrayLike) -> IntArray:
        """Per series in ``index``: the previous accepted time (the baseline's as-of time)."""
        return np.asarray(self._last_t[np.asarray(index, dtype=np.intp)], dtype=np.int64)

    def update(self, t: npt.ArrayLike, x: npt.ArrayLike, index: npt.ArrayLike | None = None) -> BankUpdate:
        """One sample for each series in ``index`` (default: all); see :meth:`RobustZBank.update`."""
        p = self.params
        sel, tt, xs = self._select(t, x, index)
        ok = np.isfinite(xs) & (tt > self._last_t[sel])
        n, mean, var = self._n[sel], self._mean[sel], self._var[sel]
        # Ignored rows compute on x = mean, so ±inf never meets arithmetic that would warn.
        xs = np.where(ok, xs, mean)
        sd = np.maximum(np.sqrt(var), p.min_sigma)
        scored = ok & (n >= p.min_samples) & (sd > 0)
        score = np.full(sel.size, np.nan)
        score[scored] = np.abs(xs[scored] - mean[scored]) / sd[scored]
        fired = scored & (score > p.sigmas)
        baseline = np.where(scored, mean, np.nan)
        xu = np.where(scored, np.clip(xs, mean - p.clip * sd, mean + p.clip * sd), xs)
        alpha = np.maximum(p.lam, 1.0 / (n + 1))
        diff = xu - mean
        incr = alpha * diff
        w = sel[ok]
        self._mean[w] = (mean + incr)[ok]
        self._var[w] = ((1 - alpha) * (var + diff * incr))[ok]
        self._n[w] = n[ok] + 1
        self._last_t[w] = tt[ok]
        return BankUpdate(fired, score, baseline)


# --------------------------------------------------------------------------- spikes: rate of change


@dataclass(frozen=True, slots=True)
class RateParams:
    """Spike detection by rate of change ``|Δx / Δt|``.

    Attributes:
        max_rate: The physically plausible limit for this metric, in metric
            units per second (per metric; there is no sane universal default).
        min_samples: Warm-up: samples accepted before scoring (>= 1, a
            previous sample is needed).
        hold: After a firing sample the reference stays at the last normal
            sample for up to ``hold`` further firing samples, so the return
            from a spike is not flagged as a second spike; a step change is
            accepted as the new level after that.
    """

    max_rate: float
    min_samples: int = 1
    hold: int = 3

    def __post_init__(self) -> None:
        _check_positive("max_rate", self.max_rate)
        _check_int("min_samples", self.min_samples, 1)
        _check_int("hold", self.hold, 0)


@dataclass(frozen=True, slots=True)
class RateState:
    """Samples accepted, the reference sample, how long it has been held, last time."""

    n: int = 0
    ref_t: int | None = None
    ref_x: float = 0.0
    held: int = 0
    last_t: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict for persistence."""
        return {
            "v": _STATE_VERSION,
            "kind": DetectorKind.RATE.value,
            "n": self.n,
            "ref_t": self.ref_t,
            "ref_x": self.ref_x,
            "held": self.held,
            "last_t": self.last_t,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateState:
        """Rebuild from :meth:`to_dict` output; raises AnomalyError if malformed."""
        d = _load(data, DetectorKind.RATE)
        return cls(_int(d, "n"), _opt_int(d, "ref_t"), _float(d, "ref_x"), _int(d, "held"), _opt_int(d, "last_t"))


class RateBank(_Bank):
    """Rate-of-change spikes over many series at once; O(1) per series per step."""

    __slots__ = ("_held", "_last_t", "_n", "_ref_t", "_ref_x", "params")
    KIND = DetectorKind.RATE
    FIELDS = (
        ("_n", "n", "count"),
        ("_ref_t", "ref_t", "time"),
        ("_ref_x", "ref_x", "float"),
        ("_held", "held", "count"),
        ("_last_t", "last_t", "time"),
    )

    def __init__(self, size: int, params: RateParams) -> None:
        super().__init__(size)
        self.params = params
        self._n = np.zeros(size, dtype=np.int64)
        self._ref_t = np.full(size, NEVER_SEEN, dtype=np.int64)
        self._ref_x = np.zeros(size)
        self._held = np.zeros(size, dtype=np.int64)
        self._last_t = np.full(size, NEVER_SEEN, dtype=np.int64)

    @classmethod
    def from_states(cls, states: Sequence[RateState], params: RateParams) -> RateBank:
        """A bank whose series ``i`` continues from ``states[i]``."""
        bank = cls(len(states), params)
        for i, st in enumerate(states):
            bank._n[i], bank._ref_x[i], bank._held[i] = st.n, st.ref_x, st.held
            bank._ref_t[i] = _time_or_never(st.ref_t)
            bank._last_t[i] = _time_or_never(st.last_t)
        return bank

    def state(self, i: int) -> RateState:
        """Series ``i``'s state, as the online detector would hold it."""
        return RateState(
            int(self._n[i]),
            _opt_time(self._ref_t[i]),
            float(self._ref_x[i]),
            int(self._held[i]),
            _opt_time(self._last_t[i]),
        )

    def window_start(self, index: npt.ArrayLike) -> IntArray:
        """Per series in ``index``: the reference sample's time its next sample is compared with."""
        return np.asarray(self._ref_t[np.asarray(index, dtype=np.intp)], dtype=np.int64)

    def update(self, t: npt.ArrayLike, x: npt.ArrayLike, index: npt.ArrayLike | None = None) -> BankUpdate:
        """One sample for each series in ``index`` (default: all); see :meth:`RobustZBank.update`."""
        p = self.params
        sel, tt, xs = self._select(t, x, index)
        ok = np.isfinite(xs) & (tt > self._last_t[sel])
        n, ref_t, ref_x, held = self._n[sel], self._ref_t[sel], self._ref_x[sel], self._held[sel]
        scored = ok & (n >= p.min_samples) & (ref_t != NEVER_SEEN)
        # Unscored rows divide by 1: subtracting the NEVER_SEEN sentinel would overflow int64.
        dt = np.where(scored, tt - np.where(scored, ref_t, tt - 1), 1)
        score = np.full(sel.size, np.nan)
        score[scored] = np.abs(xs[scored] - ref_x[scored]) / dt[scored]
        fired = scored & (score > p.max_rate)
        baseline = np.where(scored, ref_x, np.nan)
        keep = fired & (held < p.hold)
        move = ok & ~keep
        self._n[sel[ok]] = n[ok] + 1
        self._held[sel[keep]] = held[keep] + 1
        self._held[sel[move]] = 0
        self._ref_t[sel[move]] = tt[move]
        self._ref_x[sel[move]] = xs[move]
        self._last_t[sel[ok]] = tt[ok]
        return BankUpdate(fired, score, baseline)


# --------------------------------------------------------------------------- stuck / flat-lined


@dataclass(frozen=True, slots=True)
class StuckParams:
    """Stuck (flat-lined) sensor.

    Flatness is measured by the *range* of the current run (max − min), which
    needs O(1) state and implies a variance of at most ``eps² / 4``.

    Attributes:
        samples: Fire once the run of flat samples is this long (N expected
            samples; pick N × cadence ≈ the longest plausible real plateau).
        eps: Largest range still called flat, in metric units (0: identical values).
    """

    samples: int = 30
    eps: float = 0.0

    def __post_init__(self) -> None:
        _check_int("samples", self.samples, 2)
        _check_non_negative("eps", self.eps)


@dataclass(frozen=True, slots=True)
class StuckState:
    """The current flat run: length, min, max, start time; and the last accepted time."""

    run_len: int = 0
    run_min: float = 0.0
    run_max: float = 0.0
    run_start: int | None = None
    last_t: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict for persistence."""
        return {
            "v": _STATE_VERSION,
            "kind": DetectorKind.STUCK.value,
            "run_len": self.run_len,
            "run_min": self.run_min,
            "run_max": self.run_max,
            "run_start": self.run_start,
            "last_t": self.last_t,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StuckState:
        """Rebuild from :meth:`to_dict` output; raises AnomalyError if malformed."""
        d = _load(data, DetectorKind.STUCK)
        return cls(
            _int(d, "run_len"),
            _float(d, "run_min"),
            _float(d, "run_max"),
            _opt_int(d, "run_start"),
            _opt_int(d, "last_t"),
        )


class StuckBank(_Bank):
    """Stuck-sensor detection over many series at once; O(1) per series per step."""

    __slots__ = ("_last_t", "_len", "_max", "_min", "_start", "params")
    KIND = DetectorKind.STUCK
    FIELDS = (
        ("_len", "run_len", "count"),
        ("_min", "run_min", "float"),
        ("_max", "run_max", "float"),
        ("_start", "run_start", "time"),
        ("_last_t", "last_t", "time"),
    )

    def __init__(self, size: int, params: StuckParams | None = None) -> None:
        super().__init__(size)
        self.params = params or StuckParams()
        self._len = np.zeros(size, dtype=np.int64)
        self._min = np.zeros(size)
        self._max = np.zeros(size)
        self._start = np.full(size, NEVER_SEEN, dtype=np.int64)
        self._last_t = np.full(size, NEVER_SEEN, dtype=np.int64)

    @classmethod
    def from_states(cls, states: Sequence[StuckState], params: StuckParams | None = None) -> StuckBank:
        """A bank whose series ``i`` continues from ``states[i]``."""
        bank = cls(len(states), params)
        for i, st in enumerate(states):
            bank._len[i], bank._min[i], bank._max[i] = st.run_len, st.run_min, st.run_max
            bank._start[i] = _time_or_never(st.run_start)
            bank._last_t[i] = _time_or_never(st.last_t)
        return bank

    def state(self, i: int) -> StuckState:
        """Series ``i``'s state, as the online detector would hold it."""
        return StuckState(
            int(self._len[i]),
            float(self._min[i]),
            float(self._max[i]),
            _opt_time(self._start[i]),
            _opt_time(self._last_t[i]),
        )

    def update(self, t: npt.ArrayLike, x: npt.ArrayLike, index: npt.ArrayLike | None = None) -> BankUpdate:
        """One sample for each series in ``index`` (default: all); see :meth:`RobustZBank.update`."""
        p = self.params
        sel, tt, xs = self._select(t, x, index)
        ok = np.isfinite(xs) & (tt > self._last_t[sel])
        run_len, run_min, run_max = self._len[sel], self._min[sel], self._max[sel]
        xs = np.where(ok, xs, run_min)
        lo, hi = np.minimum(run_min, xs), np.maximum(run_max, xs)
        extend = ok & (run_len > 0) & (self._start[sel] != NEVER_SEEN) & (hi - lo <= p.eps)
        restart = ok & ~extend
        new_len = np.where(extend, run_len + 1, 1)
        new_min = np.where(extend, lo, xs)
        new_max = np.where(extend, hi, xs)
        score = np.where(ok, new_len.astype(np.float64), np.nan)
        baseline = np.where(ok, (new_min + new_max) / 2, np.nan)
        fired = ok & (new_len >= p.samples)
        w = sel[ok]
        self._len[w], self._min[w], self._max[w] = new_len[ok], new_min[ok], new_max[ok]
        self._start[sel[restart]] = tt[restart]
        self._last_t[w] = tt[ok]
        return BankUpdate(fired, score, baseline)


# --------------------------------------------------------------------------- drift against peers


@dataclass(frozen=True, slots=True)
class DriftParams:
    """Drift of a device against the median of similar sensors nearby (two-sided CUSUM).

    The residual ``r = x − peer median`` is averaged over blocks of ``block``
    samples. Sensor noise is autocorrelated (a per-sample CUSUM on it
    random-walks into false alarms); block means ``block`` samples apart are
    close to independent, which is what CUSUM assumes. The mean and standard
    deviation of the first ``min_blocks`` block means are learnt (so a
    device's constant offset from its peers is not drift) and then frozen;
    each later block mean ``m`` gives ``z = (m − mean) / sd`` and
    ``S⁺ = max(0, S⁺ + z − k)``, ``S⁻ = max(0, S⁻ − z − k)``.
    The detector fires on every sample while ``S⁺`` or ``S⁻`` exceeds ``h``.

    Attributes:
        k: CUSUM allowance, in block-mean standard deviations (half the
            smallest shift worth detecting). Drift grows, so a large
            allowance costs little delay and buys robustness to the
            residual autocorrelation and to a short warm-up's noisy sd.
        h: Decision interval, in the same units.
        block: Samples per block; pick about the noise's correlation time
            (30 at a 60 s cadence: half an hour).
        min_blocks: Warm-up, in blocks: the detector scores nothing before
            ``block · min_blocks`` samples.
        min_sigma: Floor of the block-mean standard deviation, in metric units.
        cap: ``S`` is capped at ``cap · h`` so the alarm clears within
            ``~(cap − 1) · h / k`` blocks once the device is recalibrated.
        min_peers: Fewest finite peer values for a peer median (else the
            timestep is skipped); see :func:`peer_median`.
    """

    k: float = 2.0
    h: float = 8.0
    block: int = 30
    min_blocks: int = 24
    min_sigma: float = 0.0
    cap: float = 2.0
    min_peers: int = 3

    def __post_init__(self) -> None:
        _check_non_negative("k", self.k)
        _check_positive("h", self.h)
        _check_int("block", self.block, 1)
        _check_int("min_blocks", self.min_blocks, 2)
        _check_non_negative("min_sigma", self.min_sigma)
        if not (isinstance(self.cap, int | float) and math.isfinite(self.cap) and self.cap >= 1):
            raise AnomalyError("cap must be a finite number >= 1")
        _check_int("min_peers", self.min_peers, 1)

    @property
    def warmup(self) -> int:
        """Samples accepted before the first score."""
        return self.block * self.min_blocks


@dataclass(frozen=True, slots=True)
class DriftState:
    """Learnt offset (Welford over block means), the open block, the CUSUM sums, last time.

    Attributes:
        n: Block means learnt (stops at ``min_blocks``).
        mean: Mean of the learnt block means (the device's normal offset).
        m2: Welford sum of squares of the learnt block means.
        b_sum: Sum of residuals in the open block.
        b_n: Residuals in the open block.
        b_start: Time of the open block's first sample.
        s_pos: Upward CUSUM.
        s_neg: Downward CUSUM.
        pos_start: Start of the block where ``s_pos`` last rose from 0.
        neg_start: Same for ``s_neg``.
        last_t: Last accepted time.
    """

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    b_sum: float = 0.0
    b_n: int = 0
    b_start: int | None = None
    s_pos: float = 0.0
    s_neg: float = 0.0
    pos_start: int | None = None
    neg_start: int | None = None
    last_t: int | None = None

    def __post_init__(self) -> None:
        if self.n < 0 or self.b_n < 0 or self.m2 < 0 or self.s_pos < 0 or self.s_neg < 0:
            raise AnomalyError("drift state needs n, b_n, m2, s_pos, s_neg >= 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict for persistence."""
        return {
            "v": _STATE_VERSION,
            "kind": DetectorKind.DRIFT.value,
            "n": self.n,
            "mean": self.mean,
            "m2": self.m2,
            "b_sum": self.b_sum,
            "b_n": self.b_n,
            "b_start": self.b_start,
            "s_pos": self.s_pos,
            "s_neg": self.s_neg,
            "pos_start": self.pos_start,
            "neg_start": self.neg_start,
            "last_t": self.last_t,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftState:
        """Rebuild from :meth:`to_dict` output; raises AnomalyError if malformed."""
        d = _load(data, DetectorKind.DRIFT)
        return cls(
            _int(d, "n"),
            _float(d, "mean"),
            _float(d, "m2"),
            _float(d, "b_sum"),
            _int(d, "b_n"),
            _opt_int(d, "b_start"),
            _float(d, "s_pos"),
            _float(d, "s_neg"),
            _opt_int(d, "pos_start"),
            _opt_int(d, "neg_start"),
            _opt_int(d, "last_t"),
        )


def peer_median(values: npt.ArrayLike, min_peers: int = 3, offsets: npt.ArrayLike | None = None) -> FloatArray:
    """Median over devices (axis 0) of a ``devices × time`` matrix, or of one ``devices`` column.

    Non-finite entries are missing; a timestep with fewer than ``min_peers``
    finite values gets NaN. The device itself is included: with five or more
    peers one drifting device moves the median by at most one order statistic.

    Pass each device's known offset from its peers (``DriftState.mean`` once
    learnt) as ``offsets``: the median is then taken over ``values − offsets``.
    Without it, biased low-cost sensors spread the column out, and a device
    drifting past its peers' offsets shifts the median by the gap between two
    offsets — which every other device in the group then sees as drift.
    """
    a = np.asarray(values, dtype=np.float64)
    if a.ndim not in (1, 2):
        raise AnomalyError("peer values must be 1-D (devices) or 2-D (devices × time)")
    if offsets is not None:
        off = np.asarray(offsets, dtype=np.float64)
        if off.shape != (a.shape[0],):
            raise AnomalyError("offsets must have one entry per device")
        a = a - (off if a.ndim == 1 else off[:, None])
    rows = (a[:, None] if a.ndim == 1 else a).T
    finite = np.isfinite(rows)
    rows = np.where(finite, rows, np.nan)
    counts = finite.sum(axis=1).astype(np.int64)
    med = _sorted_median(np.sort(rows, axis=1), counts)
    return np.where(counts >= min_peers, med, np.nan)


class DriftBank(_Bank):
    """Drift detection over many devices at once; O(1) per device per step."""

    __slots__ = (
        "_b_n",
        "_b_start",
        "_b_sum",
        "_last_t",
        "_m2",
        "_mean",
        "_n",
        "_neg_start",
        "_pos_start",
        "_s_neg",
        "_s_pos",
        "params",
    )
    KIND = DetectorKind.DRIFT
    FIELDS = (
        ("_n", "n", "count"),
        ("_mean", "mean", "float"),
        ("_m2", "m2", "nonneg"),
        ("_b_sum", "b_sum", "float"),
        ("_b_n", "b_n", "count"),
        ("_b_start", "b_start", "time"),
        ("_s_pos", "s_pos", "nonneg"),
        ("_s_neg", "s_neg", "nonneg"),
        ("_pos_start", "pos_start", "time"),
        ("_neg_start", "neg_start", "time"),
        ("_last_t", "last_t", "time"),
    )

    def __init__(self, size: int, params: DriftParams | None = None) -> None:
        super().__init__(size)
        self.params = params or DriftParams()
        self._n = np.zeros(size, dtype=np.int64)
        self._mean = np.zeros(size)
        self._m2 = np.zeros(size)
        self._b_sum = np.zeros(size)
        self._b_n = np.zeros(size, dtype=np.int64)
        self._b_start = np.full(size, NEVER_SEEN, dtype=np.int64)
        self._s_pos = np.zeros(size)
        self._s_neg = np.zeros(size)
        self._pos_start = np.full(size, NEVER_SEEN, dtype=np.int64)
        self._neg_start = np.full(size, NEVER_SEEN, dtype=np.int64)
        self._last_t = np.full(size, NEVER_SEEN, dtype=np.int64)

    @classmethod
    def from_states(cls, states: Sequence[DriftState], params: DriftParams | None = None) -> DriftBank:
        """A bank whose device ``i`` continues from ``states[i]``."""
        bank = cls(len(states), params)
        for i, st in enumerate(states):
            bank._n[i], bank._mean[i], bank._m2[i] = st.n, st.mean, st.m2
            bank._b_sum[i], bank._b_n[i] = st.b_sum, st.b_n
            bank._b_start[i] = _time_or_never(st.b_start)
            bank._s_pos[i], bank._s_neg[i] = st.s_pos, st.s_neg
            bank._pos_start[i] = _time_or_never(st.pos_start)
            bank._neg_start[i] = _time_or_never(st.neg_start)
            bank._last_t[i] = _time_or_never(st.last_t)
        return bank

    def state(self, i: int) -> DriftState:
        """Device ``i``'s state, as the online detector would hold it."""
        return DriftState(
            int(self._n[i]),
            float(self._mean[i]),
            float(self._m2[i]),
            float(self._b_sum[i]),
            int(self._b_n[i]),
            _opt_time(self._b_start[i]),
            float(self._s_pos[i]),
            float(self._s_neg[i]),
            _opt_time(self._pos_start[i]),
            _opt_time(self._neg_start[i]),
            _opt_time(self._last_t[i]),
        )

    def offsets(self, index: npt.ArrayLike) -> FloatArray:
        """The learnt mean residual of the series in ``index`` (0 until a block closes): what
        each contributes, subtracted, to its peers' median (:func:`~alerts.anomaly.peer_median`)."""
        sel = np.asarray(index, dtype=np.intp)
        return np.where(self._n[sel] > 0, self._mean[sel], 0.0)

    def update(
        self,
        t: npt.ArrayLike,
        x: npt.ArrayLike,
        peer: npt.ArrayLike,
        index: npt.ArrayLike | None = None,
    ) -> BankUpdate:
        """One sample per selected device, with each device's peer median (scalar or per device)."""
        p = self.params
        sel, tt, xs = self._select(t, x, index)
        try:
            ps = np.broadcast_to(np.asarray(peer, dtype=np.float64), sel.shape)
        except ValueError as exc:
            raise AnomalyError(f"peer must be a scalar or have shape {sel.shape}") from exc
        ok = np.isfinite(xs) & np.isfinite(ps) & (tt > self._last_t[sel])
        # Ignored rows compute on 0 so ±inf never meets arithmetic that would warn.
        r = np.where(ok, xs, 0.0) - np.where(ok, ps, 0.0)
        n, mean, m2 = self._n[sel], self._mean[sel], self._m2[sel]
        s_pos, s_neg = self._s_pos[sel], self._s_neg[sel]
        pos_start, neg_start = self._pos_start[sel], self._neg_start[sel]
        old_bn = self._b_n[sel]
        b_start = np.where((old_bn == 0) | (self._b_start[sel] == NEVER_SEEN), tt, self._b_start[sel])
        b_sum = self._b_sum[sel] + r
        b_n = old_bn + 1
        learnt = n >= p.min_blocks
        close = ok & (b_n == p.block)
        m = b_sum / p.block

        learn = close & ~learnt
        n1 = n + 1
        d = m - mean
        l_mean = mean + d / n1
        l_m2 = m2 + d * (m - l_mean)

        sd = np.maximum(np.sqrt(m2 / np.maximum(n, 1)), p.min_sigma)
        track = close & learnt & (sd > 0)
        z = (m - mean) / np.where(track, sd, 1.0)
        top = p.cap * p.h
        sp = np.minimum(np.maximum(0.0, s_pos + z - p.k), top)
        sn = np.minimum(np.maximum(0.0, s_neg - z - p.k), top)
        new_ps = np.where(sp == 0, NEVER_SEEN, np.where((s_pos == 0) | (pos_start == NEVER_SEEN), b_start, pos_start))
        new_ns = np.where(sn == 0, NEVER_SEEN, np.where((s_neg == 0) | (neg_start == NEVER_SEEN), b_start, neg_start))
        s_pos = np.where(track, sp, s_pos)
        s_neg = np.where(track, sn, s_neg)

        scored = ok & learnt
        sc = np.maximum(s_pos, s_neg)
        score = np.where(scored, sc, np.nan)
        baseline = np.where(scored, np.where(ok, ps, 0.0) + mean, np.nan)
        fired = scored & (sc > p.h)

        w, lw, tw = sel[ok], sel[learn], sel[track]
        self._n[lw], self._mean[lw], self._m2[lw] = n1[learn], l_mean[learn], l_m2[learn]
        self._s_pos[tw], self._s_neg[tw] = sp[track], sn[track]
        self._pos_start[tw], self._neg_start[tw] = new_ps[track], new_ns[track]
        self._b_sum[w] = np.where(close, 0.0, b_sum)[ok]
        self._b_n[w] = np.where(close, 0, b_n)[ok]
        self._b_start[w] = np.where(close, NEVER_SEEN, b_start)[ok]
        self._last_t[w] = tt[ok]
        return BankUpdate(fired, score, baseline)


# --------------------------------------------------------------------------- silence


class Liveness(enum.StrEnum):
    """Whether a device is reporting, judged from its last reading and its session."""

    OK = "ok"  #: data within ``k`` cadences (whatever the session says)
    STALE = "stale"  #: connected, but no data for more than ``k`` cadences (hung sensor/firmware)
    OFFLINE = "offline"  #: not connected and no data for more than ``k`` cadences
    NEVER_SEEN = "never_seen"  #: no reading ever; not an anomaly (warm-up), onboarding tracks these


#: :func:`liveness_many` returns these codes: ``LIVENESS_CODES[code]`` is the :class:`Liveness`.
LIVENESS_CODES: tuple[Liveness, ...] = (Liveness.OK, Liveness.STALE, Liveness.OFFLINE, Liveness.NEVER_SEEN)


def _check_silence(cadence_s: float, k: float) -> None:
    _check_positive("cadence_s", cadence_s)
    _check_positive("k", k)


def liveness_many(
    last_seen: npt.ArrayLike,
    now: int,
    cadence_s: npt.ArrayLike,
    connected: npt.ArrayLike,
    *,
    k: float = 3.0,
) -> npt.NDArray[np.int8]:
    """:func:`liveness` for many devices at once; returns codes into :data:`LIVENESS_CODES`.

    Args:
        last_seen: int64 epoch seconds per device, :data:`NEVER_SEEN` for none.
        now: Epoch seconds of the check.
        cadence_s: Expected interval per device (or one for all), > 0.
        connected: Session up, per device (or one for all).
        k: Silence threshold, in cadences.
    """
    _check_positive("k", k)
    seen = np.asarray(last_seen)
    if seen.ndim != 1 or (seen.size and not np.issubdtype(seen.dtype, np.integer)):
        raise AnomalyError("last_seen must be a 1-D integer array")
    seen = seen.astype(np.int64, copy=False)
    try:
        cad = np.broadcast_to(np.asarray(cadence_s, dtype=np.float64), seen.shape)
        conn = np.broadcast_to(np.asarray(connected, dtype=np.bool_), seen.shape)
    except ValueError as exc:
        raise AnomalyError("cadence_s and connected must be scalars or one per device") from exc
    if cad.size and not bool(np.all(np.isfinite(cad) & (cad > 0))):
        raise AnomalyError("cadence_s must be finite and > 0")
    never = seen == NEVER_SEEN
    # Subtracting the NEVER_SEEN sentinel would overflow int64, so never-seen rows use age 0.
    age = (now - np.where(never, now, seen)).astype(np.float64)
    silent = ~never & (age > k * cad)
    codes = np.zeros(seen.shape, dtype=np.int8)
    codes[silent & conn] = 1
    codes[silent & ~conn] = 2
    codes[never] = 3
    return codes
