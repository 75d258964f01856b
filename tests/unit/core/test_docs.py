"""Docs that must stay in step with the code."""

from pathlib import Path

from citybrain.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [n for n in Settings.model_fields if f"`CITYBRAIN_{n.upper()}`" not in readme]
    assert not missing, f"add these settings to the README's configuration table: {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text(encoding="utf-8")[:1500]
    assert "make demo" in head and "make test" in head


def test_topics_doc_names_every_kafka_topic() -> None:
    doc = (ROOT / "docs" / "topics.md").read_text(encoding="utf-8")
    for name in ("citybrain.raw", "citybrain.deadletter", "citybrain.readings.{class}", "citybrain.alerts"):
        assert name in doc
