"""Settings from the environment are checked as their flags are: a bad value stops the start
with a message naming the variable (inference_service.settings), for the service's command
line, the edge's, and gunicorn run on the edge's configuration directly."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import REPO
from inference_service.settings import SettingError, add_setting, from_environment, resolve

GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="test")
    add_setting(parser, "--mode", choices=("exact", "all"), env="TEST_MODE", default="exact")
    add_setting(parser, "--slots", type=int, env="TEST_SLOTS", default=2)
    add_setting(parser, "--where", env="TEST_WHERE", default=None)
    return parser


def _parsed(argv: list[str]) -> argparse.Namespace:
    parser = _parser()
    return resolve(parser, parser.parse_args(argv))


def test_a_flag_wins_then_the_variable_then_the_default(monkeypatch):
    for name in ("TEST_MODE", "TEST_SLOTS", "TEST_WHERE"):
        monkeypatch.delenv(name, raising=False)
    assert vars(_parsed([])) == {"mode": "exact", "slots": 2, "where": None}
    monkeypatch.setenv("TEST_MODE", "all")
    monkeypatch.setenv("TEST_SLOTS", " 4 ")
    monkeypatch.setenv("TEST_WHERE", "here")
    assert vars(_parsed([])) == {"mode": "all", "slots": 4, "where": "here"}
    assert vars(_parsed(["--mode", "exact", "--slots", "1"])) == {"mode": "exact", "slots": 1, "where": "here"}
    monkeypatch.setenv("TEST_SLOTS", "")  # blank: unset
    assert _parsed([]).slots == 2


@pytest.mark.parametrize("name, value, message", [
    ("TEST_MODE", "exatc", "TEST_MODE must be exact or all, not 'exatc'"),
    ("TEST_SLOTS", "two", "TEST_SLOTS must be an integer, not 'two'"),
    ("TEST_SLOTS", "1.5", "TEST_SLOTS must be an integer, not '1.5'"),
])
def test_a_bad_variable_is_a_usage_error_naming_it(monkeypatch, capsys, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stop:
        _parsed([])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert _parsed(["--mode", "all", "--slots", "3"]).slots == 3  # the flags given: the variable is not read


@pytest.mark.parametrize("argv, env, message", [
    (["--count", "0"], {}, "--count (env TEST_COUNT) must be at least 1, not 0"),
    ([], {"TEST_COUNT": "0"}, "--count (env TEST_COUNT) must be at least 1, not 0"),
    (["--rate", "2.5"], {}, "--rate (env TEST_RATE) must be 0 to 2, not 2.5"),
])
def test_a_value_outside_its_bounds_is_a_usage_error_whatever_its_source(monkeypatch, capsys, argv, env, message):
    for name in ("TEST_COUNT", "TEST_RATE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser(prog="test")
    add_setting(parser, "--count", type=int, least=1, env="TEST_COUNT", default=2)
    add_setting(parser, "--rate", type=float, least=0, most=2, env="TEST_RATE", default=0.0)
    with pytest.raises(SystemExit) as stop:
        resolve(parser, parser.parse_args(argv))
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert vars(resolve(parser, parser.parse_args(["--count", "1", "--rate", "2"]))) == {"count": 1, "rate": 2.0}


def test_from_environment_checks_type_and_choices(monkeypatch):
    monkeypatch.setenv("TEST_RATE", "fast")
    with pytest.raises(SettingError, match="TEST_RATE must be a number, not 'fast'"):
        from_environment("TEST_RATE", 1.0, float)
    monkeypatch.setenv("TEST_LEVEL", "LOUD")
    with pytest.raises(SettingError, match="TEST_LEVEL must be quiet or loud, not 'LOUD'"):
        from_environment("TEST_LEVEL", "quiet", str, ("quiet", "loud"))
    assert from_environment("TEST_LEVEL", "quiet", str.lower, ("quiet", "loud")) == "loud"


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "EDGE_API_KEYS": "", **env}, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("setting, value, message", [
    ("INFERENCE_PREFIX_REUSE", "exatc", "INFERENCE_PREFIX_REUSE must be exact or all, not 'exatc'"),
    ("INFERENCE_SLOTS", "two", "INFERENCE_SLOTS must be an integer, not 'two'"),
    ("INFERENCE_ENGINE", "llama", "INFERENCE_ENGINE must be auto, ctransformers or llamacpp, not 'llama'"),
    ("INFERENCE_LOG_LEVEL", "verbose", "INFERENCE_LOG_LEVEL must be debug, info, warning, error or critical"),
    ("INFERENCE_THREAD_POLICY", "lazy", "INFERENCE_THREAD_POLICY must be adaptive or fixed, not 'lazy'"),
    ("INFERENCE_SLOTS", "0", "--slots (env INFERENCE_SLOTS) must be at least 1, not 0"),
    ("INFERENCE_MAX_WAITING", "-1", "--max-waiting (env INFERENCE_MAX_WAITING) must be at least 0, not -1"),
    ("INFERENCE_STREAM_INTERVAL_MS", "soon", "INFERENCE_STREAM_INTERVAL_MS must be a number, not 'soon'"),
    ("INFERENCE_STREAM_INTERVAL_MS", "1500", "--stream-interval-ms (env INFERENCE_STREAM_INTERVAL_MS) must be 0 to 1000"),
    ("INFERENCE_EMBEDDINGS_SHARE", "1", "--embeddings-share (env INFERENCE_EMBEDDINGS_SHARE) must be 0.05 to 0.95"),
])
def test_the_service_refuses_to_start_on_a_bad_variable(setting, value, message):
    done = _run([sys.executable, "-m", "inference_service", "serve", "--address", "127.0.0.1:0"], **{setting: value})
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]


EDGE_CASES = [
    ("EDGE_WORKERS", "x", "EDGE_WORKERS must be an integer, not 'x'"),
    ("EDGE_THREADS", "1.5", "EDGE_THREADS must be an integer, not '1.5'"),
    ("EDGE_WORKER_TIMEOUT", "long", "EDGE_WORKER_TIMEOUT must be an integer, not 'long'"),
    ("EDGE_LOG_LEVEL", "verbose", "EDGE_LOG_LEVEL must be debug, info, warning, error or critical"),
    ("EDGE_LOG_FORMAT", "yaml", "EDGE_LOG_FORMAT must be text or json, not 'yaml'"),
]


@pytest.mark.parametrize("setting, value, message", EDGE_CASES + [
    ("EDGE_ROUTING", "random", "EDGE_ROUTING must be prefix-affinity, least-loaded or round-robin, not 'random'"),
    ("EDGE_MAX_BODY_BYTES", "1MB", "EDGE_MAX_BODY_BYTES must be an integer, not '1MB'"),
    ("EDGE_MAX_BODY_BYTES", "0", "EDGE_MAX_BODY_BYTES must be positive, not 0"),
    ("EDGE_REQUEST_TIMEOUT", "soon", "EDGE_REQUEST_TIMEOUT must be a number, not 'soon'"),
])
def test_the_edge_refuses_to_start_on_a_bad_variable(setting, value, message):
    done = _run([sys.executable, "-m", "rest_edge", "--bind", "127.0.0.1:0"], **{setting: value})
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("setting, value, message", EDGE_CASES)
def test_gunicorn_on_the_edge_configuration_refuses_a_bad_variable(setting, value, message):
    done = _run([GUNICORN, "-c", "python:rest_edge.gunicorn_conf", "--bind", "127.0.0.1:0"], **{setting: value})
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]
