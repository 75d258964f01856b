"""The unit each HJ 212 factor travels in: the device model's, else the station type's default.

HJ 212-2017 附录B lists the factor codes with the units of *pollution-source*
monitoring: SO2 (a21026), NO2 (a21004), NOx (a21002) and CO (a21005) in mg/m³
(docs/standards.md §2.6). Ambient (environmental-quality) stations report the
same codes in the units of the ambient-air standards: SO2, NO2, NOx, O3 and
particulates in µg/m³, CO in mg/m³ (GB 3095-2012 Table 1 and 2, docs/standards.md
§3.5; HJ 633 Table 1, §3.1, whose breakpoints use the same units). A
code alone does not say its unit: an ambient SO2 of 6 is 6 µg/m³, a stack's
SO2 of 6 is 6 mg/m³. Reading the first as mg/m³ stored it 1,000× too high
(issue 15).

So the unit of a factor is decided, in this order, by

1. the device model: a metric's ``hj212_unit`` (``devices/data/models/*.yaml``);
2. the station type (ST, HJ 212-2017 system codes, docs/standards.md §2.3): the
   table :data:`ST_UNITS` below, for the model's ``hj212_st`` (the ledger's word
   for what the station is; the frame's own ST only when the model has none);
3. the model's canonical unit for the metric (no conversion).

Pure: no I/O. The stream-side decoder and the simulators' encoders both use
:func:`wire_units`, so what simulated stations send and what the platform reads
cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from devices.models import DeviceModel

__all__ = [
    "AMBIENT_AIR_UNITS",
    "SOURCE_COU_UNITS",
    "SOURCE_GAS_UNITS",
    "SOURCE_WATER_UNITS",
    "ST_UNITS",
    "cou_units",
    "wire_units",
]

#: Ambient air quality stations and micro-stations: GB 3095-2012 Table 1/2 units
#: (docs/standards.md §3.5). CO is the one gas in mg/m³.
AMBIENT_AIR_UNITS: Mapping[str, str] = MappingProxyType(
    {
        "a21026": "ug/m3",  # SO2
        "a21004": "ug/m3",  # NO2
        "a21002": "ug/m3",  # NOx
        "a05024": "ug/m3",  # O3 (de-facto code, HJ 524)
        "a21005": "mg/m3",  # CO
        "a34004": "ug/m3",  # PM2.5
        "a34002": "ug/m3",  # PM10
        "a34001": "ug/m3",  # TSP
    }
)

#: Stack and flue-gas monitoring: the units of HJ 212-2017 附录B (docs/standards.md §2.6).
#: Only the gases: the transcribed table's particulate unit (ng/m³) is doubtful, so a
#: source model must declare its particulates' ``hj212_unit`` itself.
SOURCE_GAS_UNITS: Mapping[str, str] = MappingProxyType(
    {
        "a21026": "mg/m3",  # SO2
        "a21004": "mg/m3",  # NO2
        "a21002": "mg/m3",  # NOx
        "a21005": "mg/m3",  # CO
        # Particulates and heavy metals of a stack (docs/standards.md, "HJ 212-2017 Appendix B").
        "a34013": "mg/m3",  # 烟尘
        "a20057": "mg/m3",  # 汞及其化合物
        "a20025": "mg/m3",  # 镉及其化合物
        "a20043": "mg/m3",  # 铅及其化合物
        "a20063": "mg/m3",  # 镍及其化合物
        "a20016": "mg/m3",  # 铍及其化合物
        "a20091": "mg/m3",  # 锡及其化合物
        "a00000": "m3/s",  # 废气 (flow)
    }
)

#: Wastewater sources (ST=32 地表水体环境污染源): the units of HJ 212-2017 附录B, which are
#: not all mg/L. Total mercury, cadmium, hexavalent chromium, arsenic, lead, beryllium and
#: selenium travel in µg/L, thallium and alkyl mercury in ng/L (docs/standards.md, "HJ
#: 212-2017 Appendix B"). A station's Hg of 0.5 is 0.5 µg/L = 0.0005 mg/L.
SOURCE_WATER_UNITS: Mapping[str, str] = MappingProxyType(
    {
        "w00000": "L/s",  # 污水 (flow)
        "w01001": "pH",
        "w01018": "mg/L",  # COD
        "w21003": "mg/L",  # NH3-N
        "w21011": "mg/L",  # TP
        "w21001": "mg/L",  # TN
        "w20111": "ug/L",  # 总汞
        "w20113": "ng/L",  # 烷基汞
        "w20115": "ug/L",  # 总镉
        "w20116": "mg/L",  # 总铬
        "w20117": "ug/L",  # 六价铬
        "w20119": "ug/L",  # 总砷
        "w20120": "ug/L",  # 总铅
        "w20121": "mg/L",  # 总镍
        "w20122": "mg/L",  # 总铜
        "w20123": "mg/L",  # 总锌
        "w20124": "mg/L",  # 总锰
        "w20126": "mg/L",  # 总银
        "w20127": "ug/L",  # 总铍
        "w20128": "ug/L",  # 总硒
        "w20089": "ng/L",  # 铊
    }
)

#: Unit of the discharge amount (``-Cou``) per code: 附录B's 排放量 column. A pollutant in
#: mg/L or mg/m³ is counted in kg, one in µg/L in g, one in ng/L in mg; flows in m³.
SOURCE_COU_UNITS: Mapping[str, str] = MappingProxyType(
    {
        **{code: "m3" for code in ("w00000", "a00000")},
        **{
            code: {"mg/L": "kg", "ug/L": "g", "ng/L": "mg", "mg/m3": "kg"}[unit]
            for code, unit in (*SOURCE_WATER_UNITS.items(), *SOURCE_GAS_UNITS.items())
            if unit in ("mg/L", "ug/L", "ng/L", "mg/m3")
        },
    }
)

#: Default unit per factor code, by HJ 212 system code ST (docs/standards.md §2.3).
#: 22 空气质量监测; 31 大气环境污染源; 51 烟气排放过程监控; 32 地表水体环境污染源;
#: 52 污水排放过程监控. Other types (water 21, noise 23 …) report in the units their
#: models declare canonical (mg/L, pH, dB …).
ST_UNITS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "22": AMBIENT_AIR_UNITS,
        "31": SOURCE_GAS_UNITS,
        "51": SOURCE_GAS_UNITS,
        "32": SOURCE_WATER_UNITS,
        "52": SOURCE_WATER_UNITS,
    }
)


def wire_units(model: DeviceModel, st: str | None = None) -> dict[str, str]:
    """Factor code → the unit a station of ``model`` sends it in over HJ 212.

    Args:
        model: The device's model (its metrics' ``hj212`` codes and ``hj212_unit``).
        st: The frame's ST, used only when the model declares no ``hj212_st``.

    Returns:
        One entry per metric with an HJ 212 code: the model's ``hj212_unit``, else the
        station type's default, else the metric's canonical unit.
    """
    defaults = ST_UNITS.get(model.hj212_st or st or "", {})
    out: dict[str, str] = {}
    for metric in model.metrics.values():
        code = metric.hj212
        if code is None:
            continue
        out[code] = metric.hj212_unit or defaults.get(code) or metric.unit
    return out


def cou_units(model: DeviceModel) -> dict[str, str]:
    """Factor code → the unit of its discharge amount (``-Cou``) over HJ 212.

    附录B's 排放量 unit for the codes it lists (:data:`SOURCE_COU_UNITS`), else the
    metric's declared ``cou_unit``. Only metrics with a ``cou_unit`` have one.
    """
    out: dict[str, str] = {}
    for metric in model.metrics.values():
        if metric.hj212 is None:
            continue
        cou = model.metrics.get(f"{metric.name}{next(iter(model.hj212_intervals.values()), '')}_cou")
        if cou is None:
            continue
        out[metric.hj212] = SOURCE_COU_UNITS.get(metric.hj212, cou.unit)
    return out
