"""Dedicated inference service processes: a cancelled stream frees the only slot, SIGTERM
drains, and the command line's pull/list.

The service runs with DEBUG logging: the engine logs one line per generation that runs
to its end ("request <id>: ... finish <reason>"), before it releases the slot. So a
missing line for a request proves it was stopped early, with no clock involved.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference_service.models.registry import ModelRegistry
from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import DEFAULT_MODEL, REPO, stop_process, start_service
from tests.service.helpers import SAFETY, STORY_TURNS, generate, no_eos_bias, request

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def solo(model_file, tmp_path_factory):
    """A service with ONE slot: a second request can only run once the first let go."""
    svc = start_service(tmp_path_factory.mktemp("solo"), "--slots", "1", "--log-level", "DEBUG")
    yield svc
    stop_process(svc.process)


def finished_lines(log: str, request_id: str) -> list[str]:
    return [line for line in log.splitlines() if f"request {request_id}: " in line and " finish " in line]


BLOCK = 16  # the service's default --block-size


def test_cancelled_stream_frees_the_only_slot(solo):
    with solo.channel() as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        long_call = stub.Generate(
            request(*STORY_TURNS, max_tokens=2000, logit_bias=no_eos_bias(stub), request_id="long-cancelled"), timeout=SAFETY
        )
        received = [next(long_call) for _ in range(3)]
        assert all(m.finish_reason == pb.FINISH_REASON_UNSPECIFIED for m in received)
        long_call.cancel()

        short = generate(stub, request(*STORY_TURNS, max_tokens=5, logit_bias=no_eos_bias(stub), request_id="short-after"))
        assert short.last.finish_reason == pb.FINISH_REASON_LENGTH
        assert short.last.usage.completion_tokens == 5
        # Same slot, same prompt: the whole prompt blocks the cancelled request left behind
        # are reused (exact reuse; at least one token is evaluated again).
        n = short.last.usage.prompt_tokens
        assert short.last.usage.cached_prompt_tokens == min(n - 1, n // BLOCK * BLOCK) // BLOCK * BLOCK

    log = solo.log()
    assert len(finished_lines(log, "short-after")) == 1, log[-3000:]
    # With one slot, "short-after" ran only after "long-cancelled" released it. Had the
    # long one run to its end (2000 tokens), it would have logged its line before that.
    assert finished_lines(log, "long-cancelled") == [], log[-3000:]


def test_sigterm_drains_in_flight_stream_and_exits_zero(model_file, tmp_path):
    svc = start_service(tmp_path, "--slots", "1", "--log-level", "DEBUG", "--grace", "240")
    try:
        with svc.channel() as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=SAFETY)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING

            in_flight = stub.Generate(
                request(*STORY_TURNS, max_tokens=80, logit_bias=no_eos_bias(stub), request_id="drained"), timeout=SAFETY
            )
            messages = [next(in_flight)]
            svc.process.send_signal(signal.SIGTERM)

            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()  # an open watch would hold the graceful stop until the grace ends

            with pytest.raises(grpc.RpcError) as info:  # no new work while draining
                next(stub.Generate(request(*STORY_TURNS, max_tokens=3), timeout=SAFETY))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

            messages.extend(in_flight)
            last = messages[-1]
            assert last.finish_reason == pb.FINISH_REASON_LENGTH
            assert last.usage.completion_tokens == 80
            assert sum(len(m.token_ids) for m in messages) == 80

        # The drain stops the server as soon as the stream completed, without using up the
        # 240 s grace; waiting no longer than the grace shows it did not time out.
        assert svc.process.wait(timeout=240) == 0
        log = svc.log()
        signal_at = log.find("draining (grace")
        finished_at = log.find("request drained: ")
        assert signal_at >= 0 and finished_at >= 0, log[-3000:]
        assert signal_at < finished_at, "SIGTERM arrived while the stream was in flight"
        assert "stopped" in log[finished_at:]
    finally:
        stop_process(svc.process)


# --- command line ---------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "inference_service", *args],
        cwd=REPO, capture_output=True, text=True, timeout=SAFETY,
    )


def test_pull_prints_the_cached_path(model_file):
    done = cli("pull")
    assert done.returncode == 0, done.stderr
    expected = ModelRegistry().cached_path(DEFAULT_MODEL)
    assert done.stdout == f"{expected}\n"
    assert model_file.source_path == expected


def test_list_shows_the_default_model_cached(model_file):
    done = cli("list")
    assert done.returncode == 0, done.stderr
    assert f"{DEFAULT_MODEL}\tcached at {ModelRegistry().cached_path(DEFAULT_MODEL)}" in done.stdout.splitlines()


def test_pull_of_an_unknown_model_fails_naming_it():
    done = cli("pull", "no-such-model:1b")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: no model named 'no-such-model:1b'; tried: "), done.stderr
    assert "known: gemma3:270m, smollm2:135m" in done.stderr
    assert done.stderr.count("\n") == 1  # one line, no traceback
