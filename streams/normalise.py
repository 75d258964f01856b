"""Normalisation: raw messages → canonical rows and readings. Pure, no I/O.

For each raw message: find the device in the ledger index (unknown, suspended
and decommissioned devices are rejected with a reason), decode the payload
with the adapter the device's model names, convert every value to the
model's canonical unit (an unknown unit rejects that value with a reason,
never a guess), flag quality (``suspect`` when outside the model's physical
range, or an HJ 212 flag other than N; ``bad`` for fault flags), and flag
readings too far in the future (clock skew). Values older than the retention
window (``oldest``) are rejected as ``beyond_retention``: storing them would
only have them dropped by the next maintenance run, or would re-create a day
partition retention has already dropped.

The output is grouped per device class as wide rows (one row per device and
event time, one column per metric), which is what the store writes with COPY.

A batch goes through two passes:

1. **Per message**, what cannot be columnar: the topic, the ledger lookup (one
   vectorised :meth:`~devices.index.DeviceIndex.get_many` for the batch), the
   device's state, and decoding with the model's adapter. Each decoded value's
   (model, metric, unit as sent) is resolved once per batch to a *column* — its
   affine conversion and physical range — or to its rejection.
2. **Columnar**, with numpy over every value of the batch at once: unit
   conversion (``value * scale + offset``, the same two float64 operations as
   :meth:`devices.units.Conversion.apply`, so results are bit-identical), the
   finiteness check, out of range → ``suspect``, future event time →
   ``suspect`` plus a clock-skew record, the dedup key (device, event time in
   integer µs) that groups values into wide rows, and each device's latest
   event time for liveness.

The result is exactly what normalising message by message, value by value
would give, orders included (``tests/unit/streams/test_normalise_vectorised.py``
checks that against a per-value reference on random batches).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

import numpy as np

from core.records import Quality, RawMessage, Reading, RecordError, Transport, epoch_us
from core.topics import TopicError, parse_uplink
from devices.errors import UnitError
from devices.index import DeviceIndex, DeviceInfo
from devices.lifecycle import ACCEPTING
from devices.models import DeviceModel, ModelError, ModelRegistry
from ingest.adapters.json import codec as json_codec
from ingest.errors import DecodeError

__all__ = ["Normalised", "Reject", "Row", "normalise"]

log = logging.getLogger(__name__)

_QRANK = {Quality.GOOD: 0, Quality.SUSPECT: 1, Quality.BAD: 2}
_BY_RANK = (Quality.GOOD, Quality.SUSPECT, Quality.BAD)
_VALUE = attrgetter("value")
_QUALITY = attrgetter("quality")
# Slot setters of Reading, for _canonical (bypassing the frozen __setattr__ and __post_init__).
_NEW = object.__new__
# Below any event time a Reading can carry: "keep everything".
_NO_OLDEST = -(2**63)


def _slot_setter(name: str) -> Callable[[Reading, Any], None]:
    descriptor: Any = vars(Reading)[name]
    setter: Callable[[Reading, Any], None] = descriptor.__set__
    return setter


_SET_CODE, _SET_METRIC, _SET_EVENT, _SET_RX, _SET_VALUE, _SET_UNIT, _SET_QUALITY, _SET_FLAG = (
    _slot_setter(f) for f in ("device_code", "metric", "event_time", "received_at", "value", "unit", "quality", "flag")
)


def _canonical(src: Reading, value: float, unit: str, quality: Quality) -> Reading:
    """``Reading(src.device_code, src.metric, src.event_time, src.received_at, value, unit, quality, src.flag)``.

    Without re-running ``__post_init__`` (two thirds of the per-value cost): every
    field is either copied from ``src``, which a decoder built through the
    validating constructor, or was checked by the columnar pass (``value`` is a
    finite float, ``unit`` a model's canonical unit, ``quality`` a Quality).
    """
    obj = _NEW(Reading)
    _SET_CODE(obj, src.device_code)
    _SET_METRIC(obj, src.metric)
    _SET_EVENT(obj, src.event_time)
    _SET_RX(obj, src.received_at)
    _SET_VALUE(obj, value)
    _SET_UNIT(obj, unit)
    _SET_QUALITY(obj, quality)
    _SET_FLAG(obj, src.flag)
    return obj


Decoder = Callable[[RawMessage, DeviceInfo, DeviceModel], list[Reading]]


@dataclass(frozen=True, slots=True)
class Reject:
    """A message (or value) that could not become a reading, with its reason."""

    raw: RawMessage
    reason: str
    detail: str


@dataclass(slots=True)
class Row:
    """One wide row: all metrics of one device at one event time."""

    device_code: str
    event_time: datetime
    received_at: datetime
    values: dict[str, float] = field(default_factory=dict)
    flags: dict[str, str] = field(default_factory=dict)
    quality: int = 0


@dataclass(slots=True)
class Normalised:
    """The result of normalising one batch."""

    rows: dict[str, dict[tuple[str, int], Row]] = field(default_factory=dict)
    readings: list[tuple[Reading, DeviceInfo]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    seen: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)
    skewed: list[Reading] = field(default_factory=list)
    first_seen: set[str] = field(default_factory=set)
    status: list[tuple[RawMessage, DeviceInfo]] = field(default_factory=list)
    #: Per value of the columnar pass: its message and event time (µs), and per message the
    #: raw message and device; read only by :meth:`messages_of` (a rare path), so kept as built.
    origin: tuple[list[RawMessage], list[DeviceInfo], np.ndarray, np.ndarray] | None = None

    def row_count(self) -> int:
        return sum(len(v) for v in self.rows.values())

    def messages_of(self, keys: set[tuple[str, int]]) -> list[tuple[RawMessage, tuple[str, int]]]:
        """The raw messages that gave a value to a row with one of these (device, event time µs) keys.

        Each with the first such key, in batch order.
        """
        if self.origin is None or not keys:
            return []
        raws, infos, msg, us = self.origin
        found: dict[int, tuple[str, int]] = {}
        for m, t in zip(msg.tolist(), us.tolist(), strict=True):
            if m not in found and (key := (infos[m].code, t)) in keys:
                found[m] = key
        return [(raws[m], found[m]) for m in sorted(found)]


def _decode_json(raw: RawMessage, dev: DeviceInfo, model: DeviceModel) -> list[Reading]:
    return json_codec.decode(raw.payload, device_code=dev.code, received_at=raw.received_at)


def _decoders() -> dict[str, Decoder]:
    # Imported here, not at module top: the adapters import records this module also uses.
    from ingest.adapters.hj212.decoder import decode_hj212
    from ingest.adapters.manhole.decoder import decode_manhole

    return {"json": _decode_json, "hj212": decode_hj212, "manhole-tlv": decode_manhole}


DECODERS: dict[str, Decoder] = _decoders()


def register_decoder(name: str, decoder: Decoder) -> None:
    """Register the decoder of an adapter; refuses duplicates."""
    if name in DECODERS:
        raise ValueError(f"decoder {name!r} already registered")
    DECODERS[name] = decoder


def _decoder_for(raw: RawMessage, model: DeviceModel) -> Decoder:
    # The transport decides first: MQTT uplinks are canonical JSON whatever the
    # model's field protocol (an HJ 212 station may be bridged over MQTT), and
    # frames from the HJ 212 server are HJ 212 whatever the model says.
    if raw.topic.startswith("citybrain/up/"):
        return DECODERS["json"]
    if raw.transport is Transport.HJ212:
        return DECODERS["hj212"]
    try:
        return DECODERS[model.adapter]
    except KeyError:
        raise DecodeError("no_decoder", f"no decoder for adapter {model.adapter!r}") from None


def normalise(
    batch: list[RawMessage],
    index: DeviceIndex,
    models: ModelRegistry,
    *,
    now: datetime,
    max_future_skew: timedelta,
    oldest: datetime | None = None,
) -> Normalised:
    """Normalise one batch of raw messages (see module docstring).

    Args:
        batch: The raw messages.
        index: The ledger index.
        models: The device models.
        now: The worker's clock; event times beyond ``now + max_future_skew``
            are flagged (clock skew).
        max_future_skew: See ``now``.
        oldest: Start of the retention window: a message's values with an
            earlier event time are not kept, and the message is rejected once
            with reason ``beyond_retention``. None keeps everything.
    """
    out = Normalised()
    cols = _Columns()
    pending = _Pending()
    oldest_us = _NO_OLDEST if oldest is None else epoch_us(oldest)
    _decode_pass(batch, index, models, out, cols, pending, oldest_us)
    if pending.src:
        _columnar_pass(pending, cols, out, epoch_us(now + max_future_skew))
    elif pending.rejects:
        out.rejects = [rej for _, _, rej in pending.rejects]
    return out


class _Columns:
    """Columns resolved so far in a batch: (model, metric, unit as sent) → conversion and range.

    A value's column id indexes the parameter arrays; a resolution that failed
    is cached as its (reason, detail), so a device repeating an unknown unit
    costs one dict lookup per value.
    """

    __slots__ = ("high", "ids", "low", "offset", "scale", "unit")

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str, str], int | tuple[str, str]] = {}
        self.scale: list[float] = []
        self.offset: list[float] = []
        self.low: list[float] = []
        self.high: list[float] = []
        self.unit: list[str] = []

    def resolve(self, model: DeviceModel, model_key: str, metric_name: str, unit: str) -> int | tuple[str, str]:
        key = (model_key, metric_name, unit)
        hit = self.ids.get(key)
        if hit is not None:
            return hit
        found: int | tuple[str, str]
        metric = model.metrics.get(metric_name)
        if metric is None:
            found = ("unknown_metric", f"{metric_name} is not in model {model_key}")
        else:
            try:
                conv = metric.convert_from(unit or None)
            except UnitError as exc:
                found = ("bad_unit", str(exc))
            else:
                found = len(self.unit)
                self.scale.append(conv.scale)
                self.offset.append(conv.offset)
                self.low.append(metric.low)
                self.high.append(metric.high)
                self.unit.append(metric.unit)
        self.ids[key] = found
        return found


class _Pending:
    """What the per-message pass hands to the columnar pass.

    Per decoded value that found its column: the decoded reading, its column id
    and its event time in µs. Per message that produced values: its device (an
    id per distinct device of the batch, and the ``DeviceInfo``) and how many
    values it produced. Rejects carry their position among the values (how many
    had been queued before them), so rejects found later by the columnar pass
    are merged back in message order.
    """

    __slots__ = ("col", "msg_count", "msg_dev", "msg_info", "msg_raw", "rejects", "src", "us")

    def __init__(self) -> None:
        self.src: list[Reading] = []
        self.col: list[int] = []
        self.us: list[int] = []
        self.msg_dev: list[int] = []
        self.msg_info: list[DeviceInfo] = []
        self.msg_raw: list[RawMessage] = []
        self.msg_count: list[int] = []
        self.rejects: list[tuple[int, int, Reject]] = []


def _decode_pass(
    batch: list[RawMessage],
    index: DeviceIndex,
    models: ModelRegistry,
    out: Normalised,
    cols: _Columns,
    pending: _Pending,
    oldest_us: int = _NO_OLDEST,
) -> None:
    """Per message: topic, ledger, state, decode; queue each value with its column."""
    rejects = pending.rejects
    src, col, us = pending.src, pending.col, pending.us
    # First the addressing of every message, then one ledger lookup for the batch.
    addressed: list[tuple[RawMessage, str, str] | Reject] = []
    for raw in batch:
        code = raw.device_code
        kind = "telemetry"
        if raw.topic.startswith("citybrain/up/"):
            try:
                up = parse_uplink(raw.topic)
            except TopicError as exc:
                addressed.append(Reject(raw, "bad_topic", str(exc)))
                continue
            code, kind = up.device_code, up.kind
        if code is None:
            addressed.append(Reject(raw, "no_device", "the transport did not name a device"))
            continue
        addressed.append((raw, code, kind))
    found = index.get_many([a[1] for a in addressed if not isinstance(a, Reject)])
    devices = iter(found)
    dev_ids: dict[str, int] = {}
    model_cache: dict[str, DeviceModel | ModelError] = {}
    for item in addressed:
        if isinstance(item, Reject):
            rejects.append((len(src), 0, item))
            continue
        raw, code, kind = item
        dev = next(devices)
        if dev is None:
            rejects.append((len(src), 0, Reject(raw, "unknown_device", f"{code} is not in the ledger")))
            continue
        if dev.state not in ACCEPTING:
            rejects.append((len(src), 0, Reject(raw, f"device_{dev.state}", f"{code} is {dev.state}")))
            continue
        if kind == "status":
            out.status.append((raw, dev))
            continue
        if kind == "event" and raw.payload.startswith(b'{"v":1,"ack"'):
            out.status.append((raw, dev))  # a command acknowledgement, handled by the command dispatcher
            continue
        model = model_cache.get(dev.model)
        if model is None:
            try:
                model = models.get(dev.model)
            except ModelError as exc:
                model = exc
            model_cache[dev.model] = model
        if isinstance(model, ModelError):
            rejects.append((len(src), 0, Reject(raw, "unknown_model", str(model))))
            continue
        try:
            readings = _decoder_for(raw, model)(raw, dev, model)
        except DecodeError as exc:
            rejects.append((len(src), 0, Reject(raw, exc.reason, exc.detail)))
            continue
        # The class's row dict exists from here on, even if no value survives (as it always has).
        out.rows.setdefault(dev.device_class, {})
        if not readings:
            continue
        model_key = model.key
        ids = cols.ids
        queued = len(src)
        last_t: datetime | None = None
        last_us = 0
        stale = False
        too_old: datetime | None = None
        for r in readings:
            c = ids.get((model_key, r.metric, r.unit))
            if c is None:
                c = cols.resolve(model, model_key, r.metric, r.unit)
            if type(c) is tuple:
                rejects.append((len(src), 0, Reject(raw, c[0], c[1])))
                continue
            # Values of one record share one event-time object: convert it once.
            t = r.event_time
            if t is not last_t:
                last_t, last_us = t, epoch_us(t)
                stale = last_us < oldest_us
            if stale:
                too_old = t if too_old is None else min(too_old, t)
                continue
            src.append(r)
            col.append(c)  # type: ignore[arg-type]
            us.append(last_us)
        if too_old is not None:
            rejects.append(
                (
                    len(src),
                    0,
                    Reject(
                        raw,
                        "beyond_retention",
                        f"event time {too_old.isoformat()} is before the retention window"
                        f" (kept from {_iso_us(oldest_us)})",
                    ),
                )
            )
        if len(src) > queued:
            dev_id = dev_ids.setdefault(dev.code, len(dev_ids))
            pending.msg_dev.append(dev_id)
            pending.msg_info.append(dev)
            pending.msg_raw.append(raw)
            pending.msg_count.append(len(src) - queued)


def _iso_us(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat()


def _columnar_pass(p: _Pending, cols: _Columns, out: Normalised, horizon_us: int) -> None:
    """Units, finiteness, quality, skew, dedup keys, rows and liveness for the whole batch at once."""
    n = len(p.src)
    col = np.array(p.col, dtype=np.intp)
    us = np.array(p.us, dtype=np.int64)
    raw_values = np.fromiter(map(_VALUE, p.src), dtype=np.float64, count=n)
    # Same float64 multiply then add as Conversion.apply, hence the same bits. An
    # overflow to inf is expected input (a device sending 1e308 mg/m³), rejected below.
    with np.errstate(over="ignore", invalid="ignore"):
        values = raw_values * np.array(cols.scale)[col] + np.array(cols.offset)[col]
    rank = np.fromiter(map(_QRANK.__getitem__, map(_QUALITY, p.src)), dtype=np.int8, count=n)
    in_range = (np.array(cols.low)[col] <= values) & (values <= np.array(cols.high)[col])
    rank[(rank == 0) & ~in_range] = 1
    future = us > horizon_us
    rank[future & (rank != 2)] = 1
    msg = np.repeat(np.arange(len(p.msg_count)), p.msg_count)
    dev = np.array(p.msg_dev, dtype=np.int64)[msg]
    out.origin = (p.msg_raw, p.msg_info, msg, us)

    finite = np.isfinite(values)
    if finite.all():
        valid = np.arange(n)
        if p.rejects:
            out.rejects = [rej for _, _, rej in p.rejects]
    else:
        valid = np.flatnonzero(finite)
        # Rare: the conversion overflowed. Build the Reading the ordinary way so the
        # reject carries the record's own message, and merge it in at its position.
        late: list[tuple[int, int, Reject]] = []
        for i in np.flatnonzero(~finite).tolist():
            r = p.src[i]
            try:
                Reading(r.device_code, r.metric, r.event_time, r.received_at, float(values[i]), cols.unit[col[i]])
            except RecordError as exc:
                late.append((i, 1, Reject(p.msg_raw[int(msg[i])], "bad_value", str(exc))))
        out.rejects = [rej for _, _, rej in sorted(p.rejects + late, key=lambda x: (x[0], x[1]))]
    if not len(valid):
        return

    valid_l = valid.tolist()
    values_l = values.tolist()
    rank_l = rank.tolist()
    col_l = p.col
    msg_l = msg.tolist()
    units = cols.unit
    infos = p.msg_info
    src = p.src
    readings = out.readings
    normed: list[Reading] = [None] * n  # type: ignore[list-item]
    for i in valid_l:
        norm = _canonical(src[i], values_l[i], units[col_l[i]], _BY_RANK[rank_l[i]])
        normed[i] = norm
        readings.append((norm, infos[msg_l[i]]))
    skewed = future[valid]
    if skewed.any():
        out.skewed = [normed[i] for i in valid[skewed].tolist()]

    v_dev, v_us, v_rank = dev[valid], us[valid], rank[valid]
    _rows(out, p, valid_l, v_dev, v_us, v_rank, values_l, msg_l, normed)
    _liveness(out, p, valid_l, v_dev, v_us, msg_l)


def _rows(
    out: Normalised,
    p: _Pending,
    valid_l: list[int],
    v_dev: np.ndarray,
    v_us: np.ndarray,
    v_rank: np.ndarray,
    values_l: list[float],
    msg_l: list[int],
    normed: list[Reading],
) -> None:
    """Group values into wide rows by the dedup key (device, event time µs)."""
    m = len(valid_l)
    # Stable sort by key: within a row, values stay in arrival order, so "later wins"
    # and the dict's insertion order are those of value-by-value assignment.
    order = np.lexsort((v_us, v_dev))
    s_dev, s_us = v_dev[order], v_us[order]
    brk = np.ones(m, dtype=bool)
    brk[1:] = (s_dev[1:] != s_dev[:-1]) | (s_us[1:] != s_us[:-1])
    starts = np.flatnonzero(brk)
    worst = np.maximum.reduceat(v_rank[order], starts).tolist()
    # Rows are created in the order of their first value, as the per-value loop did.
    firsts = order[starts]
    bounds = [*starts.tolist(), m]
    order_l = order.tolist()
    src = p.src
    rows_by_group: list[Row] = [None] * len(starts)  # type: ignore[list-item]
    for g in np.argsort(firsts, kind="stable").tolist():
        members = [valid_l[k] for k in order_l[bounds[g] : bounds[g + 1]]]
        first = src[members[0]]
        info = p.msg_info[msg_l[members[0]]]
        row = Row(
            info.code,
            first.event_time,
            first.received_at,
            {src[i].metric: values_l[i] for i in members},
            {},
            worst[g],
        )
        out.rows[info.device_class][(info.code, int(s_us[bounds[g]]))] = row
        rows_by_group[g] = row
    bad = np.flatnonzero(v_rank)
    if len(bad):
        group = np.empty(m, dtype=np.intp)
        group[order] = np.cumsum(brk) - 1
        for k in bad.tolist():
            norm = normed[valid_l[k]]
            q = norm.quality.value
            rows_by_group[group[k]].flags[norm.metric] = q if norm.flag is None else f"{q}:{norm.flag}"


def _liveness(
    out: Normalised, p: _Pending, valid_l: list[int], v_dev: np.ndarray, v_us: np.ndarray, msg_l: list[int]
) -> None:
    """Per device, the first value with the latest event time (seen), and first-seen devices."""
    # Device-major, latest first, ties in arrival order (lexsort is stable).
    order = np.lexsort((-v_us, v_dev))
    s_dev = v_dev[order]
    head = np.ones(len(order), dtype=bool)
    head[1:] = s_dev[1:] != s_dev[:-1]
    latest = order[head]
    # Insertion order of ``seen``: each device's first value in arrival order.
    _, first_pos = np.unique(v_dev, return_index=True)
    src = p.src
    for k in np.argsort(first_pos, kind="stable").tolist():
        i = valid_l[int(latest[k])]
        r = src[i]
        info = p.msg_info[msg_l[i]]
        out.seen[info.code] = (r.received_at, r.event_time)
        if info.state == "registered":
            out.first_seen.add(info.code)


def group_by_device(readings: list[tuple[Reading, DeviceInfo]]) -> Mapping[str, list[Reading]]:
    """Readings per device, in arrival order (rule evaluation is per device, in order)."""
    out: dict[str, list[Reading]] = {}
    for r, _dev in readings:
        out.setdefault(r.device_code, []).append(r)
    return out
