"""Alert texts from templates (alerts/data/texts/alerts.yaml): names, local time, languages."""

from __future__ import annotations

from typing import Any

import pytest

from alerts.anomaly.result import DetectorKind
from alerts.rules import shipped_rules
from alerts.texts import AlertTexts, MetricText, TextsError, load_texts

PM25 = {"pm25": MetricText({"zh-CN": "PM2.5", "en": "PM2.5"}, "ug/m3")}


def test_every_shipped_rule_and_detector_has_a_name_in_every_language() -> None:
    texts = load_texts()
    rule_ids = [r.id for r in shipped_rules().rules]
    ids = [*rule_ids, *(f"anomaly.{k.value}" for k in DetectorKind), "device.offline", "geofence.school-1"]
    for lang in texts.languages:
        missing = [rid for rid in ids if texts.rule_name(rid, lang) == rid]
        assert missing == [], f"{lang}: no name for {missing}"


def test_threshold_rule_text_uses_names_and_local_time() -> None:
    alert = {
        "rule": "air.pm25.high",
        "metric": "pm25",
        "value": 230.0,
        "threshold": 75.0,
        "opened_at": "2026-12-07T23:30:00Z",  # 07:30 next day in Asia/Shanghai
    }
    out = load_texts().render_all(alert, metrics=PM25)
    assert out["zh-CN"] == {
        "title": "颗粒物浓度超标",
        "text": "颗粒物浓度超标：PM2.5 230 µg/m³，阈值 75 µg/m³（2026-12-08 07:30:00 起）",
    }
    assert (
        out["en"]["text"]
        == "Particulate matter above limit: PM2.5 230 µg/m³, threshold 75 µg/m³ (since 2026-12-08 07:30:00)"
    )


def test_alerts_without_value_or_rule_name_still_render() -> None:
    texts = load_texts()
    lid = texts.render({"rule": "manhole.lid_open", "opened_at": "2026-12-07T00:00:00Z"}, "zh-CN")
    assert lid["text"] == "井盖开启（2026-12-07 08:00:00 起）"
    unknown = texts.render({"rule": "custom.rule", "metric": "x", "value": 3, "opened_at": None}, "en")
    assert unknown == {"title": "custom.rule", "text": "custom.rule: x 3 (since ?)"}
    incident = texts.render(
        {
            "rule": "air.pm25.high#incident",
            "district": "350203",
            "labels": {"devices": "5"},
            "opened_at": "2026-12-07T00:00:00Z",
        },
        "zh-CN",
        districts={"350203": {"zh-CN": "思明区", "en": "Siming"}},
    )
    assert incident["text"] == "区域事件：思明区 5 台设备颗粒物浓度超标（2026-12-07 08:00:00 起）"


def test_per_pollutant_rules_are_named_with_the_pollutant() -> None:
    """``wastewater.*.hour_limit`` names every ``wastewater.<pollutant>.hour_limit`` rule, with the metric's label."""
    texts = load_texts()
    hg = {"hg": MetricText({"zh-CN": "总汞", "en": "Total Hg"}, "mg/L")}
    assert texts.rule_name("wastewater.hg.hour_limit", "zh-CN", hg) == "废水总汞小时均值超许可限值"
    assert texts.rule_name("fluegas.so2.day_cap", "en") == "Flue gas SO2 daily load at the permit cap"
    assert texts.rule_name("wastewater.hg.unknown_kind", "en") == "wastewater.hg.unknown_kind"


def test_malformed_texts_are_refused() -> None:
    base: dict[str, Any] = {
        "languages": ["zh-CN", "en"],
        "templates": {
            k: {"zh-CN": "{rule_name}", "en": "{rule_name}"} for k in ("default", "measured", "no_value", "incident")
        },
    }
    AlertTexts(base)
    with pytest.raises(TextsError, match="unknown placeholders"):
        AlertTexts({**base, "templates": {**base["templates"], "default": {"zh-CN": "{oops}", "en": "x"}}})
    with pytest.raises(TextsError, match="no text for"):
        AlertTexts({**base, "rules": {"a.b": {"zh-CN": "名"}}})
    with pytest.raises(TextsError, match="unknown language"):
        AlertTexts(base).render({"rule": "a"}, "fr")
