"""Property-based: whatever a client sends to /v1/responses, /v1/messages or
/v1/messages/count_tokens, the app in process answers a 2xx or a 4xx in that API's error
shape, never a 5xx; every request it lets through is a protobuf the real client can send.
(The strategies' building blocks are tests/edge/fuzz_requests.py's.)
"""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tests.edge.fakes import FakeClient
from tests.edge import fuzz_requests as fuzz
from tests.edge.fuzz_requests import fuzz_settings, junk, maybe_junk, texts, weighted
from tests.helpers import client_for

EXAMPLES = 600
RESPONSES, MESSAGES, COUNT = "/v1/responses", "/v1/messages", "/v1/messages/count_tokens"

names = st.sampled_from(["get_weather", "f", "", "a b", "x" * 65, "get_time"])
schemas = maybe_junk(st.sampled_from([{"type": "object", "properties": {"city": {"type": "string"}}}, {}, None]))
text = maybe_junk(texts(20))


def parts(kinds: list[str], key: str = "text") -> st.SearchStrategy:
    return st.lists(maybe_junk(st.fixed_dictionaries({"type": st.sampled_from(kinds), key: text})), max_size=3)


# --- Responses -------------------------------------------------------------------------------

response_items = st.one_of(
    st.fixed_dictionaries({"role": maybe_junk(st.sampled_from(["user", "system", "developer", "assistant", "tool"])),
                           "content": st.one_of(text, parts(["input_text", "output_text", "input_image",
                                                             "refusal"]))}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": maybe_junk(st.sampled_from(["c1", ""])),
                           "name": names, "arguments": maybe_junk(st.sampled_from(['{"city":"Oslo"}', "[]", "{"]))}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": maybe_junk(st.just("c1")),
                           "output": st.one_of(text, parts(["input_text"]))}),
    st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "item_reference", "web_search_call", "message"])}),
)
response_tools = st.lists(maybe_junk(st.one_of(
    st.fixed_dictionaries({"type": st.just("function"), "name": names, "parameters": schemas,
                           "strict": maybe_junk(st.booleans())}),
    st.fixed_dictionaries({"type": st.sampled_from(["web_search", "file_search", "custom", "mcp"])}))), max_size=3)
response_fields = {
    "model": maybe_junk(st.just("m"), 9),
    "input": st.one_of(text, st.lists(maybe_junk(response_items), max_size=4)),
    "instructions": text,
    "tools": response_tools,
    "tool_choice": maybe_junk(st.one_of(
        st.sampled_from(["auto", "none", "required", "any"]),
        st.fixed_dictionaries({"type": st.just("function"), "name": names}),
        st.fixed_dictionaries({"type": st.just("allowed_tools"), "mode": maybe_junk(st.sampled_from(["auto",
                                                                                                       "required"])),
                               "tools": st.lists(st.fixed_dictionaries({"type": st.just("function"), "name": names}),
                                                 max_size=2)}))),
    "text": maybe_junk(st.fixed_dictionaries({"format": maybe_junk(st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "yaml"])}),
        st.fixed_dictionaries({"type": st.just("json_schema"), "name": names, "schema": schemas})))})),
    "max_output_tokens": maybe_junk(st.integers(-1, 5)),
    "temperature": maybe_junk(st.floats(-1, 3)),
    "top_p": maybe_junk(st.floats(-1, 2)),
    "parallel_tool_calls": maybe_junk(st.booleans()),
    "stream": maybe_junk(st.booleans(), 9),
    "previous_response_id": maybe_junk(st.none(), 9),
    "metadata": maybe_junk(st.dictionaries(texts(5), texts(5), max_size=2)),
}

# --- Messages --------------------------------------------------------------------------------

blocks = st.lists(maybe_junk(st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": text}),
    st.fixed_dictionaries({"type": st.just("tool_use"), "id": maybe_junk(st.just("t1")), "name": names,
                           "input": maybe_junk(st.just({"city": "Oslo"}))}),
    st.fixed_dictionaries({"type": st.just("tool_result"), "tool_use_id": maybe_junk(st.just("t1")),
                           "content": st.one_of(text, parts(["text", "image"])),
                           "is_error": maybe_junk(st.booleans())}),
    st.fixed_dictionaries({"type": st.sampled_from(["thinking", "image", "document"])}))), max_size=3)
anthropic_messages = st.lists(maybe_junk(st.fixed_dictionaries({
    "role": maybe_junk(st.sampled_from(["user", "assistant", "system"])), "content": st.one_of(text, blocks)})),
    max_size=4)
message_fields = {
    "model": maybe_junk(st.just("m"), 9),
    "max_tokens": maybe_junk(st.integers(-1, 5), 9),
    "messages": anthropic_messages,
    "system": st.one_of(text, parts(["text", "image"])),
    "tools": st.lists(maybe_junk(st.one_of(
        st.fixed_dictionaries({"name": names, "description": text, "input_schema": schemas}),
        st.fixed_dictionaries({"type": st.sampled_from(["web_search_20250305", "custom", "bash_20250124"]),
                               "name": names}))), max_size=3),
    "tool_choice": maybe_junk(st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool", "none", "x"]),
                                                     "name": names,
                                                     "disable_parallel_tool_use": maybe_junk(st.booleans())})),
    "stop_sequences": maybe_junk(st.lists(texts(5), max_size=5)),
    "temperature": maybe_junk(st.floats(-1, 3)),
    "top_k": maybe_junk(st.integers(-2, 50)),
    "output_config": maybe_junk(st.fixed_dictionaries({"format": maybe_junk(st.fixed_dictionaries({
        "type": st.sampled_from(["json_schema", "xml"]), "schema": schemas}))})),
    "stream": maybe_junk(st.booleans(), 9),
    "thinking": maybe_junk(st.fixed_dictionaries({"type": st.sampled_from(["enabled", "disabled"])})),
}


@st.composite
def bodies(draw, fields: dict) -> dict:
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
    required = [k for k in ("model", "input", "messages", "max_tokens") if k in fields]
    present = set(chosen) | set(draw(st.lists(st.sampled_from(required), unique=True, min_size=len(required) - 1)))
    return {k: draw(fields[k]) for k in sorted(present)}


@st.composite
def api_requests(draw) -> tuple[str, bytes]:
    path = draw(st.sampled_from([RESPONSES, MESSAGES, COUNT]))
    body = draw(weighted((19, bodies(response_fields if path == RESPONSES else message_fields)), (1, junk)))
    return path, draw(fuzz.encoded(body))


CLIENT = client_for(FakeClient(fuzz.fake_script))


def check(path: str, status: int, content_type: str, body: bytes) -> None:
    error = fuzz.error_of(status, content_type, body)
    if error is not None:
        if path == RESPONSES:
            assert list(error) == ["error"] and list(error["error"]) == ["message", "type", "param", "code"], error
        else:
            assert list(error) == ["type", "error"] and error["type"] == "error", error
            assert list(error["error"]) == ["type", "message"], error
        fuzz.check_error_message(error["error"]["message"])
    elif content_type.startswith("text/event-stream"):
        frames = body.decode("utf-8").split("\n\n")
        assert frames[-1] == ""
        for frame in frames[:-1]:
            event, data = frame.split("\n")
            assert event.startswith("event: ") and json.loads(data.removeprefix("data: "))["type"] != "error", frame
    else:
        json.loads(body)


@fuzz_settings(EXAMPLES)
@given(api_requests())
def test_any_request_is_answered_2xx_or_4xx_in_the_apis_error_shape(request):
    path, data = request
    result = CLIENT.simulate_post(path, body=data, headers={"Content-Type": "application/json"})
    check(path, result.status_code, result.headers.get("content-type", ""), result.content)


def test_the_app_still_serves_after_the_fuzz():
    result = CLIENT.simulate_post(MESSAGES, json={"model": "m", "max_tokens": 3,
                                                  "messages": [{"role": "user", "content": "hi"}]})
    assert result.status_code == 200 and result.json["content"] == [{"type": "text", "text": "Hello!"}]
