"""Process logging: human-readable lines by default, or one JSON object per line.

JSON lines (``CITYBRAIN_LOG_FORMAT=json``) are for log shippers (Loki, Elasticsearch,
Fluent Bit): every record carries time, level, logger and message, plus the
exception text, so a shipper needs no multi-line parsing. Set once, at the
process edge (the CLI); library code only calls ``logging.getLogger(__name__)``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = ["JsonFormatter", "LogFormat", "handler", "logging_dict", "setup_logging"]

LogFormat = Literal["text", "json"]

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Chatty below WARNING and not ours; their warnings still show.
_NOISY = ("aiokafka", "faust", "mode", "amqtt", "transitions", "uvicorn.access", "kafka")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def handler(fmt: LogFormat) -> logging.Handler:
    """A stderr handler with the chosen format."""
    h = logging.StreamHandler()
    h.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT))
    return h


def logging_dict(level: str, fmt: LogFormat = "text") -> dict[str, Any]:
    """The same configuration for :func:`logging.config.dictConfig` (Faust's worker takes one)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"main": {"()": f"{__name__}.handler", "fmt": fmt}},
        "root": {"level": level.upper(), "handlers": ["main"]},
        "loggers": {name: {"level": "WARNING"} for name in _NOISY},
    }


def setup_logging(level: str, fmt: LogFormat = "text") -> None:
    """Configure the root logger once for this process (replaces earlier handlers)."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler(fmt))
    root.setLevel(level.upper())
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
