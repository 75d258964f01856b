"""Docs that must stay in step with the code."""

import re
from dataclasses import fields
from pathlib import Path

from citybrain.settings import Settings
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
