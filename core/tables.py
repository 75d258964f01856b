"""Names of the store's per-class tables, shared by everything that reads or writes them.

The migrations create one wide readings table per device class
(``citybrain/migrations.py``), the stream worker writes it (``streams/store.py``),
and the API, the maintenance job and the simulators' scorer read it. Like the
topic scheme (:mod:`core.topics`), the name is a contract between them, so it
is spelled once, here. This module is a leaf: pure functions, no I/O.
"""

from __future__ import annotations

__all__ = ["class_table"]


def class_table(device_class: str) -> str:
    """Name of a device class's wide readings table, e.g. ``readings_air``."""
    return f"readings_{device_class}"
