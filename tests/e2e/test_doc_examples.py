"""The README's and docs' examples, read from the files and run against the real stack: every
``curl`` command of a ```` ```sh ```` block against the real edge, ``buf curl`` (the gRPC
example) against the real service when buf is installed (``make lint-proto``), and every
```` ```python ```` block as a program (the official openai client, the gRPC stubs).

The commands run as written, but for the address (the test's edge or service instead of
127.0.0.1:8000 / :50051) and one field: a chat or completion request without a token limit
gets ``max_tokens`` (``helpers.REF_MAX_TOKENS``), since at temperature 0.7 this small model
may otherwise go on to the end of its context. Each must exit 0 with HTTP 200 and a body in
the wire's shape: SSE frames ending with ``[DONE]`` for a stream, a JSON document otherwise.
A Python example runs as written but for the addresses, and must exit 0.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import REPO
from tests.e2e.helpers import DONE, REF_MAX_TOKENS, split_frames

pytestmark = pytest.mark.model

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EDGE_URL = "http://127.0.0.1:8000"
SERVICE_URL = "http://127.0.0.1:50051"
BUF = REPO / ".tools" / "node_modules" / ".bin" / "buf"
LIMITED_PATHS = ("/v1/chat/completions", "/v1/completions")
LIMITS = ("max_tokens", "max_completion_tokens")


def shell_commands(text: str):
    """(line number, argv) of every command in the ```sh blocks of ``text``; a command may go
    on over lines by a trailing backslash or inside a quoted string."""
    for block in re.finditer(r"^```sh\n(.*?)^```", text, re.S | re.M):
        first_line = text.count("\n", 0, block.start(1)) + 1
        pending, start = "", None
        for number, line in enumerate(block.group(1).splitlines(keepends=True), first_line):
            start = start or number
            pending += line
            if pending.rstrip().endswith("\\"):
                continue
            try:
                argv = shlex.split(pending.replace("\\\n", " "), comments=True)
            except ValueError:  # a quoted string goes on to the next line
                continue
            if argv:
                yield start, argv
            pending, start = "", None


def examples(program: str) -> list:
    found = []
    for path in DOCUMENTS:
        for line, argv in shell_commands(path.read_text()):
            name = Path(argv[0]).name
            if name == program or (program == "buf curl" and name == "buf" and argv[1:2] == ["curl"]):
                found.append(pytest.param(argv, id=f"{path.relative_to(REPO)}:{line}"))
    return found


def _limited(argv: list[str]) -> list[str]:
    """``argv`` with ``max_tokens`` added to a generation request's JSON body that has no limit."""
    if not any(arg.endswith(LIMITED_PATHS) for arg in argv):
        return argv
    out = list(argv)
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-d", "--data", "--data-raw"):
            body = json.loads(argv[i + 1])
            if not any(limit in body for limit in LIMITS):
                out[i + 1] = json.dumps({**body, "max_tokens": REF_MAX_TOKENS}, ensure_ascii=False)
    return out


def python_examples() -> list:
    found = []
    for path in DOCUMENTS:
        text = path.read_text()
        for block in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            line = text.count("\n", 0, block.start(1)) + 1
            found.append(pytest.param(block.group(1), id=f"{path.relative_to(REPO)}:{line}"))
    return found


def test_the_documents_have_examples():
    assert len(examples("curl")) >= 6 and examples("buf curl") and len(python_examples()) >= 3


@pytest.mark.parametrize("argv", examples("curl"))
def test_curl_example(edge, argv):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    assert any(arg.startswith(EDGE_URL) for arg in argv), f"not addressed to the edge: {argv}"
    command = [curl, *(arg.replace(EDGE_URL, edge.base_url) for arg in _limited(argv[1:])), "-w", "\n%{http_code}"]
    done = subprocess.run(command, capture_output=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition(b"\n")
    assert status == b"200", (status, body[-2000:])
    if body.startswith(b"data: "):
        frames = split_frames(body)
        assert body.endswith(DONE) and frames[-1] == b"[DONE]"
        assert all(isinstance(json.loads(frame), dict) for frame in frames[:-1])
    else:
        assert isinstance(json.loads(body), dict), body[:2000]


@pytest.mark.parametrize("argv", examples("buf curl"))
def test_grpc_example(service, argv):
    if not BUF.exists():
        pytest.skip(f"{BUF} is not installed (make lint-proto installs it)")
    command = [str(BUF), *(arg.replace(SERVICE_URL, f"http://{service.address}") for arg in argv[1:])]
    done = subprocess.run(command, capture_output=True, timeout=600, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    replies = [json.loads(doc) for doc in re.split(rb"\n(?=\{)", done.stdout.strip())]
    assert replies and "usage" in replies[-1], replies[-1:]


@pytest.mark.parametrize("code", python_examples())
def test_python_example(edge, service, code):
    assert EDGE_URL in code or SERVICE_URL.removeprefix("http://") in code, "addressed to neither the edge nor the service"
    program = code.replace(EDGE_URL, edge.base_url).replace(SERVICE_URL.removeprefix("http://"), service.address)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=600, check=False,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the example printed nothing"
