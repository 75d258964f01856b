"""The geo package's public surface."""

from __future__ import annotations

import subprocess
import sys

import geo


def test_all_names_resolve() -> None:
    for name in geo.__all__:
        assert getattr(geo, name) is not None, name
    assert set(geo.__all__) <= set(dir(geo))


def test_unknown_name_raises_attribute_error() -> None:
    try:
        _ = geo.nope
    except AttributeError as exc:
        assert "nope" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_import_is_light() -> None:
    code = (
        "import sys, geo\n"
        "heavy = {'numpy', 'shapely', 'geo.districts', 'geo.assign'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "geo.Grid\n"
        "assert 'geo.grid' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
