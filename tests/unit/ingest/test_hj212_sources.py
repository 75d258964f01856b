"""Pollution-source frames (ST=31 flue gas, ST=32 wastewater) through normalisation (issue 19).

Fixtures in tests/fixtures/hj212:

* ``wastewater_2011_published.bin`` and ``fluegas_2061_published.bin`` are published example
  packets, byte for byte (length and CRC ``D941`` / ``0E40`` as published): the commented test
  frames of a public PHP HJ 212 receiver (a ThinkPHP ``Index::index`` controller), found with the
  search tool's exact-string index for ``ST=31;CN=2061``.
* ``wastewater_2011_heavy_metals_adapted.bin`` is the heavy-metal real-time packet quoted in a
  public Java water receiver's comment (found for ``w20117``): its CP lacks two ``;`` and it
  was sent as ST=21 without QN/Flag; here with QN, ST=32, Flag=5 and the ``;`` restored, so
  the CRC is recomputed. Values unchanged (Cr6+ ``w20117-Rtd=5`` µg/L).
* ``wastewater_2061_heavy_metals.bin`` and ``fluegas_2061_heavy_metals.bin`` are ours: an hour of
  every heavy metal the models carry, with Min/Max/Cou, and one M/C-flagged factor each.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.records import Quality, RawMessage, Transport
from devices.index import DeviceIndex, DeviceInfo
from devices.models import shipped_models
from ingest.adapters.hj212 import decode
from ingest.adapters.hj212.codec import crc16
from ingest.adapters.hj212.units import SOURCE_COU_UNITS, SOURCE_WATER_UNITS
from streams.normalise import normalise

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "hj212"
WW = "35020603100000017"
FG = "35020603080000018"
NOW = datetime(2026, 12, 7, 2, 30, tzinfo=UTC)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def readings(name: str, code: str, model: str, now: datetime = NOW) -> dict[str, tuple[float, str, Quality]]:
    cls = "wastewater" if model.startswith("wastewater") else "fluegas"
    dev = DeviceInfo(code, model, cls, "350206", None, "active", {})
    raw = RawMessage("hj212/127.0.0.1:5000", fixture(name), now, Transport.HJ212, code)
    out = normalise([raw], DeviceIndex([dev]), shipped_models(), now=now, max_future_skew=timedelta(days=4000))
    assert out.rejects == []
    return {r.metric: (round(r.value, 9), r.unit, r.quality) for r, _ in out.readings}


def test_published_frames_are_byte_exact_with_their_published_crc() -> None:
    for name, crc, length in (
        ("wastewater_2011_published.bin", "D941", 437),
        ("fluegas_2061_published.bin", "0E40", 612),
    ):
        data = fixture(name)
        assert data[2:6] == f"{length:04d}".encode() and data[-6:-2] == crc.encode()
        assert f"{crc16(data[6:-6]):04X}" == crc
        decode(data)


def test_published_wastewater_realtime_frame_gives_flow_cod_and_nutrients_in_mg_l() -> None:
    got = readings("wastewater_2011_published.bin", WW, "wastewater-source@1", datetime(2024, 1, 23, 5, tzinfo=UTC))
    assert got["cod"] == (4653.8, "mg/L", Quality.GOOD)
    assert got["nh3n"] == (43.58, "mg/L", Quality.GOOD)
    assert got["tp"] == (1.58, "mg/L", Quality.GOOD)
    assert got["tn"] == (83.53, "mg/L", Quality.GOOD)
    assert got["ph"] == (7.17, "pH", Quality.GOOD)
    assert got["flow"] == (3.41, "L/s", Quality.GOOD)  # w00000 travels in L/s (附录B)


def test_published_fluegas_hour_frame_gives_the_flow_and_its_discharged_volume() -> None:
    got = readings("fluegas_2061_published.bin", FG, "fluegas-source@1", datetime(2024, 1, 23, 2, tzinfo=UTC))
    assert got["flow_hour"] == (5.331, "m3/s", Quality.GOOD)
    assert got["flow_hour_min"] == (5.051, "m3/s", Quality.GOOD)
    assert got["flow_hour_max"] == (5.617, "m3/s", Quality.GOOD)
    assert got["flow_hour_cou"] == (19191.973, "m3", Quality.GOOD)
    assert got["flue_velocity_hour"][0] == 7.029 and got["flue_pressure_hour"][0] == -0.026
    assert "flow" not in got  # an hourly mean is never the real-time value


def test_heavy_metals_in_ug_l_are_stored_in_mg_l_with_discharge_in_kg() -> None:
    got = readings("wastewater_2061_heavy_metals.bin", WW, "wastewater-source@1")
    assert got["hg_hour"] == (0.05, "mg/L", Quality.GOOD)  # 50 µg/L (附录B: 总汞 µg/L)
    assert got["hg_hour_min"][0] == 0.04 and got["hg_hour_max"][0] == 0.061
    assert got["hg_hour_cou"] == (0.0018, "kg", Quality.GOOD)  # 1.8 g (附录B: 总汞 排放量 g)
    assert got["cd_hour"][0] == 0.02 and got["cr6_hour"][0] == 0.1 and got["arsenic_hour"][0] == 0.04
    assert got["cr_hour"] == (0.3, "mg/L", Quality.GOOD)  # 总铬 is mg/L on the wire already
    assert got["ni_hour_cou"] == (0.0072, "kg", Quality.GOOD)
    assert got["pb_hour"] == (0.1, "mg/L", Quality.SUSPECT)  # flagged M: kept, suspect
    assert got["flow_hour_cou"] == (36.0, "m3", Quality.GOOD)
    assert got["cod_hour_cou"] == (1.8, "kg", Quality.GOOD)


def test_adapted_published_heavy_metal_frame_reads_cr6_in_ug_l() -> None:
    got = readings(
        "wastewater_2011_heavy_metals_adapted.bin", WW, "wastewater-source@1", datetime(2018, 3, 15, 9, tzinfo=UTC)
    )
    assert got["cr6"] == (0.005, "mg/L", Quality.GOOD)  # 5 µg/L
    # w20141-w20144 (砷, 汞, 镉, 铅 without 总) are other 附录B codes the model does not carry: skipped.
    assert "hg" not in got and got["cod"][0] == 1.31


def test_fluegas_heavy_metal_hour_frame() -> None:
    got = readings("fluegas_2061_heavy_metals.bin", FG, "fluegas-source@1")
    assert got["so2_hour"] == (80.0, "mg/m3", Quality.GOOD)
    assert got["so2_hour_cou"] == (5.76, "kg", Quality.GOOD)
    assert got["hg_hour"] == (0.02, "mg/m3", Quality.GOOD)
    assert got["hg_hour_cou"] == (0.00144, "kg", Quality.GOOD)
    assert got["dust_hour"][0] == 15.0 and got["nox_hour"][0] == 90.0
    assert got["ni_hour"] == (0.1, "mg/m3", Quality.SUSPECT)  # flagged C
    assert got["flow_hour_cou"] == (72000.0, "m3", Quality.GOOD)


@pytest.mark.parametrize(
    ("code", "unit", "cou"),
    [("w20111", "ug/L", "g"), ("w20113", "ng/L", "mg"), ("w20116", "mg/L", "kg"), ("w20117", "ug/L", "g")],
)
def test_appendix_b_rows_as_cited_in_docs(code: str, unit: str, cou: str) -> None:
    assert SOURCE_WATER_UNITS[code] == unit and SOURCE_COU_UNITS[code] == cou
    assert f"| {code} |" in (Path(__file__).resolve().parents[3] / "docs" / "standards.md").read_text()
