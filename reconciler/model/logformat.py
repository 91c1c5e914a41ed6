"""The log formats of ``reconcile serve`` and ``reconcile-agent`` (``--log-format``).

``text`` is for a person at a terminal or ``journalctl``; ``json`` is one object per line
for a log shipper (Loki, Vector, Elastic), so nobody parses the text with regexes.  A
call site that has structured fields passes them as ``extra={"fields": {...}}``: the text
line ignores them (its message already says it), the JSON line carries them as keys
beside ``time``, ``level``, ``logger`` and ``message``.  Values from hosts and
repositories are JSON-escaped, so a newline in them never starts a forged line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from typing import Any, Literal

__all__ = ["LOG_FORMATS", "JsonFormatter", "LogFormat", "TextFormatter", "formatter"]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

# The keys of the JSON line itself: a field of the same name is kept under ``field.<key>``.
_RESERVED = frozenset({"time", "level", "logger", "message", "exception"})


class TextFormatter(logging.Formatter):
    """``2026-12-04T17:00:00Z INFO    reconciler.server: message`` (UTC, like the JSON)."""

    def __init__(self, *, with_name: bool = True) -> None:
        name = " %(name)s:" if with_name else ""
        super().__init__(f"%(asctime)s %(levelname)-7s{name} %(message)s", "%Y-%m-%dT%H:%M:%SZ")

    @staticmethod
    def converter(seconds: float | None = None) -> time.struct_time:
        return time.gmtime(seconds)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                line[f"field.{key}" if key in _RESERVED else str(key)] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(kind: LogFormat, *, with_name: bool = True) -> logging.Formatter:
    return JsonFormatter() if kind == "json" else TextFormatter(with_name=with_name)
