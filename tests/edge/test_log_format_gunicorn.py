"""The edge's logs as JSON lines (EDGE_LOG_FORMAT=json, ``python -m rest_edge --log-format json``):
the real gunicorn edge in front of the real gRPC server over the fake engine. Every line the edge
writes (arbiter and worker, error, app and access logs, start to stop) is one JSON object; an
access line carries the request's fields. The text default stays gunicorn's own Logger."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from harness.processes import REPO, free_port, start_http_server, stop_process
from inference_service.server import create_server
from tests.conftest import start_edge
from tests.helpers import json_lines
from tests.service.fake_engine import FakeEngine

SAFETY = 30  # seconds: bounds a hang, never a measured limit


def edge_lines(log: str) -> list[dict]:
    return json_lines(log, "the edge's log", frozenset({"time", "level", "logger", "message", "process"}))


def access_lines(lines: list[dict], path: str) -> list[dict]:
    return [line for line in lines if line["logger"] == "gunicorn.access" and line.get("path") == path]


@pytest.fixture(scope="module")
def grpc_target():
    engine = FakeEngine()
    running = create_server(engine, "127.0.0.1:0")
    try:
        yield f"127.0.0.1:{running.port}"
    finally:
        engine.release.set()
        running.server.stop(None)


def test_gunicorn_edge_logs_json(grpc_target, tmp_path):
    edge = start_edge(grpc_target, tmp_path / "gunicorn.log", EDGE_LOG_FORMAT="json")
    try:
        with httpx.Client(base_url=edge.base_url, timeout=SAFETY) as http:
            done = http.post("/v1/completions", json={"model": "slow", "prompt": "hi", "max_tokens": 3},
                             headers={"X-Request-Id": "edge-json-1", "User-Agent": "log-test"})
            assert done.status_code == 200, done.text
            missing = http.post("/v1/chat/completions?x=1",
                                json={"model": "missing", "messages": [{"role": "user", "content": "hi"}]})
            assert missing.status_code == 404
            crash = http.post("/v1/completions", json={"model": "crash", "prompt": "hi"})
            assert crash.status_code == 500
    finally:
        stop_process(edge.process)

    lines = edge_lines(edge.log())
    loggers = {line["logger"] for line in lines}
    assert {"gunicorn.error", "gunicorn.access", "rest_edge"} <= loggers, loggers
    assert any(line["message"].startswith("Starting gunicorn") for line in lines)
    assert any(line["message"].startswith("REST edge: inference service at") for line in lines)

    completion = [line for line in access_lines(lines, "/v1/completions") if line["status"] == 200]
    assert len(completion) == 1, lines
    (line,) = completion
    assert line["method"] == "POST" and line["level"] == "INFO"
    assert line["message"] == "POST /v1/completions 200"
    assert line["request_id"] == done.headers.get("x-request-id", "edge-json-1")
    assert line["user_agent"] == "log-test" and line["remote_addr"] == "127.0.0.1"
    assert 0 <= line["duration_s"] < SAFETY
    assert isinstance(line["bytes"], int) and line["bytes"] > 0

    (not_found,) = access_lines(lines, "/v1/chat/completions")
    assert (not_found["status"], not_found["query"]) == (404, "x=1")
    (failed,) = [line for line in access_lines(lines, "/v1/completions") if line["status"] == 500]
    assert failed["method"] == "POST"
    app_errors = [line for line in lines if line["logger"] == "rest_edge" and line["level"] == "ERROR"]
    assert any("INTERNAL" in line["message"] for line in app_errors), app_errors


def test_python_m_rest_edge_log_format_json(grpc_target, tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "rest_edge", "--target", grpc_target, "--bind", f"127.0.0.1:{port}",
            "--workers", "1", "--threads", "2", "--log-format", "json"]
    edge = start_http_server(argv, f"http://127.0.0.1:{port}", tmp_path / "edge.log",
                             env={**os.environ, "EDGE_API_KEYS": "", "EDGE_LOG_FORMAT": "text"},
                             timeout=60)
    try:
        assert httpx.get(edge.base_url + "/health", timeout=SAFETY).status_code == 200
    finally:
        stop_process(edge.process)
    lines = edge_lines(edge.log())
    assert [line["status"] for line in access_lines(lines, "/health")][-1] == 200


# --- the settings, without starting gunicorn -----------------------------------------------------


def _python(code: str, **env: str) -> str:
    environment = {key: value for key, value in os.environ.items() if key != "EDGE_LOG_FORMAT"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**environment, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_text_is_gunicorns_own_logger():
    code = "import rest_edge.gunicorn_conf as c; print(getattr(c, 'logger_class', None))"
    assert _python(code).strip() == "None"
    assert _python(code, EDGE_LOG_FORMAT="text").strip() == "None"
    assert _python(code, EDGE_LOG_FORMAT="json").strip() == "rest_edge.gunicorn_logging.JsonLogger"


def test_an_unknown_format_is_refused():
    result = subprocess.run([sys.executable, "-c", "import rest_edge.gunicorn_conf"], capture_output=True,
                            text=True, timeout=60, cwd=REPO, env={**os.environ, "EDGE_LOG_FORMAT": "yaml"})
    assert result.returncode != 0 and "EDGE_LOG_FORMAT must be text or json" in result.stderr


ACCESS = r"""
import datetime, logging
from gunicorn.config import Config
from rest_edge.gunicorn_logging import JsonLogger

class Resp:
    status = "429 Too Many Requests"
    headers = [("Content-Type", "application/json"), ("X-Request-Id", "chatcmpl-7")]
    sent = 99

class Req:
    headers = [("HOST", "edge"), ("X-REQUEST-ID", "from-client")]

cfg = Config()
cfg.set("accesslog", "-")
logger = JsonLogger(cfg)
environ = {"REQUEST_METHOD": "POST", "RAW_URI": "/v1/chat/completions?a=b", "SERVER_PROTOCOL": "HTTP/1.1",
           "PATH_INFO": "/v1/chat/completions", "QUERY_STRING": "a=b", "REMOTE_ADDR": "10.1.2.3",
           "HTTP_USER_AGENT": 'curl "8"'}
logger.access(Resp(), Req(), environ, datetime.timedelta(seconds=1, microseconds=250000))
Resp.headers = []
logger.access(Resp(), Req(), environ, datetime.timedelta(microseconds=5))
"""


def test_access_line_fields():
    first, second = [json.loads(line) for line in _python(ACCESS).splitlines()]
    assert first["logger"] == "gunicorn.access" and first["level"] == "INFO"
    assert {key: first[key] for key in ("remote_addr", "method", "path", "query", "protocol", "status",
                                        "duration_s", "bytes", "user_agent", "request_id")} == {
        "remote_addr": "10.1.2.3", "method": "POST", "path": "/v1/chat/completions", "query": "a=b",
        "protocol": "HTTP/1.1", "status": 429, "duration_s": 1.25, "bytes": 99, "user_agent": 'curl "8"',
        "request_id": "chatcmpl-7",
    }
    assert first["message"] == "POST /v1/chat/completions 429"
    assert second["request_id"] == "from-client"  # no response header: the client's


def test_flag_sets_the_logger_class(monkeypatch):
    from rest_edge import __main__ as edge_main

    seen = {}

    class Recording:
        def __init__(self, options, app_kwargs):
            seen.update(options)

        def run(self):
            pass

    monkeypatch.setattr(edge_main, "EdgeApplication", Recording)
    monkeypatch.setenv("EDGE_LOG_FORMAT", "text")  # main() sets it: restored (or removed) after the test
    monkeypatch.setenv("INFERENCE_TARGET", "127.0.0.1:1")
    edge_main.main(["--log-format", "json"])
    assert seen["logger_class"] == "rest_edge.gunicorn_logging.JsonLogger"
    assert os.environ["EDGE_LOG_FORMAT"] == "json"
    seen.clear()
    edge_main.main([])
    assert "logger_class" not in seen
