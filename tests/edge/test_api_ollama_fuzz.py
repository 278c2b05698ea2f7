"""Property-based: whatever a client sends to Ollama's /api routes, the app in process answers
a 2xx (JSON, or NDJSON lines that are no errors) or a 4xx in Ollama's ``{"error"}`` shape,
never a 5xx; every request it lets through is a protobuf the real client can send.
(The strategies' building blocks are tests/edge/fuzz_requests.py's.)
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from inference_service.v1 import inference_pb2 as pb
from tests.edge.fakes import FakeClient
from tests.edge import fuzz_requests as fuzz
from tests.edge.fuzz_requests import fuzz_settings, junk, maybe_junk, texts, weighted
from tests.helpers import client_for

EXAMPLES = 500
PATHS = ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings", "/api/show", "/api/pull"]

names = st.sampled_from(["get_weather", "f", "", "a b", "x" * 65])
schemas = maybe_junk(st.sampled_from([{"type": "object", "properties": {"city": {"type": "string"}}}, {}, None]))
text = maybe_junk(texts(20))
tool_calls = st.lists(maybe_junk(st.fixed_dictionaries({
    "function": maybe_junk(st.fixed_dictionaries({"name": names, "arguments": maybe_junk(
        st.sampled_from([{"city": "Oslo"}, '{"city":"Oslo"}', "[]", "{"]))})),
    "id": maybe_junk(st.sampled_from(["c1", ""]))})), max_size=2)
messages = st.lists(maybe_junk(st.fixed_dictionaries({
    "role": maybe_junk(st.sampled_from(["user", "system", "assistant", "tool", "USER", "developer"])),
    "content": text, "images": maybe_junk(st.sampled_from([[], ["aGk="]])), "tool_calls": tool_calls,
    "tool_name": maybe_junk(names), "tool_call_id": maybe_junk(st.sampled_from(["c1", ""])),
    "thinking": text})), max_size=4)
options = maybe_junk(st.fixed_dictionaries({}, optional={
    "temperature": maybe_junk(st.floats(-1, 3)), "top_p": maybe_junk(st.floats(-1, 2)),
    "top_k": maybe_junk(st.integers(-2, 50)), "min_p": maybe_junk(st.floats(-1, 2)),
    "num_predict": maybe_junk(st.integers(-3, 5)), "stop": maybe_junk(st.lists(texts(5), max_size=5)),
    "seed": maybe_junk(st.integers(-2**70, 2**70)), "repeat_penalty": maybe_junk(st.floats(-1, 3)),
    "repeat_last_n": maybe_junk(st.integers(-2, 100)), "num_ctx": maybe_junk(st.integers(-1, 200)),
    "typical_p": maybe_junk(st.floats(0, 1)), "mirostat": maybe_junk(st.integers(0, 2)),
    "tool_choice": maybe_junk(st.sampled_from(["auto", "required", "none", "get_weather", "nope"])),
    "num_thread": junk}))
common = {
    "model": maybe_junk(st.just("m"), 9),
    "stream": maybe_junk(st.booleans(), 9),
    "format": maybe_junk(st.one_of(st.sampled_from(["json", "", "yaml"]), schemas)),
    "options": options,
    "keep_alive": maybe_junk(st.sampled_from(["5m", -1, 0, "1h30m", "soon", "10"])),
    "think": maybe_junk(st.sampled_from([False, True, "high", "low", "deep"])),
    "truncate": maybe_junk(st.booleans()),
    "logprobs": maybe_junk(st.booleans()),
}
fields = {
    "/api/chat": {**common, "messages": messages, "tools": st.lists(maybe_junk(st.fixed_dictionaries({
        "type": maybe_junk(st.just("function")), "function": maybe_junk(st.fixed_dictionaries({
            "name": names, "description": text, "parameters": schemas}))})), max_size=3)},
    "/api/generate": {**common, "prompt": text, "system": text, "raw": maybe_junk(st.booleans()),
                      "template": maybe_junk(st.sampled_from(["", "{{ .Prompt }}"])), "suffix": text,
                      "context": maybe_junk(st.lists(st.integers(0, 9), max_size=2)),
                      "images": maybe_junk(st.sampled_from([[], ["aGk="]]))},
    "/api/embed": {"model": maybe_junk(st.just("m"), 9),
                   "input": maybe_junk(st.one_of(text, st.lists(text, max_size=3))),
                   "dimensions": maybe_junk(st.integers(-1, 5)), "truncate": maybe_junk(st.booleans()),
                   "keep_alive": common["keep_alive"], "options": options},
    "/api/embeddings": {"model": maybe_junk(st.just("m"), 9), "prompt": text},
    "/api/show": {"model": maybe_junk(st.sampled_from(["m", "nope"]), 9), "verbose": maybe_junk(st.booleans())},
    "/api/pull": {"model": maybe_junk(st.sampled_from(["m", "llama3.2"]), 9), "stream": maybe_junk(st.booleans())},
}


@st.composite
def api_requests(draw) -> tuple[str, bytes]:
    path = draw(st.sampled_from(PATHS))
    spec = fields[path]
    chosen = set(draw(st.lists(st.sampled_from(sorted(spec)), unique=True))) | {"model"}
    body = draw(weighted((19, st.fixed_dictionaries({k: spec[k] for k in sorted(chosen)})), (1, junk)))
    return path, draw(fuzz.encoded(body))


INFO = pb.ModelInfo(name="m", context_length=100, has_chat_template=True, architecture="llama", can_embed=True,
                    embedding_dimensions=4)
CLIENT = client_for(FakeClient(fuzz.fake_script, models=[INFO]))


def check(status: int, content_type: str, body: bytes) -> None:
    error = fuzz.error_of(status, content_type, body)
    if error is not None:
        assert list(error) == ["error"], error
        fuzz.check_error_message(error["error"])
    elif content_type.startswith("application/x-ndjson"):
        text = body.decode("utf-8")
        assert text.endswith("\n")
        objects = [json.loads(line) for line in text.split("\n")[:-1]]
        assert all("error" not in o for o in objects) and objects[-1].get("status", "") in ("", "success")
    else:
        json.loads(body)


@fuzz_settings(EXAMPLES)
@given(api_requests())
def test_any_request_is_answered_2xx_or_4xx_in_ollamas_shape(request):
    path, data = request
    result = CLIENT.simulate_post(path, body=data, headers={"Content-Type": "application/json"})
    check(result.status_code, result.headers.get("content-type", ""), result.content)


def test_the_app_still_serves_after_the_fuzz():
    result = CLIENT.simulate_post("/api/chat", json={"model": "m", "stream": False,
                                                      "messages": [{"role": "user", "content": "hi"}]})
    assert result.status_code == 200 and result.json["message"]["content"] == "Hello!"
