"""Log set-up for ``spear serve``: text (default) or one JSON object per line.

A log call that concerns one execution, task or instance passes them as ``extra``
(``execution_id``, ``task_id``, ``instance_id``, ``code``); the JSON format makes them
fields of their own, the text format appends them as ``key=value``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Final

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "configure_logging"]

CONTEXT_FIELDS: Final = ("execution_id", "task_id", "task_name", "instance_id", "code", "method", "request_id", "peer")
"""``extra`` keys that become fields of a log line."""

_TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the context fields that
    the call gave, and ``traceback`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, default=repr)


class TextFormatter(logging.Formatter):
    """The classic text line, with the context fields appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = [f"{key}={record.__dict__[key]!r}" for key in CONTEXT_FIELDS if record.__dict__.get(key) is not None]
        if context:
            first, sep, rest = text.partition("\n")
            text = f"{first} [{' '.join(context)}]{sep}{rest}"
        return text


def configure_logging(level: str, log_format: str) -> None:
    """Root logging to stderr at *level* in *log_format* ("text" or "json")."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
