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

__all__ = ["AMBIENT_AIR_UNITS", "SOURCE_GAS_UNITS", "ST_UNITS", "wire_units"]

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
    }
)

#: Default unit per factor code, by HJ 212 system code ST (docs/standards.md §2.3).
#: 22 空气质量监测; 31 大气环境污染源; 51 烟气排放过程监控. Other types (water 21/32,
#: noise 23 …) report in the units their models declare canonical (mg/L, pH, dB …).
ST_UNITS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "22": AMBIENT_AIR_UNITS,
        "31": SOURCE_GAS_UNITS,
        "51": SOURCE_GAS_UNITS,
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
