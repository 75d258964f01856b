"""The one JSON encoder of the hot path: orjson, compact UTF-8 (RFC 8259).

The worker serialises a document per stored row (the readings topics), per
device and batch (rule and detector state, the debug ring); the standard
library's encoder was a tenth of the worker's CPU on city-like traffic
(docs/benchmarks.md). orjson writes the same JSON values, compact and UTF-8
(non-ASCII text as UTF-8, not ``\\uXXXX`` escapes; both are valid JSON), with
two differences that matter here: numpy scalars are written as numbers, and a
non-finite float becomes ``null`` where ``json.dumps`` wrote ``NaN``, which no
JSON parser (PostgreSQL's included) accepts.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["dumps", "dumps_text", "loads"]

# Non-string keys become strings, as json.dumps makes them (state documents were written that way).
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(obj: Any) -> bytes:
    """``obj`` as compact UTF-8 JSON bytes.

    Raises:
        TypeError: ``obj`` holds something JSON cannot represent.
    """
    return orjson.dumps(obj, option=_OPTIONS)


def loads(data: bytes | str) -> Any:
    """Parse JSON text (strict RFC 8259: no ``NaN``, no trailing data).

    Raises:
        ValueError: ``data`` is not JSON (``orjson.JSONDecodeError`` is a ValueError).
    """
    return orjson.loads(data)


def dumps_text(obj: Any) -> str:
    """``obj`` as compact JSON text (for APIs that want ``str``)."""
    return orjson.dumps(obj, option=_OPTIONS).decode()
