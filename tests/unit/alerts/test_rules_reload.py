"""Hot reload of a rule directory: changed files load, invalid ones are refused and kept out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alerts.errors import RuleError
from alerts.rules import RuleDirectory

RULE = """
- id: air.pm25.test
  class: air
  when: {{metric: pm25, op: ">", value: {limit}}}
  severity:
    - {{level: major}}
  message: "PM2.5 {{pm25}}"
"""


def _write(path: Path, text: str, tick: int) -> None:
    path.write_text(text, encoding="utf-8")
    # Distinct modification times even on a coarse file system clock.
    os.utime(path, ns=(tick * 10**9, tick * 10**9))


def test_loads_once_then_only_after_a_change(tmp_path: Path) -> None:
    f = tmp_path / "air.yaml"
    _write(f, RULE.format(limit=75), 1)
    rules = RuleDirectory(tmp_path)
    first = rules.poll()
    assert first is not None and [r.id for r in first.rules] == ["air.pm25.test"]
    assert rules.poll() is None  # nothing changed
    _write(f, RULE.format(limit=50), 2)
    second = rules.poll()
    assert second is not None and second.rules[0] != first.rules[0]


def test_an_invalid_edit_is_refused_until_the_next_change(tmp_path: Path) -> None:
    f = tmp_path / "air.yaml"
    _write(f, RULE.format(limit=75), 1)
    rules = RuleDirectory(tmp_path)
    assert rules.poll() is not None
    _write(f, "- id: broken\n  class: air\n  when: {metric: pm25, op: '~', value: 1}\n", 2)
    with pytest.raises(RuleError):
        rules.poll()
    assert rules.poll() is None  # the caller keeps its rules; no error storm every poll
    _write(f, RULE.format(limit=60), 3)
    fixed = rules.poll()
    assert fixed is not None and len(fixed.rules) == 1
