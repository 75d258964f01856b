"""Pure validation of downlink command parameters against the shipped models."""

from __future__ import annotations

import pytest

from devices.models import shipped_models
from ingest.commands import validate_params
from ingest.errors import CommandError

MODELS = shipped_models()
POLE = MODELS.get("smart-pole")
MANHOLE = MODELS.get("manhole-cover")


def test_valid_params_are_normalised() -> None:
    assert validate_params(MANHOLE.commands["set_interval"], "set_interval", {"seconds": 600.0}) == {"seconds": 600}
    assert validate_params(POLE.commands["lamp"], "lamp", {"state": "on"}) == {"state": "on"}
    assert validate_params(POLE.commands["lamp"], "lamp", {"state": "off", "dimming": 40}) == {
        "state": "off",
        "dimming": 40,
    }


@pytest.mark.parametrize(
    ("name", "params", "reason"),
    [
        ("reboot", {}, "unknown_command"),
        ("set_interval", {"seconds": 60, "x": 1}, "unknown_param"),
        ("set_interval", {}, "missing_param"),
        ("set_interval", {"seconds": "60"}, "bad_type"),
        ("set_interval", {"seconds": True}, "bad_type"),
        ("set_interval", {"seconds": 60.5}, "bad_type"),
        ("set_interval", {"seconds": 59}, "below_min"),
        ("set_interval", {"seconds": 86401}, "above_max"),
    ],
)
def test_rejections(name: str, params: dict[str, object], reason: str) -> None:
    with pytest.raises(CommandError) as info:
        validate_params(MANHOLE.commands.get(name), name, params)
    assert info.value.reason == reason


def test_enum() -> None:
    with pytest.raises(CommandError) as info:
        validate_params(POLE.commands["lamp"], "lamp", {"state": "blink"})
    assert info.value.reason == "bad_enum"
