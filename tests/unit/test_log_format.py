"""inference_service.log_format: one JSON object per record, on one line."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys

import pytest

from inference_service.log_format import JsonFormatter, rfc3339

RFC3339_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def capture():
    """A logger writing JSON lines into a buffer; yields (logger, lines())."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.log_format")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)


def test_fixed_fields(capture):
    logger, lines = capture
    logger.info("hello %s", "world")
    (line,) = lines()
    assert list(line)[:5] == ["time", "level", "logger", "message", "process"]
    assert line["level"] == "INFO"
    assert line["logger"] == "tests.log_format"
    assert line["message"] == "hello world"
    assert isinstance(line["process"], int)
    assert RFC3339_MS_UTC.match(line["time"]), line["time"]


def test_time_is_utc_with_milliseconds():
    assert rfc3339(0.0, 0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1_700_000_000.5, 500.0) == "2023-11-14T22:13:20.500Z"
    assert rfc3339(59.9999, 999.9) == "1970-01-01T00:00:59.999Z"


def test_extra_fields(capture):
    logger, lines = capture
    logger.info("done", extra={"request_id": "req-1", "replica": "10.0.0.7:50051", "tokens": 3, "ratio": None})
    (line,) = lines()
    assert line["request_id"] == "req-1"
    assert line["replica"] == "10.0.0.7:50051"
    assert line["tokens"] == 3 and line["ratio"] is None
    assert "exc_info" not in line


def test_extra_never_replaces_a_fixed_field(capture):
    logger, lines = capture
    logger.info("x", extra={"time": "then", "level": "LOUD"})
    (line,) = lines()
    assert line["level"] == "INFO" and RFC3339_MS_UTC.match(line["time"])
    assert line["extra_time"] == "then" and line["extra_level"] == "LOUD"


def test_unserializable_extra_is_a_string(capture):
    logger, lines = capture
    logger.info("x", extra={"thing": object(), "path": __import__("pathlib").Path("/tmp/a")})
    (line,) = lines()
    assert line["path"] == "/tmp/a" and line["thing"].startswith("<object object")


def test_exception_is_one_string_field_on_one_line(capture):
    logger, lines = capture
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logger.exception("it failed")
    raw = logger.handlers[0].stream.getvalue()
    assert raw.count("\n") == 1  # one record, one line
    (line,) = lines()
    assert line["level"] == "ERROR" and line["message"] == "it failed"
    assert "Traceback (most recent call last)" in line["exc_info"]
    assert "ValueError: bad\nvalue" in line["exc_info"]


def test_newlines_and_unicode_in_the_message_stay_in_the_line(capture):
    logger, lines = capture
    logger.warning("two\nlines \u2014 \"quoted\" 你好")
    raw = logger.handlers[0].stream.getvalue()
    assert raw.count("\n") == 1
    assert lines()[0]["message"] == "two\nlines \u2014 \"quoted\" 你好"


def test_stack_info_is_a_field(capture):
    logger, lines = capture
    logger.info("where", stack_info=True)
    (line,) = lines()
    assert line["stack_info"].startswith("Stack (most recent call last)")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_configure_json_routes_warnings_and_uncaught_exceptions():
    result = _run(
        "import logging, threading, warnings\n"
        "from inference_service.log_format import configure\n"
        "configure('json', 'INFO')\n"
        "logging.getLogger('a').info('hi', extra={'request_id': 'r'})\n"
        "warnings.warn('careful')\n"
        "t = threading.Thread(target=lambda: 1 / 0, name='worker'); t.start(); t.join()\n"
        "raise RuntimeError('boom')\n"
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["logger"] for line in lines] == ["a", "py.warnings", "uncaught", "uncaught"]
    assert lines[0]["request_id"] == "r"
    assert "careful" in lines[1]["message"]
    assert "ZeroDivisionError" in lines[2]["exc_info"] and "worker" in lines[2]["message"]
    assert lines[3]["level"] == "CRITICAL" and "RuntimeError: boom" in lines[3]["exc_info"]


def test_configure_text_is_the_historical_format():
    result = _run(
        "import logging\n"
        "from inference_service.log_format import configure\n"
        "configure('text', 'INFO')\n"
        "logging.getLogger('a.b').info('hi %d', 3)\n"
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO a\.b: hi 3\n", result.stderr), result.stderr


def test_importing_it_pulls_no_engine_or_grpc_dependency():
    result = _run(
        "import sys\n"
        "import inference_service.log_format\n"
        "heavy = {'numpy', 'ctransformers', 'llama_cpp', 'grpc', 'google', 'llguidance', 'prometheus_client'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    assert result.stdout.strip() == "[]", result.stderr
