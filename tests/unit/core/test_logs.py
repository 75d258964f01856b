"""JSON log lines carry time, level, logger, message and the exception; the dict config matches."""

from __future__ import annotations

import json
import logging
import logging.config

import pytest

from citybrain.logs import JsonFormatter, logging_dict


def test_json_lines_are_one_object_each_with_the_exception() -> None:
    log = logging.getLogger("citybrain.test")
    try:
        raise ValueError("boom")
    except ValueError:
        record = log.makeRecord(
            "citybrain.test", logging.ERROR, __file__, 1, "device %s topic %s", ("3502", "t"), exc_info=True
        )
        record.exc_info = __import__("sys").exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "ERROR" and doc["logger"] == "citybrain.test"
    assert doc["msg"] == "device 3502 topic t"
    assert doc["ts"].endswith("+00:00") and "ValueError: boom" in doc["exc"]


def test_the_dict_config_installs_the_json_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        logging.config.dictConfig(logging_dict("info", "json"))
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JsonFormatter)
        assert logging.getLogger("aiokafka").level == logging.WARNING
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
