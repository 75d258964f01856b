"""Units and conversions to canonical units.

Every value is converted to its model's canonical unit at ingest. A unit that
is not known, or that cannot be converted to the canonical unit, is a
rejection with a reason — never a guess.

Conversions are affine (``canonical = value * scale + offset``), so a whole
column converts with one numpy expression. Gas ppm → mg/m³ needs the molar
mass, which the metric declares in its model.
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.errors import UnitError

__all__ = ["ALIASES", "Conversion", "canonical_unit_name", "conversion"]

# Molar volume at the reference state of GB 3095-2012 (as amended 2018):
# 298.15 K and 101.325 kPa → 24.465 L/mol. Gas ppm (v/v) × M / 24.465 = mg/m³.
MOLAR_VOLUME_L = 24.465

# Spellings seen in the field → one canonical spelling.
ALIASES: dict[str, str] = {
    "ug/m3": "ug/m3",
    "µg/m3": "ug/m3",
    "μg/m3": "ug/m3",
    "µg/m³": "ug/m3",
    "μg/m³": "ug/m3",
    "ug/m³": "ug/m3",
    "mg/m3": "mg/m3",
    "mg/m³": "mg/m3",
    "ng/m3": "ng/m3",
    "ng/m³": "ng/m3",
    "ppm": "ppm",
    "ppb": "ppb",
    "mg/l": "mg/L",
    "mg/L": "mg/L",
    "ug/l": "ug/L",
    "ug/L": "ug/L",
    "µg/L": "ug/L",
    "c": "degC",
    "°c": "degC",
    "°C": "degC",
    "degc": "degC",
    "degC": "degC",
    "℃": "degC",
    "f": "degF",
    "°f": "degF",
    "°F": "degF",
    "degf": "degF",
    "degF": "degF",
    "k": "K",
    "K": "K",
    "%": "%",
    "%rh": "%",
    "pct": "%",
    "m": "m",
    "cm": "cm",
    "mm": "mm",
    "m/s": "m/s",
    "km/h": "km/h",
    "deg": "deg",
    "°": "deg",
    "degree": "deg",
    "kpa": "kPa",
    "kPa": "kPa",
    "hpa": "hPa",
    "hPa": "hPa",
    "pa": "Pa",
    "Pa": "Pa",
    "db": "dB(A)",
    "dB": "dB(A)",
    "dB(A)": "dB(A)",
    "dba": "dB(A)",
    "dBA": "dB(A)",
    "v": "V",
    "V": "V",
    "mv": "mV",
    "mV": "mV",
    "a": "A",
    "A": "A",
    "ma": "mA",
    "mA": "mA",
    "w": "W",
    "W": "W",
    "kw": "kW",
    "kW": "kW",
    "kwh": "kWh",
    "kWh": "kWh",
    "ntu": "NTU",
    "NTU": "NTU",
    "us/cm": "uS/cm",
    "uS/cm": "uS/cm",
    "µS/cm": "uS/cm",
    "ms/cm": "mS/cm",
    "mS/cm": "mS/cm",
    "ph": "pH",
    "pH": "pH",
    "1": "1",
    "": "1",
    "bool": "1",
    "s": "s",
    "min": "min",
    "h": "h",
    "dbm": "dBm",
    "dBm": "dBm",
    "l/s": "L/s",
    "L/s": "L/s",
    "m3/h": "m3/h",
    "m3/s": "m3/s",
    "m³/s": "m3/s",
    "m³/h": "m3/h",
    "ng/l": "ng/L",
    "ng/L": "ng/L",
    "kg": "kg",
    "g": "g",
    "mg": "mg",
    "t": "t",
    "m3": "m3",
    "m³": "m3",
    "l": "L",
    "L": "L",
}

# Linear families: unit → (family, factor to the family's base unit).
_LINEAR: dict[str, tuple[str, float]] = {
    "ug/m3": ("mass_conc_air", 1.0),
    "mg/m3": ("mass_conc_air", 1000.0),
    "ng/m3": ("mass_conc_air", 0.001),
    "mg/L": ("mass_conc_water", 1.0),
    "ug/L": ("mass_conc_water", 0.001),
    "ng/L": ("mass_conc_water", 1e-6),
    "m": ("length", 1.0),
    "cm": ("length", 0.01),
    "mm": ("length", 0.001),
    "m/s": ("speed", 1.0),
    "km/h": ("speed", 1 / 3.6),
    "kPa": ("pressure", 1000.0),
    "hPa": ("pressure", 100.0),
    "Pa": ("pressure", 1.0),
    "V": ("voltage", 1.0),
    "mV": ("voltage", 0.001),
    "A": ("current", 1.0),
    "mA": ("current", 0.001),
    "W": ("power", 1.0),
    "kW": ("power", 1000.0),
    "uS/cm": ("conductivity", 1.0),
    "mS/cm": ("conductivity", 1000.0),
    "s": ("duration", 1.0),
    "min": ("duration", 60.0),
    "h": ("duration", 3600.0),
    "L/s": ("flow", 1.0),
    "m3/h": ("flow", 1000 / 3600),
    "m3/s": ("flow", 1000.0),
    # Discharge amounts (HJ 212 -Cou): masses and volumes (HJ 212-2017 附录B 排放量).
    "kg": ("mass", 1000.0),
    "g": ("mass", 1.0),
    "mg": ("mass", 0.001),
    "t": ("mass", 1_000_000.0),
    "m3": ("volume", 1000.0),
    "L": ("volume", 1.0),
}
_IDENTITY = {"%", "deg", "dB(A)", "kWh", "NTU", "pH", "1", "dBm", "degC"}


@dataclass(frozen=True, slots=True)
class Conversion:
    """``canonical = value * scale + offset``."""

    scale: float
    offset: float = 0.0

    def apply(self, value: float) -> float:
        return value * self.scale + self.offset


IDENTITY = Conversion(1.0)


def canonical_unit_name(unit: str) -> str:
    """The canonical spelling of a unit.

    Raises:
        UnitError: the unit is unknown.
    """
    if not isinstance(unit, str):
        raise UnitError(f"unit must be a string, got {type(unit).__name__}")
    key = unit.strip()
    found = ALIASES.get(key) or ALIASES.get(key.lower())
    if found is None:
        raise UnitError(f"unknown unit {unit!r}")
    return found


def conversion(from_unit: str, to_unit: str, *, molar_mass: float | None = None) -> Conversion:
    """The affine conversion from ``from_unit`` to ``to_unit``.

    Args:
        from_unit: Unit as sent (any known spelling).
        to_unit: The canonical unit.
        molar_mass: g/mol, needed for ppm/ppb ↔ mass concentration of a gas.

    Raises:
        UnitError: unknown unit, or no conversion between the two.
    """
    src = canonical_unit_name(from_unit)
    dst = canonical_unit_name(to_unit)
    if src == dst:
        return IDENTITY
    temps = {"degC": (1.0, 0.0), "degF": (5 / 9, -32 * 5 / 9), "K": (1.0, -273.15)}
    if src in temps and dst in temps:
        # to °C first, then from °C
        s1, o1 = temps[src]
        s2, o2 = temps[dst]
        return Conversion(s1 / s2, (o1 - o2) / s2)
    if src in ("ppm", "ppb") and _LINEAR.get(dst, ("", 0))[0] == "mass_conc_air":
        if molar_mass is None or molar_mass <= 0:
            raise UnitError(f"converting {src} to {dst} needs the gas's molar mass")
        # ppm × M / Vm gives mg/m³ at the reference state (see MOLAR_VOLUME_L).
        mg_m3 = molar_mass / MOLAR_VOLUME_L * (1.0 if src == "ppm" else 0.001)
        return Conversion(mg_m3 * 1000.0 / _LINEAR[dst][1])
    if src in _LINEAR and dst in _LINEAR:
        fam_s, f_s = _LINEAR[src]
        fam_d, f_d = _LINEAR[dst]
        if fam_s == fam_d:
            return Conversion(f_s / f_d)
    if src in _IDENTITY or dst in _IDENTITY or src in _LINEAR or dst in _LINEAR:
        raise UnitError(f"cannot convert {from_unit!r} to {to_unit!r}")
    raise UnitError(f"cannot convert {from_unit!r} to {to_unit!r}")
