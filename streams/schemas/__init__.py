"""JSON Schemas (draft 2020-12) of every payload on the platform's topics.

Files are ``{name}.json`` beside this module; ``docs/asyncapi.yaml`` refers to
them. Names: ``telemetry.v1`` (device payload), ``status.v1``, ``command.v1``,
``readings.v1``, ``alerts.v1``, ``deadletter-headers.v1``.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

from streams.errors import StreamsError

__all__ = ["SchemaNotFound", "load", "names"]


class SchemaNotFound(StreamsError):
    """No schema by that name."""


@cache
def names() -> tuple[str, ...]:
    """Names of the shipped schemas (file names without ``.json``), sorted."""
    root = resources.files(__name__)
    return tuple(sorted(e.name[: -len(".json")] for e in root.iterdir() if e.name.endswith(".json")))


@cache
def _text(name: str) -> str:
    if name not in names():
        raise SchemaNotFound(f"no schema {name!r}; one of {list(names())}")
    return resources.files(__name__).joinpath(f"{name}.json").read_text(encoding="utf-8")


def load(name: str) -> dict[str, Any]:
    """A schema as a fresh dict (callers may modify it).

    Raises:
        SchemaNotFound: unknown name.
    """
    doc: dict[str, Any] = json.loads(_text(name))
    return doc
