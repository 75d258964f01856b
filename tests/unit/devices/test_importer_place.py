"""Bulk import: locations checked against districts and grid cells assigned in one vectorised pass."""

from __future__ import annotations

import numpy as np

from devices.code import DeviceCode
from devices.importer import default_assigner, place_rows
from devices.rows import ImportRow, RowIssue
from geo.coords import wgs84_to_gcj02
from geo.sample import random_points_in

# Well inside each district (tests/unit/geo/conftest.py KNOWN_POINTS).
KNOWN = {
    "350203": (118.10, 24.46),
    "350205": (117.99, 24.50),
    "350206": (118.12, 24.51),
    "350211": (118.05, 24.60),
    "350212": (118.15, 24.73),
    "350213": (118.24, 24.66),
}


def _row(line: int, district: str, lon: float | None, lat: float | None, **kw: object) -> ImportRow:
    fields: dict[str, object] = {
        "line": line,
        "code": DeviceCode.build(district, "0308", line).full,
        "serial": None,
        "district": district,
        "class_code": "0308",
        "model": "air-micro@1",
        "device_class": "air",
        "name": "",
        "lon": lon,
        "lat": lat,
        "crs": "WGS84",
        "grid": None,
        "owner_unit": None,
        "installer": None,
        "contact": None,
        "install_date": None,
        "attributes": "{}",
    }
    fields.update(kw)
    return ImportRow(**fields)  # type: ignore[arg-type]


def test_one_point_in_each_district_gets_its_cell() -> None:
    assigner = default_assigner()
    rows = [_row(i + 2, d, *p) for i, (d, p) in enumerate(KNOWN.items())]
    out, grids = place_rows(assigner, rows)
    assert out == rows
    for row, grid in zip(rows, grids, strict=True):
        assert row.lon is not None and row.lat is not None
        assert grid == assigner.assign(row.lon, row.lat).grid_cell and grid.startswith(row.district)


def test_wrong_district_and_outside_are_per_row_issues_and_nothing_else_is_lost() -> None:
    rows = [
        _row(2, "350203", *KNOWN["350203"]),
        _row(3, "350206", *KNOWN["350203"]),  # in 思明, code says 湖里
        _row(4, "350203", 118.20, 24.40),  # harbour, south-east of the island: at sea
        _row(5, "350211", None, None),  # no location: nothing to check
        _row(6, "350213", *KNOWN["350213"]),
    ]
    out, grids = place_rows(default_assigner(), rows)
    assert [type(o).__name__ for o in out] == ["ImportRow", "RowIssue", "RowIssue", "ImportRow", "ImportRow"]
    wrong, sea = out[1], out[2]
    assert isinstance(wrong, RowIssue) and isinstance(sea, RowIssue)
    assert wrong.line == 3 and wrong.code == rows[1].code
    assert "is in district 350203 思明区, but the row says 350206 湖里区" in wrong.reason
    assert "outside the city" in sea.reason and "nearest is" in sea.reason and " km" in sea.reason
    assert grids[3] is None and grids[0] is not None and grids[4] is not None
    terse, _ = place_rows(default_assigner(), rows[2:3], nearest=False)
    assert isinstance(terse[0], RowIssue) and "outside every district" in terse[0].reason


def test_gcj02_is_converted_and_a_given_grid_is_kept() -> None:
    lon, lat = KNOWN["350206"]
    glon, glat = wgs84_to_gcj02(lon, lat)
    given = "350206001001001"
    rows = [_row(2, "350206", glon, glat, crs="GCJ02"), _row(3, "350206", lon, lat, grid=given)]
    out, grids = place_rows(default_assigner(), rows)
    assert out == rows
    assert grids[0] == default_assigner().assign(lon, lat).grid_cell
    assert grids[1] == given


def test_many_random_rows_agree_with_single_assignment() -> None:
    assigner = default_assigner()
    rng = np.random.default_rng(5)
    rows: list[ImportRow] = []
    for d in assigner.grid.districts:
        xs, ys = random_points_in(d.geometry, 200, rng)
        rows += [_row(len(rows) + 2, d.code, x, y) for x, y in zip(xs.tolist(), ys.tolist(), strict=True)]
    out, grids = place_rows(assigner, rows)
    assert all(isinstance(o, ImportRow) for o in out)
    for row, grid in zip(rows[::37], grids[::37], strict=True):
        assert row.lon is not None and row.lat is not None
        assert grid == assigner.assign(row.lon, row.lat).grid_cell
