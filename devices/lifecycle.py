"""Device lifecycle (设备生命周期): the states and the transitions between them.

::

    registered ──▶ active ◀──▶ suspended
         │            │            │
         └────────────┴─────┬──────┘
                            ▼
                      decommissioned   (terminal)

* ``registered``: in the ledger, never heard from. Its messages are accepted
  and the first valid one activates it (commissioning, :meth:`Ledger.activate`).
* ``active``: in service.
* ``suspended``: temporarily out of service (maintenance, a stolen SIM, a
  failing sensor); its messages are rejected and its MQTT login is refused.
* ``decommissioned``: removed for good. The row stays for history and for
  readings already stored; the code is never reused.

A registered device may be suspended (held back before installation) or
decommissioned (never installed). A decommissioned device never comes back:
a replacement gets a new code, so history never mixes two physical devices.

Pure logic: the ledger applies it inside a transaction and writes the history.
"""

from __future__ import annotations

from types import MappingProxyType

from devices.errors import TransitionError

__all__ = ["ACCEPTING", "STATES", "TRANSITIONS", "check_transition"]

STATES: tuple[str, ...] = ("registered", "active", "suspended", "decommissioned")

# States whose messages the platform accepts and whose credentials are valid.
ACCEPTING = frozenset({"registered", "active"})

TRANSITIONS: MappingProxyType[str, frozenset[str]] = MappingProxyType(
    {
        "registered": frozenset({"active", "suspended", "decommissioned"}),
        "active": frozenset({"suspended", "decommissioned"}),
        "suspended": frozenset({"active", "decommissioned"}),
        "decommissioned": frozenset(),
    }
)

_MAX_REASON = 500


def check_transition(code: str, current: str, target: str, reason: str) -> str:
    """Check one transition; return the cleaned reason.

    Args:
        code: The device code (for the message).
        current: The device's state now.
        target: The state asked for.
        reason: Why (required: it goes into ``device_state_history``).

    Raises:
        TransitionError: unknown state, a transition the lifecycle does not
            allow, or an empty reason; the message says which.
    """
    if target not in TRANSITIONS:
        raise TransitionError(f"unknown state {target!r}; states are {', '.join(STATES)}")
    if current not in TRANSITIONS:
        raise TransitionError(f"device {code} is in unknown state {current!r}")
    if current == target:
        raise TransitionError(f"device {code} is already {current}")
    allowed = TRANSITIONS[current]
    if target not in allowed:
        if not allowed:
            raise TransitionError(f"device {code} is {current}, a final state; register a new device instead")
        raise TransitionError(
            f"device {code} cannot go from {current} to {target}; from {current} it may go to "
            + ", ".join(sorted(allowed))
        )
    text = (reason or "").strip()
    if not text:
        raise TransitionError(f"a reason is required to move device {code} from {current} to {target}")
    return text[:_MAX_REASON]
