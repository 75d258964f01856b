"""Docs that must stay in step with the code."""

import re
from collections.abc import Iterable
from dataclasses import fields
from decimal import Decimal
from pathlib import Path

from alerts.indicators.aqi import HJ633_2012, HJ633_2026
from alerts.indicators.noise import NOISE_LIMITS
from alerts.indicators.water import GB3838_TABLE1
from citybrain.settings import Settings
from devices.code import XIAMEN_DISTRICTS, load_class_table
from devices.models import shipped_models
from streams.app import WorkerConfig
from streams.store import StoreConfig

ROOT = Path(__file__).resolve().parents[3]


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [n for n in Settings.model_fields if f"`CITYBRAIN_{n.upper()}`" not in readme]
    assert not missing, f"add these settings to the README's configuration table: {missing}"


def test_every_row_of_the_readme_table_is_a_setting() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `CITYBRAIN_([A-Z0-9_]+)` \|", readme, flags=re.M)
    assert rows
    unknown = [r for r in rows if r.lower() not in Settings.model_fields]
    assert not unknown, f"the README documents settings the code does not have: {unknown}"


def test_no_store_flush_interval_setting() -> None:
    # Regression: CITYBRAIN_STORE_FLUSH_INTERVAL_S was documented and read but changed
    # nothing (the worker stores every batch before its Kafka offsets are committed, so
    # rows never wait in a second buffer). It was removed rather than made to buffer
    # across batches, which would commit offsets of rows not yet stored.
    assert "store_flush_interval_s" not in Settings.model_fields
    assert "store_flush_interval_s" not in {f.name for f in fields(WorkerConfig)}
    assert "flush_interval_s" not in {f.name for f in fields(StoreConfig)}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "CITYBRAIN_STORE_FLUSH_INTERVAL_S" not in doc.read_text(encoding="utf-8"), doc.name


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text(encoding="utf-8")[:1500]
    assert "make demo" in head and "make test" in head


def test_topics_doc_names_every_kafka_topic() -> None:
    doc = (ROOT / "docs" / "topics.md").read_text(encoding="utf-8")
    for name in ("citybrain.raw", "citybrain.deadletter", "citybrain.readings.{class}", "citybrain.alerts"):
        assert name in doc


def _standards_rows() -> list[str]:
    text = (ROOT / "docs" / "standards.md").read_text(encoding="utf-8").replace("**", "")
    return [line for line in text.splitlines() if line.startswith("|")]


def _cells(values: Iterable[float]) -> str:
    # 5e-05 is written 0.00005 in the table, as in the standard.
    return " | ".join(format(Decimal(repr(v)), "f") for v in values)


def test_the_standards_page_holds_every_table_the_code_implements() -> None:
    rows = "\n".join(_standards_rows())
    truncated = re.sub(r" \| —", "", rows)  # a row that stops before IAQI 500
    missing = []
    for version in (HJ633_2012, HJ633_2026):
        for key, row in version.breakpoints.items():
            if f"| {_cells(row)} |" not in truncated:
                missing.append(f"AQI {version.name} {key}: {row}")
    for p in GB3838_TABLE1.values():
        for limits in (p.limits, p.lake_limits):
            if limits is not None and p.kind != "range" and f"| {_cells(limits)} |" not in rows:
                missing.append(f"GB 3838 {p.key}: {limits}")
    for zone, (day, night) in NOISE_LIMITS.items():
        if f"| `{zone}` | {day} | {night} |" not in rows:
            missing.append(f"GB 3096 zone {zone}")
    classes = load_class_table()
    missing += [f"class {code}" for code in classes.minors if f"| {code} |" not in rows]
    missing += [f"district {code}" for code in XIAMEN_DISTRICTS if f"| {code} |" not in rows]
    for model in shipped_models().all():
        missing += [
            f"HJ 212 code {m.hj212} ({model.id})"
            for m in model.metrics.values()
            if m.hj212 and f"{m.hj212}" not in rows
        ]
    assert not missing, f"docs/standards.md lacks what the code implements: {missing}"


def test_no_file_cites_a_path_outside_the_repository() -> None:
    # Cited sources live in the repository (docs/standards.md), not on a development machine.
    bad = []
    for package in ("core", "geo", "devices", "ingest", "alerts", "streams", "simulators", "citybrain", "docs"):
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix not in (".py", ".md", ".yaml", ".sql", ".html", ".js") or "__pycache__" in path.parts:
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"/work/|shared/reference|/home/|/Users/", line):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)
