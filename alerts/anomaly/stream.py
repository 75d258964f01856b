"""Anomaly detection over one stream batch: samples in, alert transitions out. Pure, no I/O.

The stream worker (:mod:`streams.pipeline`) calls :func:`evaluate_anomalies`
with the batch's readings and each device's saved state (a JSON document kept
in ``anomaly_state`` and written back in the same transaction as the alerts,
exactly like ``rule_state``). The function

1. groups samples per series (device, metric), orders them by event time,
   keeps one per second (detectors work in integer seconds) and drops those
   at or before the series' watermark — a replayed batch changes nothing;
2. looks up the series' detectors in :class:`~alerts.anomaly.config.AnomalyConfig`;
3. runs every (detector, parameters) group as one vectorised bank over all
   its series, one numpy step per *round* (round ``r`` = each series' ``r``-th
   new sample), so the cost is a few numpy calls per batch, not per series;
4. turns firings into alert transitions with a small per-(series, detector)
   episode state machine: an episode starts on the first firing sample and
   ends after ``clear_after`` accepted samples in a row without firing, and a
   detector that opens ``flap_count`` times within ``flap_window`` is marked
   flapping and held open until quiet for ``flap_window / flap_count``;
5. consolidates the episodes into **one alert per series** (device, metric):
   detectors that start on the same sample raise one alert carried by the
   strongest (highest severity, then score / threshold), with every firing
   detector and its score in the labels; a detector starting while the
   series' alert is open joins it; the alert clears when the last episode ends.

State document per device (JSON-safe)::

    {"m": {metric: {"t": last accepted epoch s,
                    "d": {"#": <the states of the detectors whose state is a row of
                                scalars (ewma, rate, stuck, drift), packed in one string:
                                "<kind>.<version>.<words>,…;<base64 of 64-bit words>">,
                          "robust_z": <a dict, its full window binary (RobustZBank.to_dicts)>},
                    "a": {detector: {"o": episode start epoch s | null, "q": quiet samples,
                                     "f": flapping, "l": last firing epoch s, "opens": [...]}},
                    "c": {"r": detector carrying the open alert, "o": opened epoch s,
                          "s": severity, "m": [detectors whose episode is still open]},
                    "x": [last value, its epoch s, drift offset] (series with a drift detector;
                          what the device gives its peers' median, see peer_entry)}}}

(``c`` is absent while the series has no open alert.)

Drift needs the median of the same model and metric in the same district;
the caller passes medians it computed from the peers' latest values and
offsets (:func:`peer_entry` gives what to store for each device).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import math
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from alerts.anomaly.config import AnomalyConfig, DetectorSpec
from alerts.anomaly.detectors import (
    NEVER_SEEN,
    DriftBank,
    EwmaBank,
    EwmaParams,
    RateBank,
    RateParams,
    RobustZBank,
    RobustZParams,
    StuckBank,
    StuckParams,
)
from alerts.anomaly.result import DetectorKind
from alerts.build import device_alert
from alerts.errors import AnomalyError
from core.records import Alert, AlertState, Severity

__all__ = [
    "ANOMALY_RULE_PREFIX",
    "AnomalyOutcome",
    "DetectorMemory",
    "SeriesDevice",
    "evaluate_anomalies",
    "peer_entry",
    "saved_state",
]

#: Alerts raised by a detector carry the rule ``anomaly.<detector>`` (``anomaly.ewma`` …).
ANOMALY_RULE_PREFIX = "anomaly."

_BANKS: dict[DetectorKind, Any] = {
    DetectorKind.ROBUST_Z: RobustZBank,
    DetectorKind.EWMA: EwmaBank,
    DetectorKind.RATE: RateBank,
    DetectorKind.STUCK: StuckBank,
    DetectorKind.DRIFT: DriftBank,
}
# Detectors whose window start is known before the update (the baseline's extent).
_PRE_WINDOW = (DetectorKind.ROBUST_Z, DetectorKind.EWMA, DetectorKind.RATE)
_NO_FIRES: dict[int, Any] = {}
# Key of a series' detector map holding the states of its plan's detectors whose state is a row
# of scalars, packed: "<kind>.<version>.<words>,…;" then base64 of 64-bit little-endian words
# (integers as they are, floats as their bits), the detectors in the header's order (_pack).
_PACKED = "#"
# Key of a series document holding its consolidated alert (see _alert_steps).
_CONSOLIDATED = "c"


@dataclass(frozen=True, slots=True)
class SeriesDevice:
    """What the detectors need to know about a device."""

    code: str
    district: str
    device_class: str
    model_id: str


@dataclass(slots=True)
class AnomalyOutcome:
    """What one batch produced.

    Attributes:
        transitions: ``(kind, alert)`` with kind ``open``, ``escalate`` (a more severe detector
            joined the series' open alert) or ``clear``, in event-time order per series.
        changed: Devices whose state document changed (to write back).
        samples: Samples fed to at least one detector.
    """

    transitions: list[tuple[str, Alert]] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    samples: int = 0


@dataclass(slots=True)
class _Series:
    dev: SeriesDevice
    metric: str
    doc: dict[str, Any]
    #: ``doc["d"]``: the detectors' saved states.
    d: dict[str, Any]
    #: ``(device code, metric)``.
    key: tuple[str, str]
    #: The series' watermark before this batch (``doc["t"]``), None for a new series.
    last: int | None
    times: list[int]
    values: list[float]
    specs: tuple[DetectorSpec, ...]


@dataclass(slots=True)
class _Fire:
    score: float
    baseline: float
    start: int


class DetectorMemory:
    """Detector banks kept between batches: one row per series, as they are computed.

    Without it every batch builds its banks from the series' saved states
    (``from_dicts``: a validated column per field, every robust_z window
    element by element) and throws them away; on city-like traffic, where
    nearly every series of a batch has one new sample, that was most of the
    detectors' cost. With it, a series' rows are reused while its document's
    detector map (``"d"``) is the very object this memory wrote the states
    into last, so the rows and the document agree. A document read anew from
    the database (another worker wrote it, a batch did not commit, the worker
    restarted) holds other objects: its rows are loaded from it again. So the
    memory never decides what a detector knows; the document does, as it is
    persisted with the batch's alerts (docs/store.md, "State in memory").

    Rows are kept per plan (the detectors of a class, model and metric): a
    series is looked up once per batch for all its detectors, not once per
    detector.

    Bounded: a plan past ``max_series`` series starts over empty (its series
    are reloaded from their documents as they come). Pass one instance to
    every :func:`evaluate_anomalies` call of a worker; a new configuration
    starts it over.
    """

    __slots__ = ("_config", "_plans", "max_series", "reloaded", "reused")

    def __init__(self, max_series: int = 1_000_000) -> None:
        if max_series < 1:
            raise ValueError("max_series must be >= 1")
        self.max_series = max_series
        self._config: AnomalyConfig | None = None
        # id(specs) → its rows; the entry holds the specs, so the id is not reused.
        self._plans: dict[int, _PlanRows] = {}
        #: (series, detector) rows reused from the previous batches / loaded from their documents.
        self.reused = 0
        self.reloaded = 0

    def _bind(self, config: AnomalyConfig) -> None:
        if config is not self._config:
            self._config, self._plans = config, {}

    def _plan(self, specs: tuple[DetectorSpec, ...]) -> _PlanRows:
        plan = self._plans.get(id(specs))
        # Checked between batches: a batch's series all get a row, even past the bound.
        if plan is None or len(plan.rows) > self.max_series:
            plan = self._plans[id(specs)] = _PlanRows(specs, [_BANKS[spec.kind](0, spec.params) for spec in specs])
        return plan


@dataclass(slots=True)
class _PlanRows:
    specs: tuple[DetectorSpec, ...]
    #: Per spec, its bank: one row per series of the plan.
    banks: list[Any]
    #: (device code, metric) → row of the banks.
    rows: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Per row: the detector map (``doc["d"]``) this memory last wrote the series' states into,
    #: and the watermark (``doc["t"]``) it left there. Both must still be the document's: a
    #: series that moved to another plan and back (its device's model changed) was advanced
    #: meanwhile by the other plan's banks, in the same map, but not at the same watermark.
    owner: list[object] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)

    def locate(self, members: list[_Series]) -> tuple[npt.NDArray[np.intp], list[int]]:
        """The members' rows, and the positions (in ``members``) of those to load from their documents."""
        index, owner, marks = self.rows, self.owner, self.marks
        rows: list[int] = []
        load: list[int] = []
        for j, s in enumerate(members):
            row = index.get(s.key)
            if row is None:
                row = index[s.key] = len(owner)
                owner.append(s.d)
                marks.append(s.times[-1])
                load.append(j)
            else:
                if owner[row] is not s.d or marks[row] != s.last:
                    owner[row] = s.d
                    load.append(j)
                marks[row] = s.times[-1]
            rows.append(row)
        if len(owner) > (self.banks[0].size if self.banks else 0):
            size = max(len(owner), 2 * self.banks[0].size, 1024)
            for bank in self.banks:
                bank.grow(size)
        return np.array(rows, dtype=np.intp), load


def _utc(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _iso(t: int) -> str:
    return _utc(t).isoformat().replace("+00:00", "Z")


def _bank(kind: DetectorKind, params: Any, saved: list[Any]) -> Any:
    """A bank over the saved states, columnar; a state that does not load starts over.

    A state from an incompatible version must not stall the stream: that
    series warms up again (no false alarm), the others keep theirs.
    """
    cls = _BANKS[kind]
    try:
        return cls.from_dicts(saved, params)
    except AnomalyError:
        good = []
        for raw in saved:
            try:
                cls.from_dicts([raw], params)
                good.append(raw)
            except AnomalyError:
                good.append(None)
        return cls.from_dicts(good, params)


def evaluate_anomalies(
    config: AnomalyConfig,
    samples: Sequence[tuple[SeriesDevice, str, datetime, float]],
    states: MutableMapping[str, dict[str, Any]],
    *,
    peers: Mapping[tuple[str, str, str], float] | None = None,
    is_gauge: Callable[[SeriesDevice, str], bool] = lambda _dev, _metric: True,
    memory: DetectorMemory | None = None,
) -> AnomalyOutcome:
    """Run the configured detectors over one batch.

    Args:
        config: Which detectors run on which series.
        samples: ``(device, metric, event time, value)``; any order, finite values.
        states: Device code → state document (see module docstring); updated
            in place, a missing device starts empty (and warms up).
        peers: ``(district, model id, metric)`` → peer median for drift; a
            series without one is not fed to its drift detector.
        is_gauge: Whether a metric is a gauge (entries without ``metrics``
            cover gauges only).
        memory: Banks kept from the previous batches (:class:`DetectorMemory`);
            the result is the same without it, only dearer.

    Returns:
        The alert transitions and which devices' documents changed.
    """
    out = AnomalyOutcome()
    if not config or not samples:
        return out
    per_series: dict[tuple[str, str], dict[int, float]] = {}
    devs: dict[str, SeriesDevice] = {}
    for dev, metric, event_time, value in samples:
        if not math.isfinite(value):
            continue
        devs[dev.code] = dev
        # Detectors work in integer seconds: several samples in one second keep the latest.
        per_series.setdefault((dev.code, metric), {})[int(event_time.timestamp())] = value
    series: list[_Series] = []
    # Series per plan (the same tuple of specs for every series of a class, model and metric).
    by_plan: dict[int, tuple[tuple[DetectorSpec, ...], list[int]]] = {}
    plans: dict[tuple[str, str, str], tuple[DetectorSpec, ...]] = {}
    single = True  # every series has one new sample (city traffic)
    for key, by_t in sorted(per_series.items()):
        code, metric = key
        dev = devs[code]
        pkey = (dev.device_class, dev.model_id, metric)
        specs = plans.get(pkey)
        if specs is None:
            specs = plans[pkey] = config.plan(dev.device_class, dev.model_id, metric, gauge=is_gauge(dev, metric))
        if not specs:
            continue
        doc = states.setdefault(code, {}).setdefault("m", {}).setdefault(metric, {})
        last = doc.get("t")
        if len(by_t) == 1:
            ((t1, x1),) = by_t.items()
            if last is not None and t1 <= last:
                continue  # a replay, or late data: already evaluated
            times, values = [t1], [x1]
        else:
            times = sorted(t for t in by_t if last is None or t > last)
            if not times:
                continue
            values = [by_t[t] for t in times]
            single = single and len(times) == 1
        d = doc.get("d")
        if d is None:
            d = doc["d"] = {}
        plan = by_plan.get(id(specs))
        if plan is None:
            plan = by_plan[id(specs)] = (specs, [])
        plan[1].append(len(series))
        series.append(_Series(dev, metric, doc, d, key, last, times, values, specs))
        out.samples += len(times)
    if not series:
        return out
    # One bank per (plan, detector): the series of a class, model and metric share their
    # detectors, so a series is located once for all of them (DetectorMemory), and no
    # per-series hashing of the frozen parameter dataclasses is needed to group them.
    columns = (
        (
            np.fromiter((s.times[0] for s in series), dtype=np.int64, count=len(series)),
            np.fromiter((s.values[0] for s in series), dtype=np.float64, count=len(series)),
        )
        if single
        else None
    )
    # fired[(series index, detector name)] = {sample position: firing}; refused: the
    # (series, detector) pairs not fed this batch (drift without a peer median). Every other
    # pair was fed and stayed quiet: most pairs, so they are implicit.
    fired: dict[tuple[int, str], dict[int, _Fire]] = {}
    refused: set[tuple[int, str]] = set()
    if memory is not None:
        memory._bind(config)
    for specs, members in by_plan.values():
        _run_plan(specs, series, members, peers or {}, fired, refused, memory, columns)
    fired_series = {i for i, _ in fired}
    changed = out.changed
    for i, s in enumerate(series):
        doc = s.doc
        episodes = doc.get("a")
        # Only a series that fired, or has an episode or alert open, has episode work to do.
        if i in fired_series or _CONSOLIDATED in doc or (episodes and _any_open(episodes)):
            active = []
            for spec in s.specs:
                pair = (i, spec.name)
                if pair in refused:
                    continue
                fires = fired.get(pair, _NO_FIRES)
                if fires or (episodes is not None and episodes.get(spec.name, {}).get("o") is not None):
                    active.append((spec, fires))
            if active or _CONSOLIDATED in doc:
                out.transitions += _alert_steps(s, active)
        doc["t"] = s.times[-1]
        changed.add(s.dev.code)
    return out


def _any_open(episodes: Mapping[str, Any]) -> bool:
    return any(st.get("o") is not None for st in episodes.values())


def _run_plan(
    specs: tuple[DetectorSpec, ...],
    series: list[_Series],
    index: list[int],
    peers: Mapping[tuple[str, str, str], float],
    fired: dict[tuple[int, str], dict[int, _Fire]],
    refused: set[tuple[int, str]],
    memory: DetectorMemory | None,
    columns: tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]] | None,
) -> None:
    """Every detector of one plan over its series (``series[i]`` for ``i`` in ``index``): a bank
    each, and the advanced states written into the series' documents."""
    members = [series[i] for i in index]
    load: list[int] = []
    if memory is None:
        rows, plan = np.arange(len(members), dtype=np.intp), None
    else:
        plan = memory._plan(specs)
        rows, load = plan.locate(members)
        memory.reloaded += len(load) * len(specs)
        memory.reused += (len(members) - len(load)) * len(specs)
    if columns is not None:
        idx = np.asarray(index, dtype=np.intp)
        t_x: tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]] | None = (columns[0][idx], columns[1][idx])
    else:
        t_x = None
    packed: list[Any] = []  # the banks whose states are packed into one string per series
    # The series whose saved states are loaded: their packed strings decoded together where
    # they can be (a restart or a rebalance loads every series once), one by one otherwise.
    loaded = members if plan is None else [members[j] for j in load]
    together = _packed_banks(specs, loaded) if loaded else {}
    saved: list[Mapping[str, Any]] | None = None
    for k, spec in enumerate(specs):
        name = spec.name
        fresh = together.get(k)
        if fresh is None and loaded:
            if saved is None:
                saved = [_saved_states(s.d) for s in loaded]
            fresh = _bank(spec.kind, spec.params, [m.get(name) for m in saved])
        bank: Any
        if plan is None:
            bank = fresh  # every member was loaded
        else:
            bank = plan.banks[k]
            if load:
                bank.put_rows(rows[load], fresh)
        _run_bank(spec.kind, bank, rows, members, index, name, peers, fired, refused, t_x)
        if not bank.FIELDS:  # robust_z: its window, not a row of scalars
            for s, state in zip(members, bank.to_dicts(rows, compact=True), strict=True):
                s.d[name] = state
            continue
        packed.append(bank)
        if spec.kind is DetectorKind.DRIFT:
            # What the device gives its peers' median (peer_entry), ready to store: the last value,
            # its time and the learnt offset.
            for s, offset in zip(members, bank.offsets(rows).tolist(), strict=True):
                s.doc["x"] = [s.values[-1], s.times[-1], offset]
    if packed:
        _pack(packed, rows, members, loaded)


def _pack(
    banks: list[Any],
    rows: npt.NDArray[np.intp],
    members: list[_Series],
    loaded: list[_Series],
) -> None:
    """Write the packed states of ``banks`` (the plan's detectors whose state is a row of
    scalars) into each member's detector map, under :data:`_PACKED`: one string per series,
    built for all of them with one base64 pass, instead of a JSON row per detector.

    ``loaded``: members whose map may still hold those detectors' states one by one (read
    from an older document); they are dropped, so the packed states are the only ones.
    """
    header, width, pad = _layout_of([type(bank) for bank in banks])
    words = [bank.packed(rows) for bank in banks]
    if pad:
        words.append(np.zeros((len(members), pad), dtype=np.int64))
    text = base64.b64encode(np.hstack(words).astype("<i8", copy=False).tobytes()).decode("ascii")
    step = (width + pad) * 8 // 3 * 4
    for s, at in zip(members, range(0, len(text), step), strict=True):
        s.d[_PACKED] = header + text[at : at + step]
    if loaded:
        names = [bank.KIND.value for bank in banks]
        for s in loaded:
            for name in names:
                s.d.pop(name, None)


def _layout_of(classes: list[Any]) -> tuple[str, int, int]:
    """The packed string's header for these bank classes, their words per series, and the
    zero words after them: base64 turns 3 bytes into 4 characters, so with a multiple of 3
    words per series each series' state is its own slice of the encoding of all of them."""
    header = ",".join(f"{cls.KIND.value}.{cls.VERSION}.{len(cls.FIELDS)}" for cls in classes) + ";"
    width = sum(len(cls.FIELDS) for cls in classes)
    return header, width, -width % 3


def _packed_banks(specs: tuple[DetectorSpec, ...], loaded: list[_Series]) -> dict[int, Any]:
    """Banks over ``loaded`` (spec position → bank) for the plan's packed detectors, decoded
    from the series' packed strings in one pass; empty unless every series holds exactly the
    string this plan writes (same detectors, versions and size) and nothing else of those
    detectors. A bank whose states do not all load is left out (loaded one by one instead)."""
    packed = [k for k, spec in enumerate(specs) if _BANKS[spec.kind].FIELDS]
    if not packed:
        return {}
    classes = [_BANKS[specs[k].kind] for k in packed]
    header, width, pad = _layout_of(classes)
    size = len(header) + (width + pad) * 8 // 3 * 4
    names = [specs[k].name for k in packed]
    texts = []
    for s in loaded:
        text = s.d.get(_PACKED)
        if type(text) is not str or len(text) != size or not text.startswith(header) or any(n in s.d for n in names):
            return {}
        texts.append(text[len(header) :])
    try:
        words = np.frombuffer(base64.b64decode("".join(texts), validate=True), dtype="<i8")
        words = words.astype(np.int64).reshape(len(loaded), width + pad)
    except (ValueError, binascii.Error):
        return {}
    out: dict[int, Any] = {}
    at = 0
    for k, cls in zip(packed, classes, strict=True):
        with contextlib.suppress(AnomalyError):
            out[k] = cls.from_packed(words[:, at : at + len(cls.FIELDS)], specs[k].params)
        at += len(cls.FIELDS)
    return out


def saved_state(d: Mapping[str, Any], name: str) -> Any:
    """Detector ``name``'s saved state in a series' detector map (``doc["m"][metric]["d"]``):
    its own entry (a document written before states were packed, or robust_z's), else its
    compact row unpacked from the packed string, else None."""
    return _saved_states(d).get(name)


def _saved_states(d: Mapping[str, Any]) -> Mapping[str, Any]:
    """Every detector's saved state in a series' detector map, by detector name."""
    packed = d.get(_PACKED)
    if packed is None:
        return d
    out = _unpack(packed)
    out.update((k, v) for k, v in d.items() if k != _PACKED)
    return out


def _unpack(packed: Any) -> dict[str, Any]:
    """The compact rows in a packed string (:func:`_pack`), by detector name. A string that
    does not parse gives nothing, and a state of the wrong size is left out: those detectors
    start over (warm up), as any saved state that does not load does."""
    try:
        header, text = packed.split(";", 1)
        words = np.frombuffer(base64.b64decode(text, validate=True), dtype="<i8").astype(np.int64)
        layout = _parse_header(header)
    except (AttributeError, TypeError, ValueError, binascii.Error):
        return {}
    out: dict[str, Any] = {}
    for kind, version, at, width in layout:
        with contextlib.suppress(AnomalyError):
            out[kind.value] = _BANKS[kind].row_from_packed(words[at : at + width], version)
    return out


@functools.lru_cache(maxsize=64)
def _parse_header(header: str) -> tuple[tuple[DetectorKind, int, int, int], ...]:
    """``(detector, state version, first word, words)`` per entry of a packed string's header."""
    out = []
    at = 0
    for entry in header.split(","):
        name, version, width = entry.split(".")
        out.append((DetectorKind(name), int(version), at, int(width)))
        at += int(width)
    return tuple(out)


def _run_bank(
    kind: DetectorKind,
    bank: Any,
    rows: npt.NDArray[np.intp],
    members: list[_Series],
    index: list[int],
    name: str,
    peers: Mapping[tuple[str, str, str], float],
    fired: dict[tuple[int, str], dict[int, _Fire]],
    refused: set[tuple[int, str]],
    t_x: tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]] | None,
) -> None:
    """One detector over the members' ``rows`` of its bank: one numpy step per round (round ``r`` =
    each series' ``r``-th new sample), Python only for firings. ``t_x``: every member's one
    sample (time and value columns), when each has one."""
    if kind is DetectorKind.DRIFT:
        peer = np.array(
            [peers.get((s.dev.district, s.dev.model_id, s.metric), math.nan) for s in members], dtype=np.float64
        )
        # Without a peer median the drift detector is not fed.
        refused.update((index[j], name) for j in np.flatnonzero(~np.isfinite(peer)).tolist())
    if t_x is not None:
        lengths = np.ones(len(members), dtype=np.int64)
        offsets = np.arange(len(members), dtype=np.int64)
        all_t, all_x = t_x
    else:
        lengths = np.array([len(s.times) for s in members], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        count = int(lengths.sum())
        all_t = np.fromiter((t for s in members for t in s.times), dtype=np.int64, count=count)
        all_x = np.fromiter((x for s in members for x in s.values), dtype=np.float64, count=count)
    pre = kind in _PRE_WINDOW
    for r in range(int(lengths.max())):
        sel = np.flatnonzero(lengths > r)
        t, x = all_t[offsets[sel] + r], all_x[offsets[sel] + r]
        brows = rows[sel]
        starts = bank.window_start(brows) if pre else None
        if kind is DetectorKind.DRIFT:
            upd = bank.update(t, x, peer[sel], index=brows)
        else:
            upd = bank.update(t, x, index=brows)
        for row in np.flatnonzero(upd.fired).tolist():  # most series never fire
            j = int(sel[row])
            if starts is not None:
                start: int | None = int(starts[row])
            elif kind is DetectorKind.STUCK:
                start = bank.state(int(rows[j])).run_start
            else:
                st = bank.state(int(rows[j]))
                start = st.pos_start if st.s_pos >= st.s_neg else st.neg_start
            tr = int(t[row])
            start = tr if start is None or start == NEVER_SEEN else min(int(start), tr)
            fired.setdefault((index[j], name), {})[r] = _Fire(float(upd.score[row]), float(upd.baseline[row]), start)


def _detector_step(st: dict[str, Any], spec: DetectorSpec, t: int, fire: _Fire | None) -> str | None:
    """One sample of one detector's episode: ``open`` on its first firing sample, ``clear`` after
    ``clear_after`` quiet ones (held while flapping), else None. Updates ``st`` in place."""
    opened = st.get("o")
    if fire is not None:
        st["q"], st["l"] = 0, t
        if opened is not None:
            return None  # still firing: one episode
        opens = [o for o in st.get("opens", []) if t - o < spec.flap_window_s] + [t]
        st["opens"], st["o"], st["f"] = opens, t, len(opens) >= spec.flap_count
        return "open"
    if opened is None:
        return None
    st["q"] = int(st.get("q", 0)) + 1
    quiet_enough = st["q"] >= spec.clear_after
    if st.get("f"):
        # A flapping detector clears only once it has been quiet for a while.
        quiet_enough = quiet_enough and t - int(st.get("l", t)) >= spec.flap_window_s / spec.flap_count
    if not quiet_enough:
        return None
    st["o"], st["f"], st["q"] = None, False, 0
    return "clear"


def _strength(item: tuple[DetectorSpec, _Fire]) -> tuple[int, float, str]:
    """Which of the detectors firing on one sample carries the alert: severity, then score / threshold."""
    spec, fire = item
    thr = _threshold(spec)
    ratio = abs(fire.score) / thr if thr > 0 and math.isfinite(fire.score) else 0.0
    return int(spec.severity), ratio, spec.name


def _alert_steps(s: _Series, active: list[tuple[DetectorSpec, dict[int, _Fire]]]) -> list[tuple[str, Alert]]:
    """One anomaly alert per series: the detectors' episodes, consolidated.

    Each detector keeps its own episode (:func:`_detector_step`). Detectors
    that open on the same sample raise **one** alert, carried by the strongest
    (:func:`_strength`): its rule, id and evidence, plus every firing
    detector and its score in the labels. A detector that opens while the
    series' alert is open joins it (an ``escalate`` if its severity is
    higher) instead of raising a second one. The alert clears when the last
    of its detectors' episodes has ended. An alert opened per detector before
    consolidation (a state without ``c``) still clears on its own.
    """
    a: dict[str, Any] = s.doc.setdefault("a", {})
    grp: dict[str, Any] | None = s.doc.get(_CONSOLIDATED)
    specs = {spec.name: spec for spec in s.specs}
    if grp is not None:
        # A detector switched off in the configuration no longer holds the alert open.
        grp["m"] = [k for k in grp["m"] if k in specs]
    out: list[tuple[str, Alert]] = []
    for r, (t, x) in enumerate(zip(s.times, s.values, strict=True)):
        opened_now: list[tuple[DetectorSpec, _Fire]] = []
        ended: list[tuple[DetectorSpec, int]] = []
        for spec, fires in active:
            st: dict[str, Any] = a.setdefault(spec.name, {})
            was = st.get("o")
            fire = fires.get(r)
            step = _detector_step(st, spec, t, fire)
            if step == "open" and fire is not None:
                opened_now.append((spec, fire))
            elif step == "clear" and was is not None:
                ended.append((spec, int(was)))
        if opened_now:
            flapping = any(a[spec.name].get("f") for spec, _ in opened_now)
            if grp is None:
                spec, fire = max(opened_now, key=_strength)
                grp = {
                    "r": spec.name,
                    "o": t,
                    "s": int(spec.severity),
                    "m": [sp.name for sp, _ in opened_now],
                }
                s.doc[_CONSOLIDATED] = grp
                out.append(("open", _alert(s, spec, t, x, fire, flapping, opened_now)))
            else:
                grp["m"] += [sp.name for sp, _ in opened_now if sp.name not in grp["m"]]
                spec, fire = max(opened_now, key=_strength)
                if int(spec.severity) > int(grp["s"]):
                    grp["s"] = int(spec.severity)
                    out.append(("escalate", _joined(s, grp, spec, t, x, fire)))
        for spec, was in ended:
            if grp is not None and spec.name in grp["m"]:
                grp["m"].remove(spec.name)
            else:  # an alert of this detector alone (opened before consolidation)
                out.append(("clear", _cleared(s, spec.name, spec.severity, spec.clear_after, was, t)))
        if grp is not None and not grp["m"]:
            primary = specs.get(grp["r"])
            clear_after = primary.clear_after if primary is not None else 0
            out.append(("clear", _cleared(s, grp["r"], Severity(int(grp["s"])), clear_after, int(grp["o"]), t)))
            del s.doc[_CONSOLIDATED]
            grp = None
    return out


def _alert(
    s: _Series,
    spec: DetectorSpec,
    t: int,
    x: float,
    fire: _Fire,
    flapping: bool,
    firing: Sequence[tuple[DetectorSpec, _Fire]] = (),
) -> Alert:
    threshold = _threshold(spec)
    detail = "up" if x >= fire.baseline else "down"
    firing = sorted(firing or [(spec, fire)], key=lambda item: item[0].name)
    labels = [
        ("detector", spec.name),
        ("baseline", f"{fire.baseline:.6g}"),
        ("score", f"{fire.score:.4g}"),
        ("threshold", f"{threshold:.6g}"),
        ("window_start", _iso(fire.start)),
        ("window_end", _iso(t)),
        ("detail", detail),
        ("detectors", ",".join(sp.name for sp, _ in firing)),
    ]
    labels += [(f"score.{sp.name}", f"{f.score:.4g}") for sp, f in firing]
    if flapping:
        labels.append(("flapping", "true"))
    others = [f"{sp.name} {f.score:.3g} > {_threshold(sp):.3g}" for sp, f in firing if sp.kind is not spec.kind]
    return _series_alert(
        s,
        spec.name,
        spec.severity,
        _utc(t),
        value=x,
        threshold=threshold,
        message=(
            f"{s.metric} {x:.6g} {detail}: {spec.name} score {fire.score:.3g} > {threshold:.3g}"
            f" (baseline {fire.baseline:.6g}, window {_iso(fire.start)} – {_iso(t)})"
            + (f"; also {', '.join(others)}" if others else "")
        ),
        labels=tuple(labels),
    )


def _joined(s: _Series, grp: Mapping[str, Any], spec: DetectorSpec, t: int, x: float, fire: _Fire) -> Alert:
    """The series' open alert, escalated to the severity of a detector that joined it."""
    return _series_alert(
        s,
        str(grp["r"]),
        spec.severity,
        _utc(int(grp["o"])),
        value=x,
        threshold=_threshold(spec),
        message=(
            f"{s.metric} {x:.6g} at {_iso(t)}: {spec.name} score {fire.score:.3g} > {_threshold(spec):.3g}"
            f" too (detectors {', '.join(grp['m'])})"
        ),
        labels=(("detector", str(grp["r"])), ("detectors", ",".join(sorted(grp["m"])))),
    )


def _cleared(s: _Series, kind: str, severity: Severity, clear_after: int, opened: int, t: int) -> Alert:
    return _series_alert(
        s,
        kind,
        severity,
        _utc(opened),
        state=AlertState.RESOLVED,
        message=f"{s.metric}: {kind} quiet for {clear_after} samples",
        cleared_at=_utc(t),
        labels=(("detector", kind),),
    )


def _series_alert(
    s: _Series,
    kind: str,
    severity: Severity,
    opened_at: datetime,
    *,
    state: AlertState = AlertState.OPEN,
    value: float | None = None,
    threshold: float | None = None,
    message: str,
    cleared_at: datetime | None = None,
    labels: tuple[tuple[str, str], ...],
) -> Alert:
    """The series' alert of the anomaly rule for detector ``kind`` (id, device and metric filled in)."""
    rule = ANOMALY_RULE_PREFIX + kind
    return device_alert(
        rule,
        s.dev.code,
        s.dev.district,
        s.dev.device_class,
        severity,
        opened_at,
        state=state,
        key=f"{rule}.{s.metric}",
        metric=s.metric,
        value=value,
        threshold=threshold,
        message=message,
        cleared_at=cleared_at,
        labels=labels,
    )


def _threshold(spec: DetectorSpec) -> float:
    p = spec.params
    if isinstance(p, RobustZParams):
        return p.k
    if isinstance(p, EwmaParams):
        return p.sigmas
    if isinstance(p, RateParams):
        return p.max_rate
    if isinstance(p, StuckParams):
        return float(p.samples)
    return p.h


def peer_entry(doc: Mapping[str, Any]) -> dict[str, list[float]]:
    """What a device contributes to its peers' drift median: ``{metric: [value, t, offset]}``.

    Only metrics with a drift state are listed; the offset is the device's
    learnt mean residual (0 until its first block closes), so peers take the
    median of offset-corrected values (see :func:`~alerts.anomaly.peer_median`).
    """
    out: dict[str, list[float]] = {}
    for metric, m in doc.get("m", {}).items():
        last = m.get("x")
        if last is None:
            continue
        if len(last) == 3:  # written with the drift state, offset included (evaluate_anomalies)
            out[metric] = last
            continue
        # A document written before the offset was kept beside the value: [value, t].
        drift = saved_state(m.get("d", {}), DetectorKind.DRIFT.value)
        if drift is None:
            continue
        if isinstance(drift, Mapping):
            n, mean = drift.get("n", 0), drift.get("mean", 0.0)
        else:  # the compact row: kind, version, then DriftBank.FIELDS (n, mean, …)
            n, mean = drift[2], drift[3]
        offset = float(mean) if int(n) > 0 else 0.0
        out[metric] = [float(last[0]), float(last[1]), offset]
    return out
