"""The gRPC status → HTTP table and OpenAI error bodies."""

from __future__ import annotations

import grpc
import pytest

from rest_edge import errors

# behaviour.md, "gRPC status to HTTP, for the edge" (OK is never an error: 500 if it shows up).
EXPECTED = {
    grpc.StatusCode.OK: 500,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

EXPECTED_TYPE = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 409: "conflict_error", 429: "rate_limit_error",
    499: "server_error", 500: "server_error", 501: "server_error", 503: "server_error", 504: "server_error",
}

SECRET = "Exception calling application: /srv/models/x.gguf Traceback (most recent call last)"


def test_table_covers_every_status_code():
    assert set(errors.GRPC_TO_HTTP) == set(grpc.StatusCode)


@pytest.mark.parametrize("code", list(grpc.StatusCode), ids=lambda c: c.name)
def test_every_status_code_maps_as_behaviour_md_says(code):
    err = errors.from_grpc(code, SECRET)
    assert err.status == EXPECTED[code]
    assert err.type == EXPECTED_TYPE[err.status]
    body = err.body()
    assert list(body) == ["error"]
    assert list(body["error"]) == ["message", "type", "param", "code"]
    if err.status >= 500 or err.status == 499:
        # the service's details may carry internals; server errors get a fixed message
        assert SECRET not in err.message and "Traceback" not in err.message
    else:
        assert err.message == SECRET  # client errors pass the service's explanation on


def test_specific_codes():
    assert errors.from_grpc(grpc.StatusCode.OUT_OF_RANGE, "too long").code == "context_length_exceeded"
    nf = errors.from_grpc(grpc.StatusCode.NOT_FOUND, "no such model")
    assert (nf.code, nf.param, nf.type) == ("model_not_found", "model", "not_found_error")


def test_param_comes_from_trailing_metadata():
    err = errors.from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "bad", (("error-param", "temperature"),))
    assert err.param == "temperature"
    err = errors.from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "bad", (("error-param", b"stop"),))
    assert err.param == "stop"
    assert errors.from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "bad").param is None


def test_queue_full_has_retry_after():
    assert errors.from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "full").headers == {"Retry-After": "1"}
    err = errors.from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", (("retry-after", "7"),))
    assert err.headers == {"Retry-After": "7"} and err.type == "rate_limit_error"


def test_missing_code_or_details():
    assert errors.from_grpc(None, None).status == 500
    assert errors.from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "").message == "The inference service refused the request."


# What gRPC's library itself says when a message exceeds a channel's limit (the edge's, when the
# answer is too big; the service's, when the request is), as issue 21 saw it reach a user as 429.
TOO_LARGE = "Stream removed (CLIENT: Received message larger than max (4730897 vs. 4194304))"


@pytest.mark.parametrize("details", [TOO_LARGE, "Received message larger than max (70000000 vs. 67145728)",
                                     "Sent message larger than max (5 vs. 4)"])
def test_a_message_size_refusal_is_a_413_naming_the_limit_never_a_429(details):
    err = errors.from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, details)
    assert err.status == 413 and err.code == "request_too_large" and not err.headers
    size, limit = [int(n) for n in details.replace("(", " ").replace(")", " ").split() if n.isdigit()]
    assert f"{size}-byte" in err.message and f"limit is {limit} bytes" in err.message
    assert "gRPC" not in err.message and "CLIENT" not in err.message and "Stream" not in err.message


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK], ids=lambda c: c.name)
@pytest.mark.parametrize("details", ["Concurrent RPC limit exceeded!", "Stream removed", "Socket closed",
                                     "grpc_status: 8", "RST_STREAM with error code 2", "Deadline Exceeded"])
def test_no_grpc_wording_reaches_a_user(code, details):
    err = errors.from_grpc(code, details)
    assert details not in err.message
    assert "grpc" not in err.message.lower()


def test_grpc_busy_is_429_with_our_message():
    err = errors.from_grpc(grpc.StatusCode.RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded!")
    assert (err.status, err.message, err.headers) == (429, "The inference service is busy; retry later.",
                                                       {"Retry-After": "1"})
