"""Shared fixtures: the real Xiamen data, built once per session (all immutable)."""

from __future__ import annotations

import pytest
from shapely.geometry import Polygon, box

from geo.assign import Assigner
from geo.districts import District, load_districts
from geo.grid import Grid

# Well inside each district (>= 1 km from any edge), at real places.
KNOWN_POINTS: dict[str, tuple[float, float]] = {
    "350203": (118.10, 24.46),  # 思明: Siming South Rd, near Xiamen University
    "350205": (117.99, 24.50),  # 海沧: Haicang inland
    "350206": (118.12, 24.51),  # 湖里: Jiangtou / Fanghu
    "350211": (118.05, 24.60),  # 集美: Xinglin / Jimei new town
    "350212": (118.15, 24.73),  # 同安: Tong'an old town
    "350213": (118.24, 24.66),  # 翔安: Maxiang
}

# A vertex shared by 思明 (350203) and 湖里 (350206) in the data file.
SHARED_VERTEX = (118.135, 24.5015)


@pytest.fixture(scope="session")
def districts() -> tuple[District, ...]:
    return load_districts()


@pytest.fixture(scope="session")
def grid(districts: tuple[District, ...]) -> Grid:
    return Grid.build(districts, cell_deg=0.01)


@pytest.fixture(scope="session")
def fences() -> list[tuple[str, Polygon]]:
    return [
        ("xmu", box(118.09, 24.43, 118.11, 24.45)),  # around Xiamen University
        ("island-south", box(118.07, 24.42, 118.21, 24.47)),
        ("airport", Polygon([(118.11, 24.53), (118.15, 24.53), (118.15, 24.56), (118.11, 24.56)])),
    ]


@pytest.fixture(scope="session")
def assigner(districts: tuple[District, ...], grid: Grid, fences: list[tuple[str, Polygon]]) -> Assigner:
    return Assigner(districts, grid, fences)
