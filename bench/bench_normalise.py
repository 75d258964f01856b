"""Normalisation throughput: readings/s through :func:`streams.normalise.normalise`.

Pure CPU, no servers. Builds a realistic mixed batch — canonical JSON from air
stations (a third of the values in non-canonical units: mg/m³, ppm, °F, hPa),
noise monitors and smart poles, HJ 212 real-time frames from water stations and
binary manhole frames — and prints, for batches of ``--batch`` messages:

* ``decode only``: the per-message adapters alone (the part that stays per message);
* ``normalise``: the whole of :func:`streams.normalise.normalise` (decode, then the
  columnar units / quality / skew / dedup-key / row-building pass);
* ``columnar pass``: the difference, i.e. what normalisation adds to decoding.

Run: ``.venv/bin/python -m bench.bench_normalise [--messages 10000] [--batch 2000] [--repeat 3]``.
It asserts nothing: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from core.records import RawMessage, Transport
from devices.index import DeviceIndex, DeviceInfo
from devices.models import DeviceModel, ModelRegistry, shipped_models
from ingest.adapters.json.codec import encode as json_encode
from simulators.encoders import hj212_rtd, imei_for, manhole_frame
from streams.normalise import _decoder_for, normalise

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
SKEW = timedelta(minutes=5)

# (model key, device class code used in the device code, share of messages)
_MIX = (
    ("air-station@1", "0308", 0.45),
    ("noise-monitor@1", "0309", 0.15),
    ("smart-pole@1", "0310", 0.15),
    ("water-station@1", "0305", 0.15),
    ("manhole-cover@1", "0306", 0.10),
)
# Non-canonical units an air station may send, with the factor that keeps the value plausible.
_ALT_UNITS = {
    "pm25": ("mg/m3", 0.001),
    "pm10": ("mg/m3", 0.001),
    "co": ("ppm", 0.8),
    "temperature": ("degF", None),
    "pressure": ("hPa", 10.0),
}


def _value(rng: random.Random, model: DeviceModel, name: str) -> float:
    m = model.metrics[name]
    if m.kind == "boolean":
        return float(rng.random() < 0.1)
    # Mostly inside the physical range, a few percent outside (suspect).
    lo, hi = m.low, min(m.high, m.low + 500.0)
    v = rng.uniform(lo, hi) if rng.random() > 0.03 else hi * 1.5 + 1
    return round(v, 2)


def _message(rng: random.Random, model: DeviceModel, code: str, t: datetime) -> RawMessage:
    names = list(model.metrics)
    if model.adapter == "hj212":
        values = {n: _value(rng, model, n) for n in names if model.metrics[n].hj212}
        return RawMessage(
            f"hj212/10.0.0.{rng.randrange(250)}", hj212_rtd(model, code, t, values), NOW, Transport.HJ212, code
        )
    if model.adapter == "manhole-tlv":
        values = {n: _value(rng, model, n) for n in names}
        values["battery"] = min(values["battery"], 100.0)
        values["water_distance"] = min(values["water_distance"], 20000.0)
        frame = manhole_frame(code, t, values)
        return RawMessage(f"webhook/ctwing/{imei_for(code)}", frame, NOW, Transport.WEBHOOK, code)
    metrics: dict[str, float | tuple[float, str]] = {}
    for n in names:
        v = _value(rng, model, n)
        alt = _ALT_UNITS.get(n)
        if alt is not None and model.id == "air-station" and rng.random() < 0.33:
            unit, factor = alt
            metrics[n] = (round(v * 9 / 5 + 32, 2) if factor is None else v * factor, unit)
        else:
            metrics[n] = v
    fmt = rng.choice(("iso", "iso", "s", "ms"))
    return RawMessage(f"citybrain/up/{code}/telemetry", json_encode(t, metrics, ts_format=fmt), NOW, Transport.MQTT)


def build_batch(models: ModelRegistry, n_messages: int, seed: int = 5) -> tuple[list[RawMessage], DeviceIndex]:
    """A deterministic mixed batch and the ledger index that knows its devices."""
    rng = random.Random(seed)
    devices: list[tuple[DeviceInfo, DeviceModel]] = []
    for key, class_code, share in _MIX:
        model = models.get(key)
        for i in range(max(1, int(share * n_messages / 10))):  # ~10 messages per device
            code = f"350206{class_code}{i:07d}"
            attrs = {"imei": imei_for(code)} if model.adapter == "manhole-tlv" else {}
            devices.append((DeviceInfo(code, key, model.device_class, "350206", None, "active", attrs), model))
    index = DeviceIndex([d for d, _ in devices])
    batch = []
    for i in range(n_messages):
        dev, model = rng.choice(devices)
        # Whole seconds, minutes apart: late data, replays (same key) and a little clock skew.
        t = NOW - timedelta(seconds=60 * rng.randrange(0, 600))
        if rng.random() < 0.01:
            t = NOW + timedelta(hours=1)
        batch.append(_message(rng, model, dev.code, t))
        del i
    return batch, index


def _decode_only(batch: list[RawMessage], index: DeviceIndex, models: ModelRegistry) -> int:
    n = 0
    for raw in batch:
        code = raw.device_code or raw.topic.split("/")[2]
        dev = index.get(code)
        assert dev is not None
        model = models.get(dev.model)
        n += len(_decoder_for(raw, model)(raw, dev, model))
    return n


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=2_000, help="messages per normalise() call (a worker's batch)")
    p.add_argument("--repeat", type=int, default=3, help="best of N runs")
    args = p.parse_args(argv)
    models = shipped_models()
    batch, index = build_batch(models, args.messages)
    chunks = [batch[i : i + args.batch] for i in range(0, len(batch), args.batch)]
    readings = sum(len(normalise(c, index, models, now=NOW, max_future_skew=SKEW).readings) for c in chunks)

    def run_normalise() -> None:
        for c in chunks:
            normalise(c, index, models, now=NOW, max_future_skew=SKEW)

    def run_decode() -> None:
        for c in chunks:
            _decode_only(c, index, models)

    t_norm = _best(run_normalise, args.repeat)
    t_dec = _best(run_decode, args.repeat)
    print(f"{len(batch)} messages, {readings} readings, batches of {args.batch}; best of {args.repeat}")
    print(f"{'path':<16} {'readings/s':>12} {'µs/reading':>11}")
    for name, secs in (("decode only", t_dec), ("normalise", t_norm), ("columnar pass", max(t_norm - t_dec, 1e-9))):
        print(f"{name:<16} {readings / secs:>12,.0f} {secs / readings * 1e6:>11.2f}")


if __name__ == "__main__":
    main()
