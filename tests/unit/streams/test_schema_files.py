"""The shipped JSON Schemas are valid draft 2020-12 and the AsyncAPI document refers to them all."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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


#: Section of docs/topics.md → the schema its ```json examples follow.
SCHEMA_OF_SECTION = {
    "Canonical telemetry, v1": "telemetry.v1",
    "`citybrain.readings` v1": "readings.v1",
    "`citybrain.alerts` v1": "alerts.v1",
}


def _topics_md() -> str:
    return (ROOT / "docs" / "topics.md").read_text(encoding="utf-8")


def json_examples(markdown: str) -> list[tuple[str, Any]]:
    """Every ```json block of ``markdown``, parsed, with the heading of its section."""
    out: list[tuple[str, Any]] = []
    section, fence, block = "", None, []
    for line in markdown.splitlines():
        if fence is None and line.startswith("```"):
            fence, block = line[3:].strip(), []
        elif fence is not None and line.startswith("```"):
            if fence == "json":
                out.append((section, json.loads("\n".join(block))))
            fence = None
        elif fence is not None:
            block.append(line)
        elif line.startswith("#"):
            section = line.lstrip("#").strip()
    assert fence is None, "unclosed code fence in docs/topics.md"
    return out


def _alternatives(payload: str) -> list[str]:
    """``{"state":"online"\\|"offline"}`` (a table cell) → one payload per alternative."""
    m = re.search(r'("[^"]*")((?:\\\|"[^"]*")+)', payload)
    if m is None:
        return [payload]
    alts = [m.group(1), *re.findall(r'\\\|("[^"]*")', m.group(2))]
    return [payload[: m.start()] + alt + payload[m.end() :] for alt in alts]


def test_examples_in_topics_md_validate() -> None:
    examples = json_examples(_topics_md())
    unmapped = [section for section, _ in examples if section not in SCHEMA_OF_SECTION]
    assert not unmapped, f"a JSON example in docs/topics.md under a section with no schema: {unmapped}"
    assert {SCHEMA_OF_SECTION[section] for section, _ in examples} == set(SCHEMA_OF_SECTION.values())
    for section, doc in examples:
        validator = jsonschema.Draft202012Validator(schemas.load(SCHEMA_OF_SECTION[section]))
        errors = [e.message for e in validator.iter_errors(doc)]
        assert not errors, f"docs/topics.md, {section}: {errors}"
        assert doc["v"] == 1  # "Every JSON payload carries "v": 1"


def test_status_payloads_in_topics_md_validate() -> None:
    row = next(line for line in _topics_md().splitlines() if line.startswith("| `citybrain/up/{code}/status`"))
    payload = row.split("|")[4:]  # the payload cell holds an escaped "|": rejoin it
    cell = "|".join(payload).strip().strip("|").strip()
    assert cell.startswith("`") and cell.endswith("`"), cell
    docs = [json.loads(p) for p in _alternatives(cell.strip("`"))]
    assert [d["state"] for d in docs] == ["online", "offline"]
    validator = jsonschema.Draft202012Validator(schemas.load("status.v1"))
    for doc in docs:
        validator.validate(doc)


def test_time_forms_in_topics_md_validate_and_a_time_without_zone_does_not() -> None:
    text = _topics_md()
    telemetry = next(doc for section, doc in json_examples(text) if SCHEMA_OF_SECTION[section] == "telemetry.v1")
    v = jsonschema.Draft202012Validator(schemas.load("telemetry.v1"))
    line = next(line for line in text.splitlines() if "are the same instant" in line)
    forms = [json.loads(n) for n in re.findall(r"`(\d+(?:\.\d+)?)`", line)]
    assert len(forms) == 3 and isinstance(forms[1], float)
    for ts in forms:
        v.validate({**telemetry, "ts": ts})
        v.validate({"v": 1, "records": [{"ts": ts, "metrics": telemetry["metrics"]}]})
    no_zone = re.sub(r"([+-]\d\d:\d\d|Z)$", "", telemetry["ts"])
    assert no_zone != telemetry["ts"]
    assert not v.is_valid({**telemetry, "ts": no_zone})  # "A time without a zone is rejected"
    assert not v.is_valid({"v": 1, "ts": forms[0], "metrics": {}})


def test_examples_are_read_from_the_markdown() -> None:
    md = 'intro\n\n### Canonical telemetry, v1\n\n```json\n{"v": 1,\n "ts": 1}\n```\n\n```\nraw\n```\n'
    assert json_examples(md) == [("Canonical telemetry, v1", {"v": 1, "ts": 1})]
    assert _alternatives('{"v":1,"state":"online"\\|"offline"}') == [
        '{"v":1,"state":"online"}',
        '{"v":1,"state":"offline"}',
    ]
