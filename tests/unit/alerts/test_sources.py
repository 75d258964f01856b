"""Pollution sources against their discharge permit: the worked example of issue 19.

A wastewater outlet under permit ``91350200TEST0001P`` sends one hourly upload per hour
for a local day: flow 10 L/s (36 m³ an hour), COD 50 mg/L, total mercury 0.03 mg/L.

* At 05:00 the mercury hourly mean is 0.08 mg/L, above GB 8978-1996 Table 1's 0.05:
  exactly one alert, naming the permit and the clause.
* At 09:00 the mercury mean is 0.2 mg/L but flagged M (maintenance), at 14:00 0.3 mg/L
  flagged T (above the measuring range): no alert for either.
* COD: 50 mg/L × 36 m³ = 1.8 kg an hour against a daily cap of 20 kg: the cap is reached
  with the 11:00 hour (12 × 1.8 = 21.6 kg), mid-day: exactly one cap alert.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from alerts.engine import DeviceContext, evaluate_device
from alerts.indicators.source import in_operating_hours, interval_load_g, period_bounds, source_indicators
from alerts.rules import shipped_rules
from core.records import Quality, Reading
from devices.errors import PermitError
from devices.models import shipped_models
from devices.permits import Permit, PermitLimit, default_limits, permit_attributes
from streams.liveness import OFFLINE_RULE, DeviceLiveness, LivenessConfig, liveness_transitions

CODE = "35020603100000017"
DAY = datetime(2026, 12, 6, 16, 0, tzinfo=UTC)  # 2026-12-07 00:00 Beijing time


def permit() -> Permit:
    model = shipped_models().get("wastewater-source")
    limits = default_limits(model, CODE, caps={"cod": {"day_kg": 20.0, "year_kg": 5000.0}})
    return Permit("91350200TEST0001P", "Test Plating Co.", date(2026, 1, 1), date(2030, 12, 31), tuple(limits))


def hour(h: int, hg: float, hg_flag: str = "N") -> list[Reading]:
    t = DAY + timedelta(hours=h)
    rx = t + timedelta(hours=1, minutes=2)
    q = Quality.GOOD if hg_flag == "N" else Quality.SUSPECT
    return [
        Reading(CODE, "flow_hour", t, rx, 10.0, "L/s", flag="N"),
        Reading(CODE, "flow_hour_cou", t, rx, 36.0, "m3", flag="N"),
        Reading(CODE, "cod_hour", t, rx, 50.0, "mg/L", flag="N"),
        Reading(CODE, "hg_hour", t, rx, hg, "mg/L", quality=q, flag=hg_flag),
    ]


def run_day() -> list:
    ctx = DeviceContext(CODE, "350206", "wastewater", attributes={"permit": permit_attributes(permit(), CODE)})
    readings: list[Reading] = []
    for h in range(24):
        hg, flag = {5: (0.08, "N"), 9: (0.2, "M"), 14: (0.3, "T")}.get(h, (0.03, "N"))
        readings += hour(h, hg, flag)
    out, _ = evaluate_device(shipped_rules().rules, readings, ctx, {}, {}, 0)
    return out


def test_an_hourly_mean_above_the_limit_raises_exactly_one_alert_naming_permit_and_clause() -> None:
    opened = [t.alert for t in run_day() if t.kind == "open" and t.alert.rule == "wastewater.hg.hour_limit"]
    assert len(opened) == 1
    alert = opened[0]
    assert alert.opened_at == DAY + timedelta(hours=5)
    assert "91350200TEST0001P" in alert.message and "GB 8978-1996 表1 第1项 总汞" in alert.message
    assert "0.08" in alert.message and "0.05" in alert.message


def test_flagged_hours_raise_nothing_and_the_exceedance_clears_with_the_next_valid_hour() -> None:
    hg = [t for t in run_day() if t.alert.rule == "wastewater.hg.hour_limit"]
    assert [(t.kind, t.alert.opened_at.hour) for t in hg] == [("open", 21), ("clear", 21)]  # 05:00 Beijing
    assert hg[1].alert.cleared_at == DAY + timedelta(hours=6)  # M at 09:00 and T at 14:00: nothing


def test_a_load_cap_reached_mid_day_raises_exactly_one_alert() -> None:
    out = run_day()
    cap = [t.alert for t in out if t.kind == "open" and t.alert.rule == "wastewater.cod.day_cap"]
    assert len(cap) == 1
    assert cap[0].opened_at == DAY + timedelta(hours=11)  # 11:00 Beijing: 21.6 kg ≥ 20 kg
    assert "20.0 kg" in cap[0].message and "21.6" in cap[0].message
    # The forecast warned first (hour 0: 1.8 + 1.8 × 23 ≥ 20) and gave way to the cap alert.
    forecast = [t for t in out if t.alert.rule == "wastewater.cod.day_cap_forecast"]
    assert [(t.kind, t.alert.opened_at) for t in forecast] == [("open", DAY), ("clear", DAY)]
    assert forecast[1].alert.cleared_at == DAY + timedelta(hours=11)
    assert not [t for t in out if t.alert.rule.endswith("year_cap")]


def test_loads_restart_with_the_local_day_and_count_mg_per_litre_times_cubic_metres_as_grams() -> None:
    assert interval_load_g(50.0, 36.0, "water") == pytest.approx(1800.0)  # 1.8 kg
    assert interval_load_g(80.0, 72000.0, "gas") == pytest.approx(5760.0)  # 5.76 kg
    b = period_bounds(DAY.timestamp())
    assert b["day"] == (DAY.timestamp(), (DAY + timedelta(days=1)).timestamp())
    assert b["month"][0] == datetime(2026, 11, 30, 16, tzinfo=UTC).timestamp()
    assert b["year"][1] == datetime(2026, 12, 31, 16, tzinfo=UTC).timestamp()
    attrs = {"permit": permit_attributes(permit(), CODE)}
    t1 = (DAY - timedelta(hours=1)).timestamp()  # 23:00 the day before
    snap = {"cod_hour": [50.0, t1, 0, 0], "flow_hour": [10.0, t1, 0, 0]}  # no Cou: 10 L/s × 3600 s
    out = source_indicators(snap, attrs, t1, medium="water", flow_m3_per_unit_s=0.001)
    assert out["cod_load_hour_kg"] == pytest.approx(1.8) and out["cod_load_day_ratio"] == pytest.approx(0.09)
    snap.update({k: [v, t1, 0, 0] for k, v in out.items()})
    t2 = DAY.timestamp()
    snap.update({"cod_hour": [50.0, t2, 0, 0], "flow_hour": [10.0, t2, 0, 0]})
    out2 = source_indicators(snap, attrs, t2, medium="water", flow_m3_per_unit_s=0.001)
    assert out2["cod_load_day_kg"] == pytest.approx(1.8)  # a new day
    assert out2["cod_load_year_kg"] == pytest.approx(3.6)  # the same year
    assert "hg_load_hour_kg" not in out2  # no fresh mercury mean this hour


def test_a_limit_names_its_clause_and_caps_are_positive() -> None:
    with pytest.raises(PermitError):
        PermitLimit(CODE, "hg", 0.05, "mg/L", " ")
    with pytest.raises(PermitError):
        PermitLimit(CODE, "cod", None, "mg/L", "permit", day_kg=0)
    with pytest.raises(PermitError):
        Permit("X", "Y", date(2027, 1, 1), date(2026, 1, 1))
    lims = {lim.metric: lim for lim in permit().limits}
    assert lims["alkyl_hg"].limit == 0  # 不得检出
    assert lims["cr6"].limit == 0.5 and lims["cod"].limit is None and lims["cod"].day_kg == 20.0


def test_a_source_silent_during_its_operating_hours_is_in_outage_naming_its_permit() -> None:
    def dev(last_seen: datetime) -> DeviceLiveness:
        return DeviceLiveness(
            CODE, "350206", "wastewater", 600, last_seen, None, None, "08:00-18:00", "91350200TEST0001P"
        )

    cfg = LivenessConfig(k=5)
    # Silent since 10:00 Beijing; at 11:00 (five 10-minute cadences later) it is in outage.
    day_out = liveness_transitions([dev(DAY + timedelta(hours=10))], {}, DAY + timedelta(hours=11), cfg)
    assert [(k, a.rule) for k, a in day_out] == [("open", OFFLINE_RULE)]
    assert "permit 91350200TEST0001P" in day_out[0][1].message and "08:00-18:00" in day_out[0][1].message
    # Shut at 18:00 as it should: at 19:00 nothing opens.
    assert liveness_transitions([dev(DAY + timedelta(hours=18))], {}, DAY + timedelta(hours=19), cfg) == []


@pytest.mark.parametrize(
    ("spec", "hour", "inside"),
    [
        ("08:00-18:00", 8, True),
        ("08:00-18:00", 18, False),
        ("22:00-06:00", 23, True),
        ("22:00-06:00", 12, False),
        ("00:00-24:00", 23, True),
        ("06:00-12:00, 13:00-17:00", 12, False),
    ],
)
def test_operating_hours(spec: str, hour: int, inside: bool) -> None:
    assert in_operating_hours(spec, (DAY + timedelta(hours=hour)).timestamp()) is inside
    with pytest.raises(ValueError):
        in_operating_hours("8-18", DAY.timestamp())
