"""streams.app.tune_gc: the worker process collects young garbage in larger steps."""

from __future__ import annotations

import gc

from streams.app import GC_YOUNG_THRESHOLD, tune_gc


def test_tune_gc_raises_the_young_threshold_and_keeps_collection_on() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD > before[0]
        assert gc.isenabled()
    finally:
        gc.set_threshold(*before)
