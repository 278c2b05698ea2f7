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
    assert errors.from_grpc(grpc.StatusCode.INVALID_ARGUMENT, "").message == "invalid argument"
