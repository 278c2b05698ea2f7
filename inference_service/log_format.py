"""Log records as JSON lines (``--log-format json`` on the service, ``EDGE_LOG_FORMAT=json``
on the edge).

Standard library only: the REST edge imports it too, without the engine's dependencies.

One record is one line holding one JSON object::

    {"time": "2025-01-02T03:04:05.678Z", "level": "INFO", "logger": "inference_service.server",
     "message": "generate ...", "process": 1234, "request_id": "...", "model": "..."}

``time`` is RFC 3339 in UTC with milliseconds; every field a caller set with ``extra=``
(``request_id``, ``replica``, ...) follows the fixed ones; an exception's traceback is the
string field ``exc_info`` (and a stack, ``stack_info``), never lines outside the object.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

FORMATS = ("text", "json")

# The attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName",
}
_CORE_FIELDS = ("time", "level", "logger", "message", "process")


def rfc3339(created: float, msecs: float) -> str:
    """``2025-01-02T03:04:05.678Z``: a record's creation time in UTC, to the millisecond."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + ".%03dZ" % min(int(msecs), 999)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "time": rfc3339(record.created, record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRIBUTES or key.startswith("_"):
                continue
            # An extra named like a fixed field never replaces it.
            fields["extra_" + key if key in _CORE_FIELDS else key] = value
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exc_info"] = record.exc_text
        if record.stack_info:
            fields["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(fields, ensure_ascii=False, default=_fallback)


def _fallback(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a log line must never fail over a field
        return repr(type(value))


def json_handler(stream=None, level: int | str = logging.NOTSET) -> logging.Handler:
    """A StreamHandler (stderr by default) writing JSON lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(level)
    return handler


def route_stray_output_to_logging() -> None:
    """Warnings and uncaught exceptions (main and other threads) become log records, so that
    in JSON mode they come out as JSON lines too instead of bare tracebacks."""
    logging.captureWarnings(True)
    uncaught = logging.getLogger("uncaught")

    def excepthook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            sys.__excepthook__(exc_type, exc, tb)
            return
        uncaught.critical("uncaught exception", exc_info=(exc_type, exc, tb))

    def thread_excepthook(args):
        if args.exc_type is SystemExit:
            return
        thread = args.thread.name if args.thread is not None else "?"
        uncaught.error("uncaught exception in thread %s", thread,
                       exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook


def configure(log_format: str, level: int | str) -> None:
    """The process's root logging: ``text`` (the historical format) or ``json`` lines, on stderr."""
    if log_format == "json":
        logging.basicConfig(level=level, handlers=[json_handler()])
        route_stray_output_to_logging()
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
