"""Smart multifunction pole (智慧多功能杆) fault conditions.

The pole standards (GB/T 40994-2021 [M] and the Shenzhen 《多功能智能杆系统设计
与工程建设规范》, ``docs/standards.md`` §6.3) list what a
pole carries — lamp, cabinet (综合箱), EV charger, sensors — but set no fault
thresholds. The defaults below are engineering choices, all [M] and all
parameters.
"""

from __future__ import annotations

import enum
import math

from alerts.errors import IndicatorError

__all__ = [
    "CHARGER_IDLE_MAX_CURRENT_A",
    "LAMP_OFF_MAX_CURRENT_A",
    "LAMP_ON_MIN_CURRENT_A",
    "POLE_TILT_THRESHOLD_DEG",
    "CabinetAlarm",
    "ChargerFault",
    "ChargerStatus",
    "LampFault",
    "cabinet_alarms",
    "charger_fault",
    "lamp_fault",
    "pole_tilted",
]

# [M] A lamp switched on that draws less than this is dark (driver or LED
# failure, open circuit). 0.05 A is ~10 % of a 100 W LED at 220 V, so a lamp
# dimmed to 10 % still passes.
LAMP_ON_MIN_CURRENT_A = 0.05
# [M] A lamp switched off that draws more than this is lit or leaking
# (relay stuck, "长明灯").
LAMP_OFF_MAX_CURRENT_A = 0.05
# [M] Pole tilt from its installed angle that raises an alarm (§6.3 lists
# "tilt of pole" as typical data; no threshold is published).
POLE_TILT_THRESHOLD_DEG = 5.0
# [M] An idle charger that draws more than this has a stuck (welded) contactor
# or a leak.
CHARGER_IDLE_MAX_CURRENT_A = 0.5


class LampFault(enum.StrEnum):
    """How a street lamp's current contradicts its switch state."""

    NO_CURRENT = "no_current"
    """Switched on but (almost) no current: the lamp is dark."""
    CURRENT_WHEN_OFF = "current_when_off"
    """Switched off but drawing current: the lamp stays lit or leaks."""


class CabinetAlarm(enum.StrEnum):
    """Pole cabinet (综合箱) alarms."""

    DOOR_OPEN = "door_open"
    WATER_INGRESS = "water_ingress"
    SMOKE = "smoke"


class ChargerStatus(enum.StrEnum):
    """State an EV charger on the pole reports."""

    IDLE = "idle"
    CHARGING = "charging"
    FAULT = "fault"


class ChargerFault(enum.StrEnum):
    """Why a charger is considered faulty."""

    REPORTED = "reported"
    """The charger itself reports a fault."""
    CURRENT_WHEN_IDLE = "current_when_idle"
    """Idle but current flows: contactor stuck closed or leakage."""


def _current(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise IndicatorError(f"{what} must be a finite number, not {value!r}")
    if value < 0:
        raise IndicatorError(f"{what} must be ≥ 0, not {value!r}")
    return float(value)


def lamp_fault(
    is_on: bool,
    current_a: float,
    *,
    on_min_current_a: float = LAMP_ON_MIN_CURRENT_A,
    off_max_current_a: float = LAMP_OFF_MAX_CURRENT_A,
) -> LampFault | None:
    """Lamp fault from its switch state and measured current.

    Args:
        is_on: Whether the lamp is switched (commanded) on.
        current_a: Measured lamp current in A (RMS magnitude).
        on_min_current_a: Below this an "on" lamp is dark, default 0.05 A [M].
        off_max_current_a: Above this an "off" lamp is lit, default 0.05 A [M].

    Returns:
        The :class:`LampFault`, or ``None`` when state and current agree.

    Raises:
        IndicatorError: A negative or non-finite current.
    """
    current = _current(current_a, "current_a")
    if is_on and current < on_min_current_a:
        return LampFault.NO_CURRENT
    if not is_on and current > off_max_current_a:
        return LampFault.CURRENT_WHEN_OFF
    return None


def pole_tilted(
    angle_deg: float,
    *,
    background_deg: float = 0.0,
    threshold_deg: float = POLE_TILT_THRESHOLD_DEG,
) -> bool:
    """Whether a pole leans more than the threshold from its installed angle.

    Args:
        angle_deg: Measured tilt from vertical, degrees.
        background_deg: Angle recorded at installation.
        threshold_deg: Alarm threshold, default 5° [M].

    Returns:
        ``True`` if ``|angle − background| > threshold``.

    Raises:
        IndicatorError: Non-finite angles or a negative threshold.
    """
    for value, what in ((angle_deg, "angle_deg"), (background_deg, "background_deg")):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise IndicatorError(f"{what} must be a finite number, not {value!r}")
    if threshold_deg < 0:
        raise IndicatorError(f"threshold_deg must be ≥ 0, not {threshold_deg!r}")
    return abs(angle_deg - background_deg) > threshold_deg


def cabinet_alarms(
    *,
    door_open: bool = False,
    water_ingress: bool = False,
    smoke: bool = False,
    maintenance: bool = False,
) -> tuple[CabinetAlarm, ...]:
    """Cabinet (综合箱) alarms from its contact sensors.

    Args:
        door_open: Door contact reports open.
        water_ingress: Water (immersion) sensor triggered.
        smoke: Smoke sensor triggered.
        maintenance: An authorised maintenance window is open; an open door
            is then expected and not an alarm. Water and smoke still are.

    Returns:
        The alarms, in the order door, water, smoke.
    """
    alarms: list[CabinetAlarm] = []
    if door_open and not maintenance:
        alarms.append(CabinetAlarm.DOOR_OPEN)
    if water_ingress:
        alarms.append(CabinetAlarm.WATER_INGRESS)
    if smoke:
        alarms.append(CabinetAlarm.SMOKE)
    return tuple(alarms)


def charger_fault(
    status: ChargerStatus | str,
    current_a: float | None = None,
    *,
    idle_max_current_a: float = CHARGER_IDLE_MAX_CURRENT_A,
) -> ChargerFault | None:
    """EV charger fault from its reported status and output current.

    A charging session with low current is *not* a fault: the vehicle tapers
    the current near full charge.

    Args:
        status: ``"idle"``, ``"charging"`` or ``"fault"``.
        current_a: Output current in A, if measured.
        idle_max_current_a: Above this an idle charger is faulty, default
            0.5 A [M].

    Returns:
        The :class:`ChargerFault`, or ``None``.

    Raises:
        IndicatorError: An unknown status, or a negative / non-finite current.
    """
    try:
        state = ChargerStatus(status)
    except ValueError:
        raise IndicatorError(f"unknown charger status {status!r}; known: {[s.value for s in ChargerStatus]}") from None
    current = None if current_a is None else _current(current_a, "current_a")
    if state is ChargerStatus.FAULT:
        return ChargerFault.REPORTED
    if state is ChargerStatus.IDLE and current is not None and current > idle_max_current_a:
        return ChargerFault.CURRENT_WHEN_IDLE
    return None
