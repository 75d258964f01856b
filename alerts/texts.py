"""Alert texts for people: rule names and sentences per language, from templates (data).

The alert record keeps its stable, machine fields (rule id, metric, value,
threshold, labels, UTC times). This module renders, from those fields, what an
operator reads: the rule's name instead of its id, numbers rounded, and times
in the city's zone (Asia/Shanghai) instead of UTC ISO strings. The names and
templates are ``alerts/data/texts/alerts.yaml``; a missing name falls back to
the rule id, so a new rule still renders.

Pure: :class:`AlertTexts` is built from a mapping (:func:`load_texts` reads the
shipped file when called, never at import).
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from alerts.errors import AlertsError

__all__ = ["CITY_ZONE", "AlertTexts", "MetricText", "TextsError", "load_texts"]

CITY_ZONE = ZoneInfo("Asia/Shanghai")
_INCIDENT_SUFFIX = "#incident"


class TextsError(AlertsError, ValueError):
    """The texts file is malformed (a missing language, an unknown placeholder)."""


@dataclass(frozen=True, slots=True)
class MetricText:
    """How a metric reads: its label per language and its display unit."""

    label: Mapping[str, str]
    unit: str = ""


_UNIT_DISPLAY = {"ug/m3": "µg/m³", "mg/m3": "mg/m³", "degC": "°C", "degF": "°F", "deg": "°", "1": ""}
_FIELDS = {
    "rule_name",
    "metric_name",
    "value",
    "unit",
    "threshold",
    "opened",
    "score",
    "baseline",
    "direction",
    "window_start",
    "window_end",
    "detectors",
    "devices",
    "district_name",
}


def display_unit(unit: str | None) -> str:
    """A canonical unit as people write it (``ug/m3`` → ``µg/m³``)."""
    return "" if not unit else _UNIT_DISPLAY.get(unit, unit)


def _spaced(unit: str) -> str:
    # "104 µg/m³", "12 %", but "15°" (SI: no space before the degree sign of angles).
    return "" if not unit else unit if unit == "°" else f" {unit}"


def _number(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "?" if value is None else str(value)
    if not math.isfinite(v):
        return "?"
    # At most 2 decimals, trailing zeros dropped: 104.2345 → 104.23, 6.0 → 6.
    text = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


class AlertTexts:
    """Rule names and templates per language; renders alert records."""

    def __init__(self, doc: Mapping[str, Any], zone: ZoneInfo = CITY_ZONE) -> None:
        langs = doc.get("languages")
        if not isinstance(langs, list) or not langs or not all(isinstance(x, str) for x in langs):
            raise TextsError("texts: 'languages' must be a non-empty list of language tags")
        self.languages: tuple[str, ...] = tuple(langs)
        self.zone = zone
        self._names: dict[str, dict[str, str]] = {}
        for rule, names in (doc.get("rules") or {}).items():
            self._names[str(rule)] = self._per_language(f"rules.{rule}", names)
        self._directions = {
            str(k): self._per_language(f"directions.{k}", v) for k, v in (doc.get("directions") or {}).items()
        }
        self._templates: dict[str, dict[str, str]] = {}
        for key, texts in (doc.get("templates") or {}).items():
            per = self._per_language(f"templates.{key}", texts)
            for lang, template in per.items():
                used = {f for _, f, _, _ in string.Formatter().parse(template) if f}
                unknown = used - _FIELDS
                if unknown:
                    raise TextsError(f"texts: templates.{key}.{lang} uses unknown placeholders {sorted(unknown)}")
            self._templates[str(key)] = per
        for needed in ("default", "measured", "no_value", "incident"):
            if needed not in self._templates:
                raise TextsError(f"texts: templates.{needed} is missing")

    def _per_language(self, where: str, value: Any) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise TextsError(f"texts: {where} must map languages to text")
        missing = [lang for lang in self.languages if not isinstance(value.get(lang), str)]
        if missing:
            raise TextsError(f"texts: {where} has no text for {missing}")
        return {lang: str(value[lang]) for lang in self.languages}

    def _match(self, table: Mapping[str, dict[str, str]], rule: str) -> tuple[dict[str, str] | None, str]:
        """The entry for a rule id: exact; else a key with ``*`` segments (rules made per
        pollutant, ``wastewater.*.hour_limit``), whose matched segment is returned too;
        else the longest ``prefix.`` key."""
        if rule in table:
            return table[rule], ""
        parts = rule.split(".")
        for key, entry in table.items():
            pattern = key.split(".")
            if (
                "*" in pattern
                and len(pattern) == len(parts)
                and all(p in ("*", r) for p, r in zip(pattern, parts, strict=True))
            ):
                return entry, next(r for p, r in zip(pattern, parts, strict=True) if p == "*")
        best = max((k for k in table if k.endswith(".") and rule.startswith(k)), key=len, default=None)
        return (table[best] if best is not None else None), ""

    def _lookup(self, table: Mapping[str, dict[str, str]], rule: str) -> dict[str, str] | None:
        return self._match(table, rule)[0]

    def rule_name(self, rule: str, lang: str, metrics: Mapping[str, MetricText] | None = None) -> str:
        """The rule's name in ``lang``, or the rule id when none is known.

        A name of a per-pollutant rule (key with ``*``) may say ``{pollutant}``:
        the metric's label when ``metrics`` knows it, else the id's segment.
        """
        names, segment = self._match(self._names, rule.removesuffix(_INCIDENT_SUFFIX))
        if not names or lang not in names:
            return rule
        mt = (metrics or {}).get(segment)
        pollutant = (mt.label.get(lang) if mt else None) or segment.upper()
        return names[lang].replace("{pollutant}", pollutant)

    def local_time(self, value: Any) -> str:
        """An ISO or datetime time as ``YYYY-MM-DD HH:MM:SS`` in the city's zone (no zone suffix)."""
        t = _parse_time(value)
        if t is None:
            return "?"
        if t.tzinfo is None:
            return t.strftime("%Y-%m-%d %H:%M:%S")
        return t.astimezone(self.zone).strftime("%Y-%m-%d %H:%M:%S")

    def render(
        self,
        alert: Mapping[str, Any],
        lang: str,
        *,
        metrics: Mapping[str, MetricText] | None = None,
        districts: Mapping[str, Mapping[str, str]] | None = None,
    ) -> dict[str, str]:
        """``{"title", "text"}`` of one alert record (API form) in ``lang``.

        Args:
            alert: An alert as the API or the feed gives it (``rule``,
                ``metric``, ``value``, ``threshold``, ``labels``, ``opened_at`` …).
            lang: One of :attr:`languages`.
            metrics: Metric labels and units by metric name.
            districts: District names per language by district code.
        """
        if lang not in self.languages:
            raise TextsError(f"unknown language {lang!r}; one of {self.languages}")
        rule = str(alert.get("rule") or "")
        labels = alert.get("labels") or {}
        if not isinstance(labels, Mapping):
            labels = {}
        metric = alert.get("metric")
        mt = (metrics or {}).get(str(metric)) if metric else None
        district = str(alert.get("district") or "")
        values = {
            "rule_name": self.rule_name(rule, lang, metrics),
            "metric_name": (mt.label.get(lang) or str(metric)) if mt else str(metric or ""),
            "value": _number(alert.get("value")),
            "unit": _spaced(display_unit(mt.unit)) if mt else "",
            "threshold": _number(
                alert.get("threshold") if alert.get("threshold") is not None else labels.get("threshold")
            ),
            "opened": self.local_time(alert.get("opened_at")),
            "score": _number(labels.get("score")),
            "baseline": _number(labels.get("baseline")),
            "direction": (self._directions.get(str(labels.get("detail")), {}).get(lang, "")),
            "window_start": self.local_time(labels.get("window_start")),
            "window_end": self.local_time(labels.get("window_end")),
            "detectors": str(labels.get("detectors", "")),
            "devices": str(labels.get("devices", "")),
            "district_name": ((districts or {}).get(district, {}).get(lang) or district),
        }
        if rule.endswith(_INCIDENT_SUFFIX):
            chosen = self._templates["incident"]
        elif (found := self._lookup(self._templates, rule)) is not None:
            chosen = found
        elif alert.get("value") is None:
            chosen = self._templates["no_value"]
        elif alert.get("threshold") is None:
            chosen = self._templates["measured"]
        else:
            chosen = self._templates["default"]
        text = chosen[lang].format(**values)
        return {"title": values["rule_name"], "text": text}

    def render_all(
        self,
        alert: Mapping[str, Any],
        *,
        metrics: Mapping[str, MetricText] | None = None,
        districts: Mapping[str, Mapping[str, str]] | None = None,
    ) -> dict[str, dict[str, str]]:
        """:meth:`render` in every language, keyed by language tag."""
        return {lang: self.render(alert, lang, metrics=metrics, districts=districts) for lang in self.languages}


def load_texts(zone: ZoneInfo = CITY_ZONE) -> AlertTexts:
    """The shipped texts (``alerts/data/texts/alerts.yaml``), validated."""
    text = resources.files("alerts").joinpath("data/texts/alerts.yaml").read_text(encoding="utf-8")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TextsError(f"texts: alerts.yaml is not valid YAML: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise TextsError("texts: alerts.yaml must be a mapping")
    return AlertTexts(doc, zone)
