"""core.jsonio: the hot path's JSON reads back as what json.dumps wrote, numpy scalars and non-string keys included."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core.jsonio import dumps, dumps_text, loads


def test_documents_read_back_as_the_standard_library_wrote_them() -> None:
    doc = {"v": 1, "device": "35020603080000017", "readings": [{"metric": "pm25", "value": 35.5, "flag": None}]}
    assert json.loads(dumps(doc)) == json.loads(json.dumps(doc))
    assert loads(dumps_text(doc)) == doc


def test_numpy_scalars_and_non_string_keys() -> None:
    assert json.loads(dumps({1: np.float64(2.5), "n": np.int64(3)})) == {"1": 2.5, "n": 3}


def test_non_finite_floats_become_null_not_invalid_json() -> None:
    assert json.loads(dumps([math.nan, math.inf])) == [None, None]


def test_loads_refuses_what_is_not_json() -> None:
    with pytest.raises(ValueError):
        loads(b'{"a": NaN}')
