"""Fault plans change the output as documented, and log their ground truth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devices.models import shipped_models
from ingest.adapters.hj212.codec import decode as hj212_decode
from ingest.adapters.json.codec import decode as json_decode
from ingest.adapters.manhole.codec import decode as manhole_decode
from ingest.errors import DecodeError
from simulators.encoders import hj212_rtd, json_telemetry, manhole_frame
from simulators.faults import Fault, FaultInjector, FaultKind, FaultPlan, corrupt, load_fault_plan
from simulators.manhole import ManholeCover
from simulators.runner import parse_mix

T0 = datetime(2026, 11, 29, tzinfo=UTC)
CODES = [f"3502030308500{i:03d}0" for i in range(20)]
A, B = CODES[0], CODES[1]


def run(plan: FaultPlan, code: str = A, n: int = 10, step_s: int = 60) -> list:
    inj = FaultInjector(plan, CODES, T0)
    out = []
    for i in range(n):
        t = T0 + timedelta(seconds=step_s * i)
        out += inj.process(code, t, {"pm25": 10.0 + i, "no2": 20.0})
    return out + inj.flush(T0 + timedelta(seconds=step_s * n), final=True)


def test_no_fault_passes_records_through() -> None:
    out = run(FaultPlan((Fault(FaultKind.STUCK, devices=(B,)),)))
    assert [e.records[0].values["pm25"] for e in out] == [10.0 + i for i in range(10)]
    assert all(e.copies == 1 and not e.records[0].faults for e in out)


def test_fraction_targets_are_seeded() -> None:
    plan = FaultPlan((Fault(FaultKind.DROPOUT, fraction=0.25),), seed=3)
    assert plan.targets(CODES) == plan.targets(list(reversed(CODES)))
    assert len(plan.targets(CODES)[0]) == 5
    assert plan.targets(CODES) != FaultPlan((Fault(FaultKind.DROPOUT, fraction=0.25),), seed=4).targets(CODES)


def test_value_faults() -> None:
    stuck = run(FaultPlan((Fault(FaultKind.STUCK, devices=(A,), metrics=("pm25",), start_s=180),)))
    assert [e.records[0].values["pm25"] for e in stuck][3:] == [13.0] * 7
    assert stuck[5].records[0].truth == {"pm25": 15.0} and stuck[5].records[0].faults == ["stuck"]
    drift = run(FaultPlan((Fault(FaultKind.DRIFT, devices=(A,), metrics=("no2",), magnitude=1.0),)), step_s=3600)
    assert drift[4].records[0].values["no2"] == pytest.approx(20.0 * 5)
    spikes = run(FaultPlan((Fault(FaultKind.SPIKE, devices=(A,), probability=0.5, magnitude=20),), seed=1), n=40)
    hit = [e for e in spikes if "spike" in e.records[0].faults]
    assert 5 < len(hit) < 35 and all(e.records[0].values["no2"] == 400.0 for e in hit)
    burst = run(FaultPlan((Fault(FaultKind.NOISE_BURST, devices=(A,), metrics=("no2",)),)), n=20)
    assert len({e.records[0].values["no2"] for e in burst}) > 10


def test_dropout_and_offline_withhold_records_but_log_them() -> None:
    out = run(FaultPlan((Fault(FaultKind.OFFLINE, devices=(A,), start_s=120, end_s=300),)))
    assert [e.copies for e in out] == [1, 1, 0, 0, 0, 1, 1, 1, 1, 1]
    assert out[2].records[0].faults == ["offline"]
    inj = FaultInjector(FaultPlan((Fault(FaultKind.OFFLINE, devices=(A,), start_s=120, end_s=300),)), CODES, T0)
    assert inj.offline(A, T0 + timedelta(seconds=200)) and not inj.offline(A, T0 + timedelta(seconds=300))
    drop = run(FaultPlan((Fault(FaultKind.DROPOUT, devices=(A,), probability=1.0),)))
    assert all(e.copies == 0 and e.records[0].faults == ["dropout"] for e in drop)


def test_transport_faults() -> None:
    skew = run(FaultPlan((Fault(FaultKind.CLOCK_SKEW, devices=(A,), magnitude=-7200),)), n=1)[0].records[0]
    assert skew.ts == skew.event_time - timedelta(hours=2) and skew.faults == ["clock_skew"]
    dup = run(FaultPlan((Fault(FaultKind.DUPLICATE, devices=(A,)),)), n=3)
    assert [e.copies for e in dup] == [2, 2, 2]
    victim = run(FaultPlan((Fault(FaultKind.IMPERSONATE, devices=(A,)),)), n=2)
    assert victim[0].topic_code in CODES and victim[0].topic_code != A and victim[0].code == A
    bad = run(FaultPlan((Fault(FaultKind.MALFORMED, devices=(A,)),)), n=2)
    assert [e.corrupt for e in bad] == ["malformed", "malformed"]


def test_late_batches_and_out_of_order() -> None:
    late = run(FaultPlan((Fault(FaultKind.LATE_BATCH, devices=(A,), magnitude=300),)), n=10)
    sent = [e for e in late if e.copies]
    assert all(e.batch for e in sent)
    assert sum(len(e.records) for e in sent) == 10 and len(sent) < 10
    ooo = run(FaultPlan((Fault(FaultKind.OUT_OF_ORDER, devices=(A,), magnitude=300),)), n=6)
    times = [e.records[0].event_time for e in ooo]
    assert sorted(times) == [T0 + timedelta(seconds=60 * i) for i in range(6)] and times != sorted(times)


def test_corrupted_payloads_are_rejected_by_the_platform_decoders() -> None:
    models = shipped_models()
    air = models.get("air-station")
    values = {"pm25": 35.0, "no2": 20.0}
    with pytest.raises(DecodeError):
        json_decode(corrupt(json_telemetry(air, T0, values), "malformed", "json"), device_code=A, received_at=T0)
    frame = hj212_rtd(air, A, T0, values)
    with pytest.raises(DecodeError) as info:
        hj212_decode(corrupt(frame, "bad_crc", "hj212"))
    assert info.value.reason == "bad_crc"
    with pytest.raises(DecodeError):
        hj212_decode(corrupt(frame, "malformed", "hj212"))
    cover = ManholeCover("35020301025000001", seed=1)
    binary = manhole_frame(cover.code, T0, cover.sample(T0))
    with pytest.raises(DecodeError) as info:
        manhole_decode(corrupt(binary, "bad_crc", "manhole"))
    assert info.value.reason == "bad_checksum"


def test_a_fault_needs_a_target_and_sane_numbers() -> None:
    with pytest.raises(ValueError):
        Fault(FaultKind.SPIKE)
    with pytest.raises(ValueError):
        Fault(FaultKind.SPIKE, devices=(A,), probability=2)
    with pytest.raises(ValueError):
        Fault("bogus", devices=(A,))  # type: ignore[arg-type]


def test_fault_plans_load_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "seed: 7\nfaults:\n"
        "  - {kind: spike, fraction: 0.1, probability: 0.05, magnitude: 8}\n"
        "  - {kind: offline, devices: ['35020303085000003'], from: 10m, to: 40m}\n",
        encoding="utf-8",
    )
    plan = load_fault_plan(path)
    assert plan.seed == 7
    assert plan.faults[0] == Fault(FaultKind.SPIKE, fraction=0.1, probability=0.05, magnitude=8)
    assert (plan.faults[1].start_s, plan.faults[1].end_s) == (600, 2400)
    path.write_text("faults: [{kind: meltdown, fraction: 0.1}]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="faults\\[0\\]"):
        load_fault_plan(path)


def test_city_mix_parsing() -> None:
    assert parse_mix("air-station=10, manhole-cover=200") == {"air-station": 10, "manhole-cover": 200}
    with pytest.raises(ValueError):
        parse_mix("air-station")


def test_data_flags_mark_values_the_station_itself_disowns() -> None:
    plan = FaultPlan((Fault(FaultKind.DATA_FLAG, devices=(A,), metrics=("pm25",), flag="C", start_s=120),))
    out = run(plan, n=4)
    assert [e.records[0].flags for e in out] == [{}, {}, {"pm25": "C"}, {"pm25": "C"}]
    assert out[2].records[0].faults == ["data_flag"] and out[2].records[0].values["pm25"] == 12.0
    every = run(FaultPlan((Fault(FaultKind.DATA_FLAG, devices=(A,)),)), n=1)[0].records[0]
    assert every.flags == {"pm25": "M", "no2": "M"}  # default: maintenance, every metric
    with pytest.raises(ValueError, match="data flag"):
        Fault(FaultKind.DATA_FLAG, devices=(A,), flag="N")


def test_data_flag_plans_load_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("faults:\n  - {kind: data_flag, devices: ['A1'], flag: C, from: 1h, to: 3h}\n", encoding="utf-8")
    (fault,) = load_fault_plan(path).faults
    assert (fault.kind, fault.flag, fault.start_s, fault.end_s) == (FaultKind.DATA_FLAG, "C", 3600, 10800)
