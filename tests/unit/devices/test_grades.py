"""The one data-grade policy (devices/grades.py), as the API and the downstream views use it."""

from __future__ import annotations

from collections.abc import Callable

from devices.code import DeviceCode
from devices.grades import (
    DEVICE_FIELD_GRADES,
    GRADES,
    GradeMasker,
    coarsen,
    grade_rank,
    is_sensitive_class,
    sensitive_class_codes,
)
from devices.models import shipped_models

GAS = DeviceCode.build("350206", "0111", 7).full
SEWAGE = DeviceCode.build("350206", "0102", 7).full


def _reader(grade: str) -> Callable[[str], bool]:
    return lambda g: grade_rank(g) <= grade_rank(grade)


def test_sensitive_classes_are_those_flagged_in_the_class_table() -> None:
    assert sensitive_class_codes() == frozenset({"0105", "0111", "0129"})
    assert is_sensitive_class(GAS) and not is_sensitive_class(SEWAGE)


def test_grades_rank_lowest_first_and_an_unknown_grade_counts_as_sensitive() -> None:
    assert [grade_rank(g) for g in GRADES] == [0, 1, 2]
    assert grade_rank("secret") == grade_rank("sensitive")


def test_a_ledger_row_is_masked_by_the_grades_its_reader_may_read() -> None:
    masker = GradeMasker(shipped_models())
    row = {
        "code": GAS,
        "model": "manhole-cover@1",
        "contact": "13800138000",
        "owner_unit": "Xiamen Gas",
        "lon": 118.123456,
        "lat": 24.487654,
        "crs": "WGS84",
    }
    public, revealed = masker.device(row, _reader("public"))
    assert public["contact"] == "*******8000" and public["owner_unit"] is None
    assert (public["lon"], public["lat"]) == coarsen(118.123456, 24.487654) != (118.123456, 24.487654)
    assert set(public["masked"]) == {"contact", "owner_unit", "location"} and revealed == []
    full, revealed = masker.device(row, _reader("sensitive"))
    assert (full["lon"], full["lat"], full["contact"]) == (118.123456, 24.487654, "13800138000")
    assert full["masked"] == [] and set(revealed) == {"contact", "location"}
    assert set(DEVICE_FIELD_GRADES) >= {"contact", "owner_unit"}


def test_a_ledger_row_goes_through_the_coarsening_the_readings_views_use() -> None:
    # One policy: the API's rows and the downstream views (tests/unit/streams/test_downstream.py)
    # go through the masker's one coarsening, so a gas cover is published at one point.
    calls: list[tuple[float, float]] = []

    def fake(lon: float, lat: float) -> tuple[float, float]:
        calls.append((lon, lat))
        return 118.0, 24.5

    masker = GradeMasker(shipped_models(), coarsen=fake)
    row, _ = masker.device({"code": GAS, "lon": 118.1, "lat": 24.4, "crs": "WGS84"}, _reader("public"))
    assert (row["lon"], row["lat"]) == (118.0, 24.5)
    assert calls == [(118.1, 24.4)]
