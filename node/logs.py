"""Process logging: human-readable lines by default, or one JSON object per line for log pipelines
(`medchain --log-json ...` or MEDCHAIN_LOG_FORMAT=json, which child validator processes inherit).

JSON records carry time, level, logger and message, plus any `extra={...}` fields a call passes."""

from __future__ import annotations

import logging
import os

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: int, json_lines: bool = False) -> None:
    json_lines = json_lines or os.environ.get("MEDCHAIN_LOG_FORMAT") == "json"
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"asctime": "time", "levelname": "level",
                                                          "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
