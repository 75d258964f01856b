"""Masking readings records by data grade, the graded Kafka view plan and the graded topics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from core.topics import KafkaTopics, TopicError, downstream_filter, downstream_topic
from devices.code import DeviceCode
from devices.grades import GradeMasker, grade_rank, masker_for
from devices.models import ModelRegistry, load_models, shipped_models
from streams import schemas
from streams.downstream import plan_views

GAS = DeviceCode.build("350206", "0111", 1).full  # gas manhole cover: sensitive location
SEWAGE = DeviceCode.build("350206", "0102", 1).full  # sewage cover: location public
MODELS = Path(__file__).resolve().parents[3] / "devices" / "data" / "models"


@pytest.fixture(scope="module")
def graded() -> ModelRegistry:
    """The shipped models plus a manhole model v2 with a sensitive metric and a position."""
    text = (MODELS / "manhole-cover.yaml").read_text(encoding="utf-8")
    text = text.replace("version: 1", "version: 2").replace(
        "attributes:",
        "  - {name: valve_pressure, unit: kPa, range: [0, 2000], grade: sensitive}\n"
        "  - {name: lon, unit: deg, range: [-180, 180]}\n"
        "  - {name: lat, unit: deg, range: [-90, 90]}\n"
        "attributes:",
        1,
    )
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for f in MODELS.glob("*.yaml"):
            (Path(d) / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
        (Path(d) / "manhole-cover-2.yaml").write_text(text, encoding="utf-8")
        return load_models(Path(d))


def _doc(code: str, model: str, metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "v": 1,
        "device": code,
        "district": "350206",
        "class": "manhole",
        "model": model,
        "grid": None,
        "ts": "2026-11-29T08:00:00Z",
        "rx": "2026-11-29T08:00:01Z",
        "readings": [{"metric": m, "value": v, "unit": "x", "quality": "good"} for m, v in metrics.items()],
    }


def _metrics(doc: Any) -> dict[str, float]:
    return {r["metric"]: r["value"] for r in doc["readings"]}


def _masker(models: ModelRegistry) -> GradeMasker:
    return GradeMasker(models, is_sensitive_code=lambda c: c[6:10] == "0111", coarsen=lambda x, y: (118.0, 24.5))


def test_manhole_views_by_grade(graded: ModelRegistry) -> None:
    doc = _doc(SEWAGE, "manhole-cover@2", {"tilt": 3.0, "rssi": -97.0, "valve_pressure": 410.0, "battery": 88.0})
    m = _masker(graded)
    public, internal, sensitive = (m.view(doc, g) for g in ("public", "internal", "sensitive"))
    assert _metrics(public) == {"tilt": 3.0, "battery": 88.0}
    assert _metrics(internal) == {"tilt": 3.0, "rssi": -97.0, "battery": 88.0}
    assert sensitive is doc  # the full record, serialisation reusable
    assert doc["readings"][1]["metric"] == "rssi"  # the input is not modified
    assert public is not None and {k: v for k, v in public.items() if k != "readings"} == {
        k: v for k, v in doc.items() if k != "readings"
    }
    v = jsonschema.Draft202012Validator(schemas.load("readings.v1"))
    for view in (public, internal, sensitive):
        v.validate(json.loads(json.dumps(view)))


def test_shipped_manhole_rssi_is_internal() -> None:
    doc = _doc(SEWAGE, "manhole-cover@1", {"lid_open": 1.0, "rssi": -80.0})
    m = masker_for(shipped_models())
    assert _metrics(m.view(doc, "public")) == {"lid_open": 1.0}
    assert m.view(doc, "internal") is doc
    # Only graded metrics: nothing to publish in the public view.
    assert m.view(_doc(SEWAGE, "manhole-cover@1", {"rssi": -80.0}), "public") is None
    air = _doc("35020603080000017", "air-station@1", {"pm25": 35.0})
    assert m.view(air, "public") is air


def test_unknown_model_fails_closed(graded: ModelRegistry) -> None:
    doc = _doc(SEWAGE, "nonesuch@9", {"tilt": 1.0})
    m = _masker(graded)
    assert m.view(doc, "public") is None and m.view(doc, "internal") is None
    assert m.view(doc, "sensitive") is doc
    assert grade_rank("bogus") == grade_rank("sensitive")


def test_gas_manhole_position_is_coarsened_below_sensitive(graded: ModelRegistry) -> None:
    m = _masker(graded)
    doc = _doc(GAS, "manhole-cover@2", {"tilt": 2.0, "lon": 118.123456, "lat": 24.487654})
    for grade in ("public", "internal"):
        assert _metrics(m.view(doc, grade)) == {"tilt": 2.0, "lon": 118.0, "lat": 24.5}
    assert _metrics(m.view(doc, "sensitive")) == {"tilt": 2.0, "lon": 118.123456, "lat": 24.487654}
    # Half a position cannot be coarsened: it is dropped.
    half = _doc(GAS, "manhole-cover@2", {"tilt": 2.0, "lon": 118.123456})
    assert _metrics(m.view(half, "public")) == {"tilt": 2.0}
    # A sewage cover's position is public.
    sewage = _doc(SEWAGE, "manhole-cover@2", {"lon": 118.123456, "lat": 24.487654})
    assert m.view(sewage, "public") is sewage


def test_real_coarsening_uses_the_grid(graded: ModelRegistry) -> None:
    doc = _doc(GAS, "manhole-cover@2", {"lon": 118.123456, "lat": 24.487654})
    lon, lat = (_metrics(GradeMasker(graded).view(doc, "public"))[k] for k in ("lon", "lat"))
    assert (lon, lat) != (118.123456, 24.487654)
    assert abs(lon - 118.123456) < 0.05 and abs(lat - 24.487654) < 0.05


def test_plan_auto_only_for_graded_classes(graded: ModelRegistry) -> None:
    t = KafkaTopics("cb")
    plan = plan_views(shipped_models())
    assert dict(plan.views) == {"manhole": ("public",)}
    assert plan.kafka_topics(t) == ["cb.readings.manhole.public"]
    assert plan.topic_for(t, "manhole", "public") == "cb.readings.manhole.public"
    assert plan.topic_for(t, "manhole", "internal") == "cb.readings.manhole"  # no sensitive metric yet
    assert plan.topic_for(t, "air", "public") == "cb.readings.air"  # all public: the full topic is the view
    wider = plan_views(graded)
    assert wider.grades("manhole") == ("public", "internal")
    assert wider.topic_for(t, "manhole", "internal") == "cb.readings.manhole.internal"
    every = plan_views(shipped_models(), "all")
    assert every.grades("air") == ("public", "internal")
    assert len(every.kafka_topics(t)) == 2 * len(shipped_models().device_classes())
    off = plan_views(shipped_models(), "off")
    assert off.kafka_topics(t) == [] and off.topic_for(t, "manhole", "public") is None
    assert off.topic_for(t, "air", "public") == "cb.readings.air"
    with pytest.raises(ValueError):
        plan_views(shipped_models(), "some")


def test_graded_topic_names() -> None:
    code = "35020603080000017"
    assert downstream_topic("350206", "air", code) == f"citybrain/down/350206/air/{code}"
    assert downstream_topic("350206", "air", code, "internal") == f"citybrain/down-internal/350206/air/{code}"
    assert downstream_topic("350206", "air", code, "sensitive") == f"citybrain/down-sensitive/350206/air/{code}"
    assert downstream_filter() == "citybrain/down/+/#"
    assert downstream_filter("internal", "350203") == "citybrain/down-internal/350203/#"
    t = KafkaTopics()
    assert t.readings_view("manhole", "public") == "citybrain.readings.manhole.public"
    assert t.readings_view("manhole", "sensitive") == "citybrain.readings.manhole"
    for bad in (lambda: downstream_topic("350206", "air", code, "secret"), lambda: t.readings_view("air", "x")):
        with pytest.raises(TopicError):
            bad()
