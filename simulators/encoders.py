"""Wire encoders of simulated devices, built on the production codecs.

* Canonical MQTT JSON: :func:`ingest.adapters.json.codec.encode` (and the documented
  ``records`` batch form for late batches).
* HJ 212-2017: :mod:`ingest.adapters.hj212.codec` — real-time uploads (CN 2011,
  ``code-Rtd``) for air (ST=22) and noise (ST=23); minute/hour/day data (CN
  2051/2061/2031, ``-Avg/-Min/-Max/-Flag``) for water (ST=21) and the others. The
  factor code of each metric is the model's ``hj212`` entry, so the platform maps
  it back with ``DeviceModel.by_hj212``.
* The manhole binary TLV frame: :mod:`ingest.adapters.manhole.codec`, imported lazily
  in :func:`manhole_frame` so the rest of the simulator does not depend on it.

Because the codecs are the production ones, a protocol change shows in the
simulators and the platform at once (conventions: "Simulators import the same
codecs and models as production").
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from devices.models import DeviceModel
from ingest.adapters.hj212.codec import Hj212Packet, encode, make_qn
from ingest.adapters.hj212.units import wire_units
from ingest.adapters.json.codec import encode as json_encode
from simulators.base import CST

__all__ = [
    "CN_DAY",
    "CN_HOUR",
    "CN_MINUTE",
    "CN_RTD",
    "DEFAULT_PW",
    "aggregate",
    "hj212_aggregate",
    "hj212_rtd",
    "imei_for",
    "json_batch",
    "json_telemetry",
    "manhole_frame",
]

CN_RTD = "2011"
CN_MINUTE = "2051"
CN_HOUR = "2061"
CN_DAY = "2031"
#: Station access password used by simulated stations (the ledger's ``pw`` attribute in tests).
DEFAULT_PW = "123456"
#: Flag=5: HJ 212-2017 (version bits 000001) with the ack bit set, so the platform answers 9014.
_FLAG_ACK = 5


def _wire_value(model: DeviceModel, name: str, value: float) -> float | bool:
    # Boolean metrics go out as JSON booleans, as real devices send them.
    return bool(value >= 0.5) if model.metrics[name].kind == "boolean" else value


def _json_metrics(model: DeviceModel, values: Mapping[str, float], flags: Mapping[str, str]) -> dict[str, Any]:
    # A flagged value takes the object form {"value", "flag"} (docs/topics.md); others stay bare.
    return {
        k: {"value": _wire_value(model, k, v), "flag": flags[k]} if k in flags else _wire_value(model, k, v)
        for k, v in values.items()
    }


def json_telemetry(
    model: DeviceModel,
    t: datetime,
    values: Mapping[str, float],
    *,
    ts_format: str = "iso",
    flags: Mapping[str, str] | None = None,
) -> bytes:
    """Canonical JSON telemetry of one record (docs/topics.md).

    Args:
        model: The device's model (booleans are sent as JSON booleans).
        t: Event time (aware).
        values: Metric → value in canonical units.
        ts_format: ``iso``, ``s`` or ``ms`` (all accepted by the platform).
        flags: Metric → data flag (HJ 212 letters: M maintenance, C calibration …), sent as
            ``{"value": v, "flag": "M"}``.

    Returns:
        The payload bytes.
    """
    if not flags:
        return json_encode(t, {k: _wire_value(model, k, v) for k, v in values.items()}, ts_format=ts_format)
    doc = json.loads(json_encode(t, {}, ts_format=ts_format))
    doc["metrics"] = _json_metrics(model, values, flags)
    return json.dumps(doc, separators=(",", ":")).encode()


def json_batch(
    model: DeviceModel,
    records: Iterable[tuple[datetime, Mapping[str, float]]],
    *,
    flags: Iterable[Mapping[str, str]] | None = None,
) -> bytes:
    """Several records in one canonical message: ``{"v":1,"records":[{"ts","metrics"}…]}``.

    Used for late batches (a device that buffered while offline) and their out-of-order variant.
    ``flags``, if given, holds one metric → flag mapping per record.
    """
    items = list(records)
    per_record = list(flags) if flags is not None else [{}] * len(items)
    body = [
        {"ts": t.isoformat(), "metrics": _json_metrics(model, values, f)}
        for (t, values), f in zip(items, per_record, strict=True)
    ]
    return json.dumps({"v": 1, "records": body}, separators=(",", ":")).encode()


def _fmt(value: float) -> str:
    # HJ 212 data types are plain decimals (N5.2 …): no exponent, no trailing zeros needed.
    # Six places below 1 keep small values (CO in mg/m³, a stack's gases) exact; three elsewhere.
    text = f"{value:.{6 if abs(value) < 1 else 3}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _to_wire(model: DeviceModel, name: str, code: str, value: float) -> float:
    # A station sends each factor in the unit of its station type or model (ambient air:
    # µg/m³, CO mg/m³; a stack: mg/m³), not necessarily the model's canonical one: convert
    # with the platform's own rule, inverting the conversion it applies on the way in.
    unit = wire_units(model).get(code)
    if unit is None or unit == model.metrics[name].unit:
        return value
    conv = model.metrics[name].convert_from(unit)
    return (value - conv.offset) / conv.scale


def _codes(model: DeviceModel, values: Mapping[str, float]) -> list[tuple[str, float]]:
    out = []
    for name, value in values.items():
        code = model.metrics[name].hj212
        if code is not None:
            out.append((code, _to_wire(model, name, code, value)))
    return out


def _st(model: DeviceModel) -> str:
    if model.hj212_st is None:
        raise ValueError(f"model {model.id} has no HJ 212 system code")
    return model.hj212_st


def hj212_rtd(
    model: DeviceModel,
    mn: str,
    t: datetime,
    values: Mapping[str, float],
    *,
    pw: str = DEFAULT_PW,
    flags: Mapping[str, str] | None = None,
    sent_at: datetime | None = None,
) -> bytes:
    """Real-time upload, CN 2011: ``DataTime;code-Rtd=v,code-Flag=N;…``.

    Args:
        model: Model with ``hj212_st`` and per-metric ``hj212`` codes.
        mn: Station MN (the platform's convention: the device code unless the ledger says otherwise).
        t: Event time; sent as local ``DataTime`` (Asia/Shanghai).
        values: Metric → value; metrics without an HJ 212 code are left out.
        pw: Station password.
        flags: Metric → data flag (N normal, D fault …); default N for every factor.
        sent_at: When the frame is sent (its QN); default ``t``.

    Returns:
        The frame.
    """
    flags = flags or {}
    by_code = {model.metrics[m].hj212: f for m, f in flags.items()}
    cp: list[tuple[str, str]] = [("DataTime", f"{t.astimezone(CST):%Y%m%d%H%M%S}")]
    for code, value in _codes(model, values):
        assert code is not None
        cp += [(f"{code}-Rtd", _fmt(value)), (f"{code}-Flag", by_code.get(code, "N"))]
    qn = make_qn((sent_at or t).astimezone(CST))
    return encode(Hj212Packet(qn=qn, st=_st(model), cn=CN_RTD, pw=pw, mn=mn, flag=_FLAG_ACK, cp=tuple(cp)))


def aggregate(
    sample: Callable[[datetime], Mapping[str, float]], start: datetime, end: datetime, points: int = 6
) -> dict[str, tuple[float, float, float]]:
    """Average, minimum and maximum of each metric over ``[start, end)`` from ``points`` samples.

    Value models are pure in time, so sampling inside a past interval is exactly
    what the station's data logger saw.
    """
    step = (end - start) / points
    series: dict[str, list[float]] = {}
    for i in range(points):
        for name, value in sample(start + step * i).items():
            series.setdefault(name, []).append(value)
    return {name: (sum(v) / len(v), min(v), max(v)) for name, v in series.items()}


def hj212_aggregate(
    model: DeviceModel,
    mn: str,
    cn: str,
    start: datetime,
    stats: Mapping[str, tuple[float, float, float]],
    *,
    pw: str = DEFAULT_PW,
    flags: Mapping[str, str] | None = None,
    sent_at: datetime | None = None,
) -> bytes:
    """Minute (2051), hour (2061) or day (2031) data: ``code-Avg,code-Min,code-Max,code-Flag``.

    Args:
        model: Model with ``hj212_st`` and per-metric ``hj212`` codes.
        mn: Station MN.
        cn: ``2051``, ``2061`` or ``2031``.
        start: Start of the interval; HJ 212 stamps aggregate data with it (``DataTime``).
        stats: Metric → (avg, min, max), e.g. from :func:`aggregate`.
        pw: Station password.
        flags: Metric → data flag; default N.
        sent_at: When the frame is sent (its QN); default the end of a one-hour interval.

    Returns:
        The frame.
    """
    if cn not in (CN_MINUTE, CN_HOUR, CN_DAY):
        raise ValueError(f"CN {cn} is not minute/hour/day data")
    flags = flags or {}
    cp: list[tuple[str, str]] = [("DataTime", f"{start.astimezone(CST):%Y%m%d%H%M%S}")]
    for name, triple in stats.items():
        code = model.metrics[name].hj212
        if code is None:
            continue
        avg, low, high = (_to_wire(model, name, code, v) for v in triple)
        cp += [
            (f"{code}-Avg", _fmt(avg)),
            (f"{code}-Min", _fmt(low)),
            (f"{code}-Max", _fmt(high)),
            (f"{code}-Flag", flags.get(name, "N")),
        ]
    qn = make_qn((sent_at or start + timedelta(hours=1)).astimezone(CST))
    return encode(Hj212Packet(qn=qn, st=_st(model), cn=cn, pw=pw, mn=mn, flag=_FLAG_ACK, cp=tuple(cp)))


def imei_for(code: str) -> str:
    """A stable, plausible 15-digit IMEI for a simulated cover (TAC 86… of Chinese modules)."""
    return f"86{zlib.crc32(code.encode()):010d}{int(code[10:16]) % 1000:03d}"[:15]


def manhole_frame(
    code: str,
    t: datetime,
    values: Mapping[str, float],
    *,
    kind: str = "periodic",
    alarms: Iterable[str] = (),
    counter: int = 0,
) -> bytes:
    """The binary manhole TLV frame of a set of values, via the production manhole codec.

    The codec is imported here, not at module level: the binary path is optional
    for the rest of the simulator (JSON over MQTT works without it).

    Args:
        code: Device code (its IMEI is :func:`imei_for`).
        t: Device time.
        values: ``manhole-cover`` metrics in canonical units.
        kind: ``periodic``, ``alarm``, ``recovery`` or ``heartbeat``.
        alarms: Alarm names (the codec's ``ALARM_BITS`` keys).
        counter: Frame counter (wraps at 65536).

    Returns:
        The frame bytes.
    """
    from ingest.adapters.manhole.codec import ALARM_BITS, FrameType, ManholeFrame
    from ingest.adapters.manhole.codec import encode as manhole_encode

    bits = 0
    for name in alarms:
        bits |= ALARM_BITS[name]
    if kind == "periodic":
        bits |= ALARM_BITS["periodic"]
    frame_kwargs: dict[str, Any] = {
        "battery": round(values["battery"]),
        "temperature_dc": round(values["temperature"] * 10),
        "water_distance_mm": round(values["water_distance"]),
        "tilt_dd": round(values["tilt"] * 10),
        "lid_open": values["lid_open"] >= 0.5,
        "ch4_dlel": round(values["ch4"] * 10),
        "h2s_dppm": round(values["h2s"] * 10),
        "alarms": bits,
        "rssi_dbm": max(-128, round(values["rssi"])),
    }
    frame = ManholeFrame(
        imei=imei_for(code),
        counter=counter % 0x10000,
        frame_type=FrameType[kind.upper()],
        device_time=max(0, int(t.timestamp())),
        **frame_kwargs,
    )
    return manhole_encode(frame)
