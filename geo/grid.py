"""The city grid (单元网格): regular lon/lat cells clipped to districts.

Digital city management divides a city into 单元网格 with 15-digit codes,
``6 admin + 3 street + 3 community + 3 grid`` (e.g. ``320582110152102``).
Real 街道/社区 boundaries are not available here, so this module uses a
documented simpler scheme in which the street and community digits name
*fixed blocks of a lon/lat lattice* rather than administrative units.

Layout::

    350203 011 016 001
    |      |   |   +-- grid:      cell within its community block, 001..n²
    |      |   +------ community: 0.02° block within its street block, 001..025
    |      +---------- street:    0.1° block within the city frame, 001..999
    +----------------- GB/T 2260 district code

Derivation, for a frame with south-west corner ``(min_lon, min_lat)`` (default
117.8°E, 24.3°N; 0.7° × 0.7°) and cell size ``d`` (default 0.01°), with
``n = 0.02 / d`` cells per community side (an integer 1..31, so n² ≤ 999):

* ``col = floor((lon - min_lon) / d)``, ``row = floor((lat - min_lat) / d)``.
  Cells are half-open, ``[west, east) × [south, north)``: a point exactly on a
  grid line belongs to the cell east/north of it. (A relative snap of 1e-9 of
  a cell absorbs binary rounding, so ``118.10`` lands on the line it names.)
* community column/row ``cc = col // n``, ``cr = row // n``; street
  column/row ``sc = cc // 5``, ``sr = cr // 5``.
* street = ``1 + sr * S + sc`` where ``S`` is the number of street blocks per
  frame row (7 by default, 49 blocks in all);
  community = ``1 + (cr % 5) * 5 + (cc % 5)``;
  grid = ``1 + (row % n) * n + (col % n)``. All are 1-based (000 never occurs)
  and row-major from the south-west.

Example, default grid: 118.10°E 24.46°N → col 30, row 16 → street 1+1*7+3 =
011, community 1+3*5+0 = 016, grid 1+0*2+0 = 001 → ``350203011016001``.

Why a frame-wide lattice and not numbering within each district: a code then
depends only on the position, the cell size and the frame, never on the
district outlines. Redrawing a boundary changes which district prefix a cell
carries but never renumbers any other cell, so stored codes stay valid. The
same arithmetic, given the district, makes cell lookup O(1). The price is that
street/community numbers are sparse within a district.

A regular cell crossed by a district boundary is split into one *piece* per
district, each with its own code (same 9-digit suffix, different prefix).
Pieces are the cell's polygons (:attr:`GridCell.polygon`). Sea cells have no
piece; nor do slivers below 1e-9 of a cell, which are rounding where a
district vertex sits on a grid line. So a point lying exactly on a district
boundary at a grid line can get a well-formed code that is absent from
:attr:`Grid.cells`; :meth:`Grid.label_point` falls back to the cell centre
for it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from shapely.geometry import MultiPolygon, Polygon

from geo.districts import District, DistrictIndex, polygonal_part
from geo.errors import GridError
from geo.spatial import as_lonlat_arrays

__all__ = [
    "COMMUNITY_DEG",
    "STREET_DEG",
    "XIAMEN_FRAME",
    "Grid",
    "GridCell",
    "GridSpec",
    "coarsen_to_cell",
]

STREET_DEG = 0.1
COMMUNITY_DEG = 0.02
_COMMUNITIES_PER_STREET = 5  # STREET_DEG / COMMUNITY_DEG, per side
_MAX_BLOCK = 999  # three digits, 000 unused

# (min_lon, min_lat, max_lon, max_lat): covers Xiamen (~117.86-118.44°E,
# 24.38-24.91°N) with margin, in whole 0.1° street blocks. Changing it
# renumbers every street, so it is part of the code scheme.
XIAMEN_FRAME: tuple[float, float, float, float] = (117.8, 24.3, 118.5, 25.0)

# Fraction of a cell added before flooring; see the module docstring.
_SNAP = 1e-9
# Pieces smaller than this fraction of a cell (~1 mm² at 0.01°) are dropped.
_MIN_PIECE_FRACTION = 1e-9

_IntOrArray = TypeVar("_IntOrArray", int, NDArray[np.int64])

_CODE_RE = re.compile(r"^([0-9]{6})([0-9]{3})([0-9]{3})([0-9]{3})$")


def _whole(value: float, what: str) -> int:
    n = round(value)
    if n < 1 or abs(value - n) > 1e-6:
        raise GridError(f"{what} must be a positive whole number, got {value:.9g}")
    return n


@dataclass(frozen=True, slots=True)
class GridSpec:
    """The arithmetic of the grid: cell size and frame, no geometry.

    Attributes:
        cell_deg: Cell side in degrees; 0.02 / cell_deg must be a whole
            number from 1 to 31 (e.g. 0.02, 0.01, 0.005, 0.004, 0.002, 0.001).
        min_lon: Frame west edge.
        min_lat: Frame south edge.
        max_lon: Frame east edge; the width must be whole 0.1° blocks.
        max_lat: Frame north edge; the height must be whole 0.1° blocks.

    Raises:
        GridError: On a cell size or frame that the 3+3+3 digit code cannot
            number.
    """

    cell_deg: float = 0.01
    min_lon: float = XIAMEN_FRAME[0]
    min_lat: float = XIAMEN_FRAME[1]
    max_lon: float = XIAMEN_FRAME[2]
    max_lat: float = XIAMEN_FRAME[3]
    per_community: int = field(init=False)
    street_cols: int = field(init=False)
    street_rows: int = field(init=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.cell_deg) and self.cell_deg > 0):
            raise GridError(f"cell_deg must be a positive number, got {self.cell_deg!r}")
        per = _whole(COMMUNITY_DEG / self.cell_deg, f"0.02 / cell_deg (cell_deg={self.cell_deg})")
        if per * per > _MAX_BLOCK:
            raise GridError(
                f"cell_deg={self.cell_deg} gives {per * per} cells per community block; "
                f"the 3-digit grid number allows at most {_MAX_BLOCK} (cell_deg >= {COMMUNITY_DEG / 31:.6f})"
            )
        cols = _whole((self.max_lon - self.min_lon) / STREET_DEG, "frame width / 0.1°")
        rows = _whole((self.max_lat - self.min_lat) / STREET_DEG, "frame height / 0.1°")
        if cols * rows > _MAX_BLOCK:
            raise GridError(f"frame has {cols * rows} street blocks; the 3-digit street number allows 999")
        object.__setattr__(self, "per_community", per)
        object.__setattr__(self, "street_cols", cols)
        object.__setattr__(self, "street_rows", rows)

    @property
    def n_cols(self) -> int:
        """Cells per frame row."""
        return self.street_cols * _COMMUNITIES_PER_STREET * self.per_community

    @property
    def n_rows(self) -> int:
        """Cells per frame column."""
        return self.street_rows * _COMMUNITIES_PER_STREET * self.per_community

    def index_of(self, lon: float, lat: float) -> tuple[int, int]:
        """``(col, row)`` of the cell containing a point.

        Raises:
            GridError: If the point is outside the frame or not finite.
        """
        if not (math.isfinite(lon) and math.isfinite(lat)):
            raise GridError(f"cannot grid a non-finite point ({lon!r}, {lat!r})")
        col = math.floor((lon - self.min_lon) / self.cell_deg + _SNAP)
        row = math.floor((lat - self.min_lat) / self.cell_deg + _SNAP)
        if not (0 <= col < self.n_cols and 0 <= row < self.n_rows):
            raise GridError(f"point ({lon}, {lat}) is outside the grid frame {self.frame}")
        return col, row

    def indices(self, lons: ArrayLike, lats: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Vectorised :meth:`index_of`; -1 in both for points outside the frame."""
        x, y = as_lonlat_arrays(lons, lats)
        with np.errstate(invalid="ignore"):  # NaN → outside, below
            cols_f = np.floor((x - self.min_lon) / self.cell_deg + _SNAP)
            rows_f = np.floor((y - self.min_lat) / self.cell_deg + _SNAP)
        inside = (cols_f >= 0) & (cols_f < self.n_cols) & (rows_f >= 0) & (rows_f < self.n_rows)
        cols = np.where(inside, cols_f, -1).astype(np.int64)
        rows = np.where(inside, rows_f, -1).astype(np.int64)
        return cols, rows

    def suffix(self, col: int, row: int) -> int:
        """The 9-digit street+community+grid number of a cell, as an int."""
        return self._suffix(col, row)

    def suffixes(self, cols: NDArray[np.int64], rows: NDArray[np.int64]) -> NDArray[np.int64]:
        """Vectorised :meth:`suffix`."""
        return self._suffix(cols, rows)

    def _suffix(self, col: _IntOrArray, row: _IntOrArray) -> _IntOrArray:
        # The derivation in the module docstring, written once for Python ints
        # (scalar lookups, ~1 µs) and int64 arrays (bulk): divmod and the
        # operators work on both.
        n = self.per_community
        k = _COMMUNITIES_PER_STREET
        ccol, gcol = divmod(col, n)
        crow, grow = divmod(row, n)
        scol, kcol = divmod(ccol, k)
        srow, krow = divmod(crow, k)
        street = 1 + srow * self.street_cols + scol
        community = 1 + krow * k + kcol
        grid = 1 + grow * n + gcol
        return street * 1_000_000 + community * 1_000 + grid

    def parse(self, code: str) -> tuple[str, int, int]:
        """Split a cell code into ``(district_code, col, row)``.

        Raises:
            GridError: If the code is not 15 digits or names a block this
                spec cannot produce.
        """
        match = _CODE_RE.match(code) if isinstance(code, str) else None
        if match is None:
            raise GridError(f"cell code must be 15 digits, got {code!r}")
        district, street, community, grid = match.group(1), *map(int, match.groups()[1:])
        n = self.per_community
        k = _COMMUNITIES_PER_STREET
        if not (1 <= street <= self.street_cols * self.street_rows and 1 <= community <= k * k and 1 <= grid <= n * n):
            raise GridError(f"cell code {code} is out of range for {self}")
        srow, scol = divmod(street - 1, self.street_cols)
        krow, kcol = divmod(community - 1, k)
        grow, gcol = divmod(grid - 1, n)
        col = ((scol * k) + kcol) * n + gcol
        row = ((srow * k) + krow) * n + grow
        return district, col, row

    def cell_bounds(self, col: int, row: int) -> tuple[float, float, float, float]:
        """``(min_lon, min_lat, max_lon, max_lat)`` of a regular cell."""
        west = self.min_lon + col * self.cell_deg
        south = self.min_lat + row * self.cell_deg
        return west, south, west + self.cell_deg, south + self.cell_deg

    @property
    def frame(self) -> tuple[float, float, float, float]:
        """``(min_lon, min_lat, max_lon, max_lat)``."""
        return self.min_lon, self.min_lat, self.max_lon, self.max_lat


@dataclass(frozen=True, slots=True)
class GridCell:
    """One cell piece: a regular cell clipped to one district.

    Attributes:
        code: 15-digit cell code.
        district_code: Its 6-digit prefix.
        col: Cell column in the frame (0 = westmost).
        row: Cell row in the frame (0 = southmost).
        polygon: The clipped cell, WGS84.
        label_point: ``(lon, lat)`` strictly inside :attr:`polygon`: its
            centroid when that is inside, else a point on its surface.
    """

    code: str
    district_code: str
    col: int
    row: int
    polygon: Polygon | MultiPolygon
    label_point: tuple[float, float]


class Grid:
    """Cells of a :class:`GridSpec` clipped to a set of districts.

    Build with :meth:`build`; the constructor only stores what build computed.

    Args:
        spec: The arithmetic.
        index: District lookup for :meth:`cell_code_of`.
        cells: Cell pieces by code.
    """

    def __init__(self, spec: GridSpec, index: DistrictIndex, cells: Mapping[str, GridCell]) -> None:
        self._spec = spec
        self._index = index
        self._cells = MappingProxyType(dict(cells))
        self._codes = {d.code for d in index.districts}
        # District code as an int per index, for vectorised code arithmetic.
        self._district_ints = np.array([int(d.code) for d in index.districts], dtype=np.int64)

    @classmethod
    def build(
        cls,
        districts: Iterable[District],
        cell_deg: float = 0.01,
        *,
        frame: tuple[float, float, float, float] = XIAMEN_FRAME,
    ) -> Grid:
        """Clip every regular cell to the districts it overlaps.

        Args:
            districts: Non-overlapping districts.
            cell_deg: Cell side in degrees (see :class:`GridSpec`).
            frame: ``(min_lon, min_lat, max_lon, max_lat)``; part of the code
                scheme, keep the default for Xiamen.

        Returns:
            The grid (~1,750 pieces for Xiamen at 0.01°).

        Raises:
            GridError: On a bad cell size or frame, or districts reaching
                outside the frame.
        """
        spec = GridSpec(cell_deg, *frame)
        index = DistrictIndex(districts)
        geometries = np.array([d.geometry for d in index.districts], dtype=object)
        min_lon, min_lat, max_lon, max_lat = shapely.total_bounds(geometries)
        if not (
            spec.min_lon <= min_lon and max_lon < spec.max_lon and spec.min_lat <= min_lat and max_lat < spec.max_lat
        ):
            raise GridError(
                f"districts span {(min_lon, min_lat, max_lon, max_lat)}, outside the grid frame {spec.frame}"
            )
        col0, row0 = spec.index_of(min_lon, min_lat)
        col1, row1 = spec.index_of(max_lon, max_lat)
        cols, rows = (a.ravel() for a in np.meshgrid(np.arange(col0, col1 + 1), np.arange(row0, row1 + 1)))
        west = spec.min_lon + cols * spec.cell_deg
        south = spec.min_lat + rows * spec.cell_deg
        boxes = shapely.box(west, south, west + spec.cell_deg, south + spec.cell_deg)

        box_idx, district_idx = index.query_intersecting(boxes)
        pieces = shapely.intersection(boxes[box_idx], geometries[district_idx])
        suffixes = spec.suffixes(cols[box_idx], rows[box_idx])

        # A district vertex on a grid line yields slivers of ~1e-28 deg²: box
        # edges and vertices differ by an ulp. They are rounding, not area.
        min_area = _MIN_PIECE_FRACTION * spec.cell_deg**2
        cells: dict[str, GridCell] = {}
        for b, d, piece, suffix in zip(box_idx, district_idx, pieces, suffixes, strict=True):
            polygon = polygonal_part(piece)
            if polygon is None or polygon.area <= min_area:
                continue  # the cell only touches the district along an edge
            district = index.districts[d]
            code = f"{district.code}{suffix:09d}"
            if code in cells:  # impossible unless the suffix arithmetic is broken
                raise GridError(f"duplicate cell code {code}")
            cells[code] = GridCell(
                code=code,
                district_code=district.code,
                col=int(cols[b]),
                row=int(rows[b]),
                polygon=polygon,
                label_point=_label_point(polygon),
            )
        return cls(spec, index, dict(sorted(cells.items())))

    @property
    def spec(self) -> GridSpec:
        """The cell arithmetic."""
        return self._spec

    @property
    def index(self) -> DistrictIndex:
        """The district lookup the grid was built on."""
        return self._index

    @property
    def districts(self) -> tuple[District, ...]:
        """The districts, sorted by code."""
        return self._index.districts

    @property
    def cells(self) -> Mapping[str, GridCell]:
        """Every cell piece, by code, sorted by code (read-only)."""
        return self._cells

    def __len__(self) -> int:
        return len(self._cells)

    def cell(self, code: str) -> GridCell:
        """The cell piece with this code.

        Raises:
            GridError: If no such piece exists.
        """
        try:
            return self._cells[code]
        except KeyError:
            raise GridError(f"no grid cell {code!r}") from None

    def code_in(self, district_code: str, lon: float, lat: float) -> str:
        """Cell code of a point known to be in ``district_code``: arithmetic only.

        Raises:
            GridError: On an unknown district or a point outside the frame.
        """
        if district_code not in self._codes:
            raise GridError(f"district {district_code!r} is not part of this grid")
        col, row = self._spec.index_of(lon, lat)
        return f"{district_code}{self._spec.suffix(col, row):09d}"

    def cell_code_of(self, lon: float, lat: float) -> str:
        """Cell code of a WGS84 point: one STRtree lookup plus arithmetic.

        Raises:
            OutsideCityError: If the point is outside every district.
        """
        district = self._index.locate(lon, lat)
        if district is None:
            raise self._index.outside_error(lon, lat)
        return self.code_in(district.code, lon, lat)

    def cell_codes_for(self, district_index: NDArray[np.intp], lons: ArrayLike, lats: ArrayLike) -> NDArray[np.str_]:
        """Vectorised cell codes, given each point's district.

        Args:
            district_index: Index into :attr:`districts` per point, -1 for
                outside (as returned by :meth:`DistrictIndex.locate_many`).
            lons: WGS84 longitudes.
            lats: WGS84 latitudes.

        Returns:
            15-character codes; ``""`` where the district index is -1.
        """
        x, y = as_lonlat_arrays(lons, lats)
        out = np.full(x.size, "", dtype="<U15")
        inside = np.flatnonzero(district_index >= 0)
        if inside.size == 0:
            return out
        cols, rows = self._spec.indices(x[inside], y[inside])
        # Districts lie inside the frame (checked by build), so cols/rows >= 0.
        full = self._district_ints[district_index[inside]] * 1_000_000_000 + self._spec.suffixes(cols, rows)
        out[inside] = full.astype("<U15")
        return out

    def label_point(self, code: str) -> tuple[float, float]:
        """Label point of a cell piece; the regular cell's centre if it has none.

        Raises:
            GridError: On a malformed code.
        """
        cell = self._cells.get(code)
        if cell is not None:
            return cell.label_point
        _, col, row = self._spec.parse(code)
        west, south, east, north = self._spec.cell_bounds(col, row)
        return (west + east) / 2.0, (south + north) / 2.0


def _label_point(polygon: Polygon | MultiPolygon) -> tuple[float, float]:
    # contains_properly, not contains: a centroid on the piece's edge could
    # fall into the neighbouring cell or district when looked up again.
    point = polygon.centroid
    if not polygon.contains_properly(point):
        point = polygon.point_on_surface()
    return float(point.x), float(point.y)


def coarsen_to_cell(lon: float, lat: float, grid: Grid) -> tuple[float, float]:
    """Replace a location by its grid cell's label point, to mask it.

    Sensitive sites (e.g. a water intake) are published at cell resolution.
    The label point is the centroid of the cell clipped to its district, or a
    point on its surface when the centroid falls outside, so the masked
    location still falls in the same district and cell as the true one.

    Args:
        lon: WGS84 longitude.
        lat: WGS84 latitude.
        grid: The city grid.

    Returns:
        ``(lon, lat)`` of the label point.

    Raises:
        OutsideCityError: If the point is outside every district.
    """
    return grid.label_point(grid.cell_code_of(lon, lat))
