"""Scenario loading, ground truth, and precision/recall scoring."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alerts.rules import shipped_rules
from simulators.scenario import (
    ExpectedAlert,
    FiredAlert,
    ScenarioError,
    load_scenario,
    oracle_alerts,
    score,
    shipped_scenarios,
)

T = datetime(2026, 9, 15, tzinfo=UTC)
H = timedelta(hours=1)


def test_the_five_scenarios_ship_and_name_real_rules() -> None:
    assert shipped_scenarios() == [
        "night-construction",
        "pollution-episode",
        "sewage-discharge",
        "source-exceedance",
        "typhoon-rainstorm",
    ]
    rule_ids = {r.id for r in shipped_rules().rules}
    for sid in shipped_scenarios():
        scenario = load_scenario(sid)
        expected = scenario.expected()
        assert expected, sid
        assert {e.rule for e in expected} <= rule_ids
        for e in expected:
            assert scenario.start <= e.start < e.end <= scenario.end + 3 * H


def test_typhoon_ground_truth_names_each_low_lying_cover() -> None:
    scenario = load_scenario("typhoon-rainstorm")
    expected = scenario.expected()
    low = [s for s in scenario.sites() if "low_lying" in s.tags]
    assert {e.device for e in expected} == {s.code for s in low}
    assert 0 < len(low) < len(scenario.sites())


@pytest.mark.parametrize(
    "sid", ["night-construction", "pollution-episode", "sewage-discharge", "source-exceedance", "typhoon-rainstorm"]
)
def test_the_production_rules_reach_the_ground_truth(sid: str) -> None:
    scenario = load_scenario(sid)
    precision, recall, details = score(scenario.expected(), oracle_alerts(scenario, step_s=300))
    assert (precision, recall) == (1.0, 1.0), details


def test_drivers_act_only_inside_effect_windows() -> None:
    scenario = load_scenario("sewage-discharge")
    drivers = scenario.drivers()
    site = scenario.named["houxi-river"]
    control = scenario.named["dongxi-river"]
    assert drivers(site, scenario.start + 2 * H) == {}
    assert drivers(site, scenario.start + 10 * H)["sewage"] == pytest.approx(1.0)
    assert drivers(control, scenario.start + 10 * H) == {}


def test_score_counts_windows_devices_and_districts() -> None:
    expected = [
        ExpectedAlert("manhole.water_level", "A", "350203", T, T + 2 * H),
        ExpectedAlert("air.pm25.high", None, "350205", T, T + 2 * H),
    ]
    fired = [
        FiredAlert("manhole.water_level", "A", "350203", T + H),  # TP
        FiredAlert("manhole.water_level", "B", "350203", T + H),  # wrong device: FP
        FiredAlert("air.pm25.high", "C", "350205", T + 3 * H),  # outside the window: FP
        FiredAlert("pole.tilt", "D", "350205", T + H),  # another rule: out of scope
    ]
    precision, recall, details = score(expected, fired)
    assert precision == pytest.approx(1 / 3) and recall == 0.5
    assert [e.rule for e in details["missed"]] == ["air.pm25.high"]
    all_p, _, _ = score(expected, fired, rules=())
    assert all_p == 0.25
    as_dicts = [{"rule": "air.pm25.high", "device": "C", "district": "350205", "opened_at": "2026-09-15T01:00:00Z"}]
    assert score(expected, as_dicts)[1] == 0.5
    assert score([], []) == (1.0, 1.0, {"true_positives": [], "false_positives": [], "missed": []})


def test_bad_scenarios_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\nstart: '2026-01-01T00:00:00'\nduration: 1h\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="zone"):
        load_scenario(bad)
    bad.write_text("id: x\nstart: '2026-01-01T00:00:00Z'\nduration: 1h\neffects: [{kind: hail, to: 1h}]\n")
    with pytest.raises(ScenarioError, match="hail"):
        load_scenario(bad)
    with pytest.raises(ScenarioError):
        load_scenario("no-such-scenario")


def test_pollution_sources_follow_their_operating_hours_and_the_injected_effects() -> None:
    scenario = load_scenario("source-exceedance")
    models = {m.site.code: m for m in scenario.models()}
    plant = models[scenario.named["haicang-plating"].code]  # operates 08:00-20:00 Beijing
    night, day = scenario.start + 3 * H, scenario.start + 10 * H
    assert plant.sample(night)["flow"] < 1 < plant.sample(day)["flow"]
    assert "hg_hour" in plant.sample(day) and "hg_hour" not in plant.sample(day + timedelta(minutes=5))
    hour = plant.sample(day)
    assert hour["flow_hour_cou"] == pytest.approx(hour["flow_hour"] * 3.6, rel=1e-3)  # L/s × 3600 s = L → m³
    jimei = models[scenario.named["jimei-plating"].code]
    before, during = jimei.sample(scenario.start + 5 * H), jimei.sample(scenario.start + 7 * H)
    assert before["hg_hour"] < 0.05 < during["hg_hour"]  # GB 8978-1996 Table 1: 总汞 0.05 mg/L
    drivers = scenario.drivers()
    assert drivers(scenario.named["jimei-plating"], scenario.start + 7 * H) == {"discharge_factor": 7.0}


def test_an_outage_effect_silences_a_source(tmp_path: Path) -> None:
    text = """
id: outage
start: "2026-06-10T00:00:00+08:00"
duration: 6h
sites: [{name: plant, model: wastewater-source, district: "350211"}]
effects: [{kind: outage, site: plant, from: 2h, to: 4h}]
expected: []
"""
    import yaml

    from simulators.scenario import _parse

    scenario = _parse(yaml.safe_load(text), "outage")
    (model,) = scenario.models()
    assert model.sample(scenario.start + 3 * H) == {}
    assert model.sample(scenario.start + 5 * H)
