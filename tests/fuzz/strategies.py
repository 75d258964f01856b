"""Shared settings and strategies of the fuzz targets.

``CITYBRAIN_FUZZ_EXAMPLES`` sets the examples per target: a modest default
keeps them in the normal suite; ``make fuzz`` raises it. Inputs are bounded
(a codec's own size limit plus a margin), so a target that does not finish
is a hang in the code under test, which pytest-timeout turns into a failure.
No deadline: wall-clock limits on a shared CPU would be flaky.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = ["EXAMPLES", "FUZZ", "json_values", "mutated"]

EXAMPLES = int(os.environ.get("CITYBRAIN_FUZZ_EXAMPLES", "200"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=EXAMPLES <= 1000,  # reproducible in the suite; exploratory under `make fuzz`
)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)


def _nest(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return _scalars | st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)


# Three explicit levels rather than st.recursive: under `make fuzz` (20 000 examples),
# st.recursive's leaf budget made hypothesis replay draw differently and stop with
# FlakyStrategyDefinition, a failure of the strategy rather than of the code under test.
json_values: st.SearchStrategy[Any] = _nest(_nest(_nest(_scalars)))


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], max_size: int) -> bytes:
    """A seed with a few byte flips, insertions, deletions or truncations (reaches deep code paths)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(("flip", "insert", "delete", "truncate")))
        pos = draw(st.integers(0, max(0, len(data))))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data[:max_size])
