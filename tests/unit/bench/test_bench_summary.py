"""The summary of ``make bench``: rows named by the benchmarks, and the figures a run lacks."""

from __future__ import annotations

from bench.__main__ import REQUIRED, _rows, missing


def test_rows_named_by_the_benchmark_keep_their_names() -> None:
    got = _rows("bench_ledger", {"results": {"ledger_import": {"rows_per_s": 1}, "ledger_index": {"x": 2}}})
    assert got == {"ledger_import": {"rows_per_s": 1}, "ledger_index": {"x": 2}}
    assert _rows("bench_geo", {"points_per_s": 3}) == {"bench_geo": {"points_per_s": 3}}
    assert _rows("bench_memory", {"a": {"b": 1}}) == {"bench_memory.a": {"b": 1}}


def test_missing_names_each_required_figure_not_measured() -> None:
    full: dict[str, dict[str, object]] = {}
    for key in REQUIRED:
        row, col = key.split(".", 1)
        full.setdefault(row, {})[col] = 1
    assert missing(full) == []
    del full["ledger_import"]
    full["nodered"] = {"skipped": "no npm"}
    assert missing(full) == ["nodered.msg_per_s", "ledger_import.rows_per_s"]
