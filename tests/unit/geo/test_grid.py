"""Grid cells: code scheme, uniqueness, clipping and lookup."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
import shapely
from shapely.geometry import box

from geo.assign import Assigner
from geo.districts import District, districts_from_geojson
from geo.errors import GridError, OutsideCityError
from geo.grid import XIAMEN_FRAME, Grid, GridSpec, coarsen_to_cell

from .conftest import KNOWN_POINTS, SHARED_VERTEX


class TestCodes:
    def test_documented_example(self, grid: Grid) -> None:
        assert grid.spec.index_of(118.10, 24.46) == (30, 16)
        assert grid.cell_code_of(118.10, 24.46) == "350203" + "011" + "016" + "001"

    def test_codes_are_15_digits_prefixed_by_their_district(self, grid: Grid) -> None:
        district_codes = {d.code for d in grid.districts}
        assert len(grid) > 1000
        for code, cell in grid.cells.items():
            assert re.fullmatch(r"[0-9]{15}", code)
            assert cell.code == code and code[:6] == cell.district_code
            assert cell.district_code in district_codes
            assert "000" not in (code[6:9], code[9:12], code[12:15])

    def test_codes_unique_per_district_and_cell(self, grid: Grid) -> None:
        keys = [(c.district_code, c.col, c.row) for c in grid.cells.values()]
        assert len(set(keys)) == len(keys) == len(grid.cells)
        # Within a district, the 9-digit suffix alone identifies the cell.
        suffixes = Counter((c.district_code, c.code[6:]) for c in grid.cells.values())
        assert max(suffixes.values()) == 1

    def test_parse_inverts_the_arithmetic(self, grid: Grid) -> None:
        for cell in grid.cells.values():
            assert grid.spec.parse(cell.code) == (cell.district_code, cell.col, cell.row)

    def test_every_district_has_cells(self, grid: Grid) -> None:
        assert {c.district_code for c in grid.cells.values()} == {d.code for d in grid.districts}

    def test_finer_grid_numbers_more_cells_per_community(self, districts: tuple[District, ...]) -> None:
        fine = Grid.build(districts, cell_deg=0.005)
        assert fine.spec.per_community == 4
        assert max(int(code[12:]) for code in fine.cells) == 16
        assert len({(c.district_code, c.col, c.row) for c in fine.cells.values()}) == len(fine)
        assert fine.cell_code_of(118.10, 24.46) == "350203011016001"  # same SW corner, same blocks

    def test_codes_do_not_depend_on_other_districts(self, districts: tuple[District, ...], grid: Grid) -> None:
        siming_only = Grid.build([d for d in districts if d.code == "350203"])
        assert set(siming_only.cells) == {c for c in grid.cells if c.startswith("350203")}

    @pytest.mark.parametrize(
        "code", ["35020301101600", "35020301101600x", "350203000016001", "350203050016001", "350203011026001"]
    )
    def test_parse_rejects_malformed_codes(self, grid: Grid, code: str) -> None:
        with pytest.raises(GridError):
            grid.spec.parse(code)


class TestGeometry:
    def test_pieces_tile_each_district_exactly(self, grid: Grid) -> None:
        for district in grid.districts:
            pieces = [c.polygon for c in grid.cells.values() if c.district_code == district.code]
            total = sum(p.area for p in pieces)
            assert total == pytest.approx(district.geometry.area, rel=1e-9)
            assert shapely.union_all(pieces).symmetric_difference(district.geometry).area < 1e-12

    def test_pieces_lie_in_their_regular_cell(self, grid: Grid) -> None:
        for cell in list(grid.cells.values())[::7]:
            cell_box = box(*grid.spec.cell_bounds(cell.col, cell.row)).buffer(1e-12)
            assert cell_box.contains(cell.polygon)

    def test_label_point_maps_back_to_its_own_cell(self, grid: Grid) -> None:
        for cell in grid.cells.values():
            assert grid.cell_code_of(*cell.label_point) == cell.code

    def test_label_point_fallback_for_pieceless_code(self, grid: Grid) -> None:
        sea_code = grid.code_in("350203", 118.15, 24.40)  # well-formed, no piece (open sea)
        assert sea_code not in grid.cells
        lon, lat = grid.label_point(sea_code)
        assert lon == pytest.approx(118.155) and lat == pytest.approx(24.405)


class TestLookup:
    @pytest.mark.parametrize(("code", "point"), sorted(KNOWN_POINTS.items()))
    def test_known_points(self, grid: Grid, code: str, point: tuple[float, float]) -> None:
        cell_code = grid.cell_code_of(*point)
        assert cell_code.startswith(code)
        assert grid.cell(cell_code).polygon.intersects(shapely.Point(point))

    def test_shared_boundary_is_deterministic(self, grid: Grid) -> None:
        assert grid.cell_code_of(*SHARED_VERTEX).startswith("350203")

    def test_outside(self, grid: Grid) -> None:
        with pytest.raises(OutsideCityError, match=r"lon=118\.600000, lat=24\.900000"):
            grid.cell_code_of(118.6, 24.9)

    def test_grid_lines_are_half_open(self) -> None:
        spec = GridSpec()
        assert spec.index_of(118.10, 24.59) == (30, 29)  # on both lines: the cell to the NE
        assert spec.index_of(118.0999999, 24.5899999) == (29, 28)
        cols, rows = spec.indices(np.array([118.10, 118.0999999]), np.array([24.59, 24.5899999]))
        assert cols.tolist() == [30, 29] and rows.tolist() == [29, 28]

    def test_vectorised_codes_match_scalar(self, grid: Grid) -> None:
        rng = np.random.default_rng(7)
        lons = rng.uniform(117.9, 118.4, 500)
        lats = rng.uniform(24.45, 24.9, 500)
        idx = grid.index.locate_many(lons, lats)
        codes = grid.cell_codes_for(idx, lons, lats)
        for i in range(lons.size):
            if idx[i] < 0:
                assert codes[i] == ""
            else:
                district = grid.districts[idx[i]].code
                assert codes[i] == grid.code_in(district, float(lons[i]), float(lats[i]))

    def test_unknown_cell_and_district(self, grid: Grid) -> None:
        with pytest.raises(GridError, match="no grid cell"):
            grid.cell("350203011016999")
        with pytest.raises(GridError, match="not part of this grid"):
            grid.code_in("350100", 118.1, 24.46)


class TestSpec:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"cell_deg": 0.003}, "0.02 / cell_deg"),
            ({"cell_deg": 0.0005}, "1600 cells per community"),
            ({"cell_deg": 0.0}, "positive"),
            ({"max_lon": 118.55}, "frame width"),
            ({"min_lon": 100.0, "max_lon": 120.0, "max_lat": 30.0}, "street blocks"),
        ],
    )
    def test_rejects_unnumberable_configurations(self, kwargs: dict[str, float], message: str) -> None:
        with pytest.raises(GridError, match=message):
            GridSpec(**kwargs)

    def test_defaults(self) -> None:
        spec = GridSpec()
        assert spec.frame == XIAMEN_FRAME
        assert (spec.street_cols, spec.street_rows, spec.per_community) == (7, 7, 2)
        assert (spec.n_cols, spec.n_rows) == (70, 70)

    def test_outside_frame(self) -> None:
        with pytest.raises(GridError, match="outside the grid frame"):
            GridSpec().index_of(119.0, 24.5)
        cols, rows = GridSpec().indices(np.array([119.0, np.nan]), np.array([24.5, 24.5]))
        assert cols.tolist() == [-1, -1] and rows.tolist() == [-1, -1]

    def test_districts_outside_frame_rejected(self) -> None:
        far = districts_from_geojson(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {"code": "110101", "name_zh": "东城区", "name_en": "Dongcheng"},
                        "geometry": shapely.geometry.mapping(box(116.4, 39.9, 116.42, 39.92)),
                    }
                ],
            }
        )
        with pytest.raises(GridError, match="outside the grid frame"):
            Grid.build(far)


class TestCoarsen:
    def test_masked_location_keeps_district_and_cell(self, assigner: Assigner) -> None:
        rng = np.random.default_rng(5)
        lons = rng.uniform(117.9, 118.4, 400)
        lats = rng.uniform(24.42, 24.9, 400)
        codes, cells, outside = assigner.assign_many(lons, lats)
        for i in np.flatnonzero(~outside):
            lon, lat = coarsen_to_cell(float(lons[i]), float(lats[i]), assigner.grid)
            masked = assigner.assign(lon, lat)
            assert (masked.district.code, masked.grid_cell) == (codes[i], cells[i])

    def test_same_output_for_every_point_of_a_cell(self, grid: Grid) -> None:
        lon, lat = KNOWN_POINTS["350212"]
        assert coarsen_to_cell(lon, lat, grid) == coarsen_to_cell(lon + 0.002, lat + 0.002, grid)
        assert coarsen_to_cell(lon, lat, grid) != (lon, lat)

    def test_outside(self, grid: Grid) -> None:
        with pytest.raises(OutsideCityError):
            coarsen_to_cell(118.6, 24.9, grid)
