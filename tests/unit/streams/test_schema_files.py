"""The shipped JSON Schemas are valid draft 2020-12 and the AsyncAPI document refers to them all."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from citybrain.routes.schemas import ASYNCAPI_PATH, bundled_asyncapi
from streams import schemas

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", schemas.names())
def test_schema_is_valid_2020_12(name: str) -> None:
    doc = schemas.load(name)
    assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(doc)


def test_asyncapi_covers_every_topic_and_schema() -> None:
    text = ASYNCAPI_PATH.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    assert doc["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in doc["channels"].values()}
    topics_md = (ROOT / "docs" / "topics.md").read_text(encoding="utf-8")
    for addr in addresses:
        assert addr in topics_md, addr
    for expected in ("citybrain.raw", "citybrain.deadletter", "citybrain.readings.{class}", "citybrain.alerts"):
        assert expected in addresses
    for name in schemas.names():
        assert f"../streams/schemas/{name}.json" in text
        assert (ROOT / "streams" / "schemas" / f"{name}.json").exists()
    served = bundled_asyncapi(text)
    assert "../streams" not in served and "$ref: '#/$defs" not in served and "$defs" not in served
    payload = yaml.safe_load(served)["components"]["messages"]["reading"]["payload"]["schema"]
    assert payload["title"].startswith("citybrain.readings") and payload["properties"]["ts"]["pattern"].endswith("Z$")


def test_examples_in_topics_md_validate() -> None:
    v = jsonschema.Draft202012Validator(schemas.load("telemetry.v1"))
    v.validate(
        {"v": 1, "ts": "2026-11-29T16:00:00+08:00", "metrics": {"pm25": 35.2, "co": {"value": 1.2, "unit": "ppm"}}}
    )
    v.validate({"v": 1, "records": [{"ts": 1700000000, "metrics": {"lid_open": False}}]})
    assert not v.is_valid({"v": 1, "ts": "2026-11-29T16:00:00", "metrics": {"pm25": 1}})  # no zone
    assert not v.is_valid({"v": 1, "ts": 1700000000, "metrics": {}})
