import pytest

from devices.errors import TransitionError
from devices.lifecycle import ACCEPTING, STATES, TRANSITIONS, check_transition

CODE = "35020603080000017"


@pytest.mark.parametrize(
    ("current", "target"),
    [
        ("registered", "active"),
        ("active", "suspended"),
        ("suspended", "active"),
        ("suspended", "decommissioned"),
        ("active", "decommissioned"),
        ("registered", "decommissioned"),
    ],
)
def test_allowed_transitions(current: str, target: str) -> None:
    assert check_transition(CODE, current, target, "  field check  ") == "field check"


@pytest.mark.parametrize(
    ("current", "target", "reason"),
    [
        ("decommissioned", "active", "a final state"),
        ("active", "registered", "cannot go from active to registered"),
        ("active", "active", "already active"),
        ("active", "retired", "unknown state"),
    ],
)
def test_rejected_transitions_say_why(current: str, target: str, reason: str) -> None:
    with pytest.raises(TransitionError, match=reason):
        check_transition(CODE, current, target, "why")


def test_reason_is_required() -> None:
    with pytest.raises(TransitionError, match="reason is required"):
        check_transition(CODE, "active", "suspended", "   ")


def test_tables_are_consistent() -> None:
    assert set(TRANSITIONS) == set(STATES)
    assert {"registered", "active"} == ACCEPTING
    assert all(t <= set(STATES) for t in TRANSITIONS.values())
