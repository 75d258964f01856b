"""Injectable device and transport faults, with ground truth for scoring.

A :class:`FaultPlan` lists :class:`Fault` entries, each aimed at explicit device
codes or at a seeded fraction of the fleet, active over a window of simulated
time. A :class:`FaultInjector` applies the plan to each device's records on
their way to the encoder and tells the fleet what to put on the wire. Every
record carries the labels of the faults that touched it, so the sent log holds
the ground truth a data-quality benchmark scores against.

Fault kinds and what they do:

==================  =====================================================================
``stuck``           value frozen at its first value inside the window
``drift``           value × (1 + magnitude × hours since the window opened)
``spike``           with ``probability``, value × magnitude (default 10)
``noise_burst``     value + N(0, magnitude × |value|)
``dropout``         with ``probability``, the record is not sent at all
``offline``         the device goes silent; its connection dies so the broker sends
                    the last will (``status`` = offline); back online at the window end
``clock_skew``      the wire timestamp is off by ``magnitude`` seconds
``duplicate``       with ``probability``, the message is sent twice
``late_batch``      records are held back ``magnitude`` seconds, then sent as one batch
``out_of_order``    as ``late_batch``, but released newest first, one message each
``malformed``       the payload is cut short / garbled (undecodable)
``bad_crc``         HJ 212 / binary frames get a wrong checksum (JSON: malformed)
``wrong_credentials`` the device connects with a wrong password once at start
``impersonate``     the device publishes under another device's code
``data_flag``       with ``probability``, values carry an HJ 212 data flag (``flag``: M
                    maintenance, C calibration, D fault …) — the station says so itself
==================  =====================================================================
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import yaml

from alerts.errors import RuleError
from alerts.rules import parse_duration

__all__ = [
    "DATA_FLAGS",
    "Emission",
    "Fault",
    "FaultInjector",
    "FaultKind",
    "FaultPlan",
    "Record",
    "corrupt",
    "load_fault_plan",
]


class FaultKind(enum.StrEnum):
    """The kinds of fault the simulator can inject (module docstring)."""

    STUCK = "stuck"
    DRIFT = "drift"
    SPIKE = "spike"
    NOISE_BURST = "noise_burst"
    DROPOUT = "dropout"
    OFFLINE = "offline"
    CLOCK_SKEW = "clock_skew"
    DUPLICATE = "duplicate"
    LATE_BATCH = "late_batch"
    OUT_OF_ORDER = "out_of_order"
    MALFORMED = "malformed"
    BAD_CRC = "bad_crc"
    WRONG_CREDENTIALS = "wrong_credentials"
    IMPERSONATE = "impersonate"
    DATA_FLAG = "data_flag"


#: HJ 212-2017 data flags a ``data_flag`` fault may set (N, "normal", is no fault).
DATA_FLAGS = frozenset("FMSDCTB")

_VALUE_KINDS = frozenset({FaultKind.STUCK, FaultKind.DRIFT, FaultKind.SPIKE, FaultKind.NOISE_BURST})
_DEFAULT_MAGNITUDE = {
    FaultKind.DRIFT: 0.05,
    FaultKind.SPIKE: 10.0,
    FaultKind.NOISE_BURST: 0.5,
    FaultKind.CLOCK_SKEW: 3600.0,
    FaultKind.LATE_BATCH: 600.0,
    FaultKind.OUT_OF_ORDER: 600.0,
}


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault of a plan.

    Attributes:
        kind: What goes wrong.
        devices: Explicit device codes.
        fraction: Or this share (0..1) of the fleet, picked with the plan's seed.
        metrics: Value faults: which metrics (empty: all).
        start_s: Window start, seconds of simulated time after the run's start.
        end_s: Window end (``None``: until the run ends).
        probability: Per-message chance while active (spike, dropout, duplicate, malformed, bad_crc).
        magnitude: Kind-specific size (drift per hour, spike factor, noise σ, skew s, hold-back s);
            0 means the kind's default.
        flag: ``data_flag``: the HJ 212 data flag letter (``M`` maintenance, ``C`` calibration …).
    """

    kind: FaultKind
    devices: tuple[str, ...] = ()
    fraction: float = 0.0
    metrics: tuple[str, ...] = ()
    start_s: float = 0.0
    end_s: float | None = None
    probability: float = 1.0
    magnitude: float = 0.0
    flag: str = "M"

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FaultKind(self.kind))
        if self.flag not in DATA_FLAGS:
            raise ValueError(f"flag {self.flag!r} is not an HJ 212 data flag ({''.join(sorted(DATA_FLAGS))})")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"fraction {self.fraction} must be within 0..1")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability {self.probability} must be within 0..1")
        if self.end_s is not None and self.end_s < self.start_s:
            raise ValueError("end_s is before start_s")
        if not self.devices and self.fraction == 0.0:
            raise ValueError(f"{self.kind} fault names no device and no fraction")

    @property
    def size(self) -> float:
        """The magnitude, or the kind's default when 0."""
        return self.magnitude or _DEFAULT_MAGNITUDE.get(self.kind, 1.0)

    def active(self, elapsed_s: float) -> bool:
        """Whether the window covers ``elapsed_s`` seconds after the start."""
        return self.start_s <= elapsed_s and (self.end_s is None or elapsed_s < self.end_s)


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Faults to inject into a run, reproducible from ``seed``.

    Attributes:
        faults: The faults.
        seed: Seed of device selection by fraction and of per-message chances.
    """

    faults: tuple[Fault, ...] = ()
    seed: int = 0

    def targets(self, codes: Sequence[str]) -> dict[int, frozenset[str]]:
        """Fault index → the device codes it applies to."""
        ordered = sorted(codes)
        out: dict[int, frozenset[str]] = {}
        for i, fault in enumerate(self.faults):
            chosen = set(fault.devices)
            if fault.fraction:
                rng = random.Random(f"{self.seed}:{i}:{fault.kind}")
                chosen |= set(rng.sample(ordered, round(fault.fraction * len(ordered))))
            out[i] = frozenset(chosen)
        return out


@dataclass(slots=True)
class Record:
    """One record of a device on its way out.

    Attributes:
        event_time: True event time (ground truth).
        values: Metric → value as sent (faults applied).
        ts: Time stamped on the wire (differs from ``event_time`` under clock skew).
        faults: Labels of the faults that touched this record.
        truth: Metric → value before value faults, for the records they changed.
        flags: Metric → HJ 212 data flag sent with the value (``data_flag`` faults).
    """

    event_time: datetime
    values: dict[str, float]
    ts: datetime
    faults: list[str] = field(default_factory=list)
    truth: dict[str, float] = field(default_factory=dict)
    flags: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Emission:
    """What the fleet puts on the wire for one or more records.

    Attributes:
        code: The device that sent it.
        topic_code: The code used on the wire (another device's under ``impersonate``).
        records: The records (several for a late batch).
        batch: Send the records as one ``records`` message.
        corrupt: ``malformed`` or ``bad_crc``: damage the encoded payload.
        copies: How many times to publish it (0: not sent, e.g. dropout or offline).
    """

    code: str
    topic_code: str
    records: list[Record]
    batch: bool = False
    corrupt: str | None = None
    copies: int = 1


def corrupt(payload: bytes, how: str, protocol: str) -> bytes:
    """Damage an encoded payload the way a faulty device or line would.

    Args:
        payload: The good payload.
        how: ``malformed`` or ``bad_crc``.
        protocol: ``json``, ``hj212`` or ``manhole``.

    Returns:
        Bytes the platform's decoder must reject.
    """
    if how == "bad_crc" and protocol == "hj212":
        # ``##LLLL<segment>CCCC\r\n``: replace the CRC with a different valid-looking one.
        crc = int(payload[-6:-2], 16)
        return payload[:-6] + b"%04X" % (crc ^ 0x5A5A) + payload[-2:]
    if how == "bad_crc" and protocol == "manhole":
        return payload[:-3] + bytes((payload[-3] ^ 0xFF,)) + payload[-2:]
    if protocol == "json":
        # Cut mid-object: what a buffer overrun or a reset mid-write produces.
        return payload[: max(1, len(payload) // 2)]
    if protocol == "hj212":
        # Right CRC and length, but the segment lost its CP marker: a firmware bug, not line noise.
        segment = payload[6:-6].replace(b"CP=&&", b"CP=&", 1)
        from ingest.adapters.hj212.codec import frame

        return frame(segment.decode("ascii"))
    return payload[: len(payload) // 2]


class FaultInjector:
    """Applies a plan to a fleet's records (stateful: stuck values, held-back batches).

    Args:
        plan: The plan.
        codes: Every device code of the fleet.
        start: Simulated start time of the run (windows are relative to it).
    """

    def __init__(self, plan: FaultPlan, codes: Sequence[str], start: datetime) -> None:
        self.plan = plan
        self.start = start
        self.codes = sorted(codes)
        self._by_device: dict[str, list[Fault]] = {}
        for i, targets in plan.targets(codes).items():
            for code in targets:
                self._by_device.setdefault(code, []).append(plan.faults[i])
        self._rng = random.Random(f"{plan.seed}:messages")
        self._stuck: dict[tuple[str, str], float] = {}
        self._held: dict[str, tuple[Fault, datetime, list[Record]]] = {}

    def faults_of(self, code: str) -> list[Fault]:
        """Every fault aimed at a device."""
        return self._by_device.get(code, [])

    def _active(self, code: str, t: datetime) -> list[Fault]:
        elapsed = (t - self.start).total_seconds()
        return [f for f in self._by_device.get(code, ()) if f.active(elapsed)]

    def has(self, code: str, kind: FaultKind) -> bool:
        """Whether a device has a fault of this kind anywhere in the run."""
        return any(f.kind == kind for f in self._by_device.get(code, ()))

    def offline(self, code: str, t: datetime) -> bool:
        """Whether the device is offline at ``t``."""
        return any(f.kind == FaultKind.OFFLINE for f in self._active(code, t))

    def _values(self, code: str, faults: Iterable[Fault], rec: Record) -> None:
        for fault in faults:
            if fault.kind not in _VALUE_KINDS:
                continue
            names = [m for m in (fault.metrics or tuple(rec.values)) if m in rec.values]
            hours = max(0.0, ((rec.event_time - self.start).total_seconds() - fault.start_s) / 3600)
            hit = fault.kind != FaultKind.SPIKE or self._rng.random() < fault.probability
            if not hit or not names:
                continue
            for name in names:
                value = rec.values[name]
                rec.truth.setdefault(name, value)
                if fault.kind == FaultKind.STUCK:
                    rec.values[name] = self._stuck.setdefault((code, name), value)
                elif fault.kind == FaultKind.DRIFT:
                    rec.values[name] = round(value * (1 + fault.size * hours), 3)
                elif fault.kind == FaultKind.SPIKE:
                    rec.values[name] = round(value * fault.size if value else fault.size, 3)
                else:
                    rec.values[name] = round(value + self._rng.gauss(0, fault.size * abs(value) + 1e-3), 3)
            rec.faults.append(str(fault.kind))

    def process(self, code: str, t: datetime, values: dict[str, float]) -> list[Emission]:
        """Apply the active faults to one new record of a device.

        Args:
            code: The device.
            t: Event time of the record (simulated).
            values: Its values.

        Returns:
            The emissions to publish now (possibly none, possibly an earlier held batch).
        """
        rec = Record(event_time=t, values=dict(values), ts=t)
        faults = self._active(code, t)
        if not faults:
            return [Emission(code, code, [rec])]
        self._values(code, faults, rec)
        kinds = {f.kind: f for f in faults}
        flagged = kinds.get(FaultKind.DATA_FLAG)
        if flagged is not None and self._rng.random() < flagged.probability:
            for name in flagged.metrics or tuple(rec.values):
                if name in rec.values:
                    rec.flags[name] = flagged.flag
            rec.faults.append(str(FaultKind.DATA_FLAG))
        if FaultKind.OFFLINE in kinds:
            rec.faults.append(str(FaultKind.OFFLINE))
            return [Emission(code, code, [rec], copies=0)]
        if FaultKind.DROPOUT in kinds and self._rng.random() < kinds[FaultKind.DROPOUT].probability:
            rec.faults.append(str(FaultKind.DROPOUT))
            return [Emission(code, code, [rec], copies=0)]
        if FaultKind.CLOCK_SKEW in kinds:
            rec.ts = t + timedelta(seconds=kinds[FaultKind.CLOCK_SKEW].size)
            rec.faults.append(str(FaultKind.CLOCK_SKEW))
        for kind in (FaultKind.LATE_BATCH, FaultKind.OUT_OF_ORDER):
            if kind in kinds:
                rec.faults.append(str(kind))
                fault = kinds[kind]
                held = self._held.setdefault(code, (fault, t, []))
                held[2].append(rec)
                return self._release(code, t)
        out = Emission(code, code, [rec])
        self._message_faults(code, kinds, out)
        return [out]

    def _message_faults(self, code: str, kinds: dict[FaultKind, Fault], out: Emission) -> None:
        labels: list[str] = []
        if FaultKind.IMPERSONATE in kinds:
            others = [c for c in self.codes if c != code]
            if others:
                out.topic_code = random.Random(f"{self.plan.seed}:{code}:victim").choice(others)
                labels.append(str(FaultKind.IMPERSONATE))
        for kind in (FaultKind.MALFORMED, FaultKind.BAD_CRC):
            if kind in kinds and self._rng.random() < kinds[kind].probability:
                out.corrupt = str(kind)
                labels.append(str(kind))
                break
        if FaultKind.DUPLICATE in kinds and self._rng.random() < kinds[FaultKind.DUPLICATE].probability:
            out.copies = 2
            labels.append(str(FaultKind.DUPLICATE))
        for rec in out.records:
            rec.faults.extend(labels)

    def _release(self, code: str, t: datetime) -> list[Emission]:
        held = self._held.get(code)
        if held is None:
            return []
        fault, first, records = held
        if (t - first).total_seconds() < fault.size and fault.active((t - self.start).total_seconds()):
            return []
        del self._held[code]
        if fault.kind == FaultKind.LATE_BATCH:
            return [Emission(code, code, records, batch=True)]
        return [Emission(code, code, [rec]) for rec in reversed(records)]

    def flush(self, t: datetime, *, final: bool = False) -> list[Emission]:
        """Release held batches that are due at ``t`` (all of them when ``final``)."""
        out: list[Emission] = []
        for code in list(self._held):
            if final:
                fault, first, records = self._held[code]
                self._held[code] = (fault, first - timedelta(seconds=fault.size), records)
            out += self._release(code, t)
        return out


def load_fault_plan(path: Path) -> FaultPlan:
    """Read a plan from YAML::

        seed: 7
        faults:
          - {kind: spike, fraction: 0.02, probability: 0.05, magnitude: 8}
          - {kind: offline, devices: ["35020303085000003"], from: 10m, to: 40m}
          - {kind: data_flag, devices: ["35021103085000001"], flag: C, from: 1h, to: 3h}

    ``from``/``to`` are durations after the run's start (``90s``, ``10m``, ``2h``).

    Raises:
        ValueError: the file is not a valid plan.
    """
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a fault plan is a mapping with 'faults'")
    faults = []
    for i, raw in enumerate(data.get("faults", [])):
        try:
            faults.append(
                Fault(
                    kind=FaultKind(raw["kind"]),
                    devices=tuple(str(d) for d in raw.get("devices", ())),
                    fraction=float(raw.get("fraction", 0.0)),
                    metrics=tuple(str(m) for m in raw.get("metrics", ())),
                    start_s=float(parse_duration(raw.get("from", 0))),
                    end_s=float(parse_duration(raw["to"])) if "to" in raw else None,
                    probability=float(raw.get("probability", 1.0)),
                    magnitude=float(raw.get("magnitude", 0.0)),
                    flag=str(raw.get("flag", "M")),
                )
            )
        except (KeyError, TypeError, ValueError, RuleError) as exc:
            raise ValueError(f"{path}: faults[{i}]: {exc}") from exc
    return FaultPlan(tuple(faults), seed=int(data.get("seed", 0)))
