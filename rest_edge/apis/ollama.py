"""Ollama's native API under /api: chat, generate, embeddings and the model routes.

For the tools that speak Ollama rather than OpenAI (the official ``ollama`` clients, chat
front ends, editor plugins). Shapes follow Ollama's ``docs/api.md`` and ``api/types.go``.

* ``POST /api/chat`` and ``POST /api/generate``: newline-delimited JSON objects
  (``application/x-ndjson``) unless ``"stream": false``. Each object has ``model``,
  ``created_at`` (RFC 3339, UTC) and ``message`` (chat) or ``response`` (generate) and
  ``done``; the last one has ``done_reason`` (``stop`` or ``length``) and the counts and
  durations in nanoseconds: ``total_duration`` (request in to last token),
  ``load_duration`` (0: models stay loaded), ``prompt_eval_count`` (prompt tokens, cached
  ones included), ``prompt_eval_duration`` (until the first piece of the answer: queue and
  prompt; a tool call arrives whole, so a call's tokens count here), ``eval_count`` and
  ``eval_duration`` (first piece to last).
  Honoured: ``model`` (a name without a tag is ``name:latest``), ``system``, ``raw``
  (generate: the prompt as is, control-token markup parsed),
  ``format`` (``"json"`` or a JSON schema, through the grammar), ``tools`` with
  ``message.tool_calls`` (arguments as objects; ids are made for calls sent back without
  one, and tool turns are matched to calls by ``tool_call_id``, else ``tool_name``, else
  order), and ``options``: ``temperature``, ``top_p``, ``top_k`` (0 or less: no limit),
  ``min_p``, ``num_predict`` (-1, -2: no cap), ``stop`` (at most 4), ``seed`` (-1:
  random), ``repeat_penalty`` (over the whole context: ``repeat_last_n`` -1; 0 turns it
  off), ``presence_penalty``, ``frequency_penalty`` (over the generated tokens), and
  ``num_ctx`` up to the served context (prompts are never truncated: a longer one is
  refused). An empty ``messages`` (``prompt``) answers Ollama's "load" object.
  This server's one extension: ``options.tool_choice`` ("auto", "required", "none" or a
  tool's name; Ollama has no tool choice, and ignores options it does not know).
  Accepted and ignored: ``keep_alive`` (models stay loaded whatever it says; checked to be
  a duration), ``truncate``, ``shift``, ``num_keep``,
  ``penalize_newline``, the runner's resource options (``num_batch``, ``num_gpu``,
  ``num_thread``, ...: the operator sets them on the service) and unknown options (as
  Ollama does). ``think``: false asks a thinking template not to think; a model that thinks
  answers its thinking in ``thinking``, apart from the content. Refused with a 400 naming
  them: images, ``suffix``, a
  custom ``template``, ``context``, ``logprobs``, and the sampling options this server does
  not have when not neutral (``typical_p``, ``mirostat``, ``tfs_z``, ``repeat_last_n``
  other than -1 or 0 with a ``repeat_penalty``).
* ``POST /api/embed`` (``input``: a string or strings) and the older ``/api/embeddings``
  (``prompt``): the model's full vectors (``dimensions`` only as the model's own); inputs
  are never truncated (``truncate`` is accepted; an input longer than the context is a 400).
* ``GET /api/tags``, ``GET /api/ps``, ``POST /api/show``, ``GET /api/version``: what the
  service's ``ListModels`` says (name, architecture, context, file time, embedding size).
  The contract carries no file size, digest, quantization or chat template: ``size`` is 0,
  ``digest`` is the SHA-256 of the served name (stable, not the file's), and ``show`` has
  no ``template``.
* ``POST /api/pull``: the gRPC contract has no pull RPC (models are pulled on the service's
  host and served when it starts), so a model already served answers ``success`` and any
  other a 404 saying so.

Errors are Ollama's ``{"error": "..."}`` with its statuses (a full service is Ollama's 503
"server busy"); after a stream started, an error is one more NDJSON line.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import falcon

from inference_service import limits
from inference_service.limits import RANGES, quote
from inference_service.v1 import inference_pb2 as pb

from rest_edge import errors, responses, wire
from rest_edge.apis import fields, tools
from rest_edge.apis.fields import checked_text, missing, type_error
from rest_edge.apis.generation import Parsed
from rest_edge.errors import RequestError, invalid
from rest_edge.resources import CallingResource, Client, json_response, new_id, request_id_of

ROUTE_PREFIX = "/api"
NDJSON = "application/x-ndjson"
# The Ollama release whose API this adapter follows (GET /api/version).
VERSION = "0.33.0"
# expires_at of /api/ps: models are never unloaded (Ollama's keep_alive -1 is also ~292 years).
NEVER = "2318-01-01T00:00:00Z"


def error_shape(err: RequestError) -> tuple[int, dict]:
    """A RequestError in Ollama's terms: ``{"error": message}``; no room in the service is
    Ollama's 503 ("server busy"), with the Retry-After the service gave."""
    status = err.status
    if status == 429 and err.code == "rate_limit_exceeded":
        status = 503
    return status, {"error": err.message}


# --- small shapes ------------------------------------------------------------------------

def timestamp(ns: Optional[int] = None) -> str:
    """Go's RFC 3339 with nanoseconds, UTC (``2023-08-04T19:22:45.499127Z``)."""
    ns = time.time_ns() if ns is None else ns
    seconds, frac = divmod(ns, 10**9)
    digits = f"{frac:09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ("." + digits if digits else "") + "Z"


def float32_text(value: float) -> float:
    """The shortest decimal that reads back as the same float32 (how Go writes ``[]float32``)."""
    for digits in range(1, 10):
        short = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", short))[0] == value:
            return short
    return value


def ndjson(obj: Any) -> bytes:
    return wire.dumps(obj).encode("utf-8") + b"\n"


def details(info: pb.ModelInfo) -> dict:
    family = info.architecture
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family] if family else [],
            "parameter_size": "", "quantization_level": ""}


def name_digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


# --- request fields ------------------------------------------------------------------------

_DURATION = re.compile(r"-?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+|-?0")
_THINK_LEVELS = ("low", "medium", "high", "max")


def _model(body: dict) -> str:
    value = body.get("model")
    if value is None or value == "":
        value = body.get("name")  # Ollama's older spelling (show, pull)
    if value is None or value == "":
        raise invalid("model is required", param="model", code="missing_required_parameter")
    if not isinstance(value, str):
        raise type_error("model", "a string", value)
    return checked_text(value, "model", limits.MAX_MODEL_CHARS)


def _keep_alive(body: dict) -> None:
    """Accepted and ignored (models stay loaded); checked to be what Ollama accepts."""
    value = body.get("keep_alive")
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return
    if not isinstance(value, str):
        raise type_error("keep_alive", "a duration (a number of seconds or a string such as \"5m\")", value)
    if not _DURATION.fullmatch(value.strip()):
        raise invalid(f"Invalid 'keep_alive': {quote(value)} is not a duration (such as \"5m\", \"1h\", \"-1\").",
                      param="keep_alive", code="invalid_value")


def _think(body: dict, req: pb.GenerateRequest) -> None:
    """``think`` false asks a thinking model's template not to think; true or a level leaves it
    to think (its thinking comes as ``thinking``, apart from the answer). A model that does not
    think answers as it always does."""
    value = body.get("think")
    if value is None or value is True or value in _THINK_LEVELS:
        return
    if value is False:
        req.thinking = False
        return
    raise invalid(f"invalid think value: {quote(value)} (must be \"high\", \"medium\", \"low\", \"max\", true, or "
                  "false)", param="think", code="invalid_value")


def _no_images(obj: dict, param: str, model: str) -> None:
    value = obj.get(param.rsplit(".", 1)[-1])
    if value is None or value == []:
        return
    raise invalid(f"{quote(model)} does not support images: this server serves text-only models; remove "
                  f"'{param}'.", param=param, code="unsupported_parameter")


def _refuse_if_set(body: dict, name: str, why: str) -> None:
    value = body.get(name)
    if value not in (None, "", [], False, 0):
        raise invalid(f"Unsupported parameter: '{name}': {why}.", param=name, code="unsupported_parameter")


def _format(body: dict) -> Optional[pb.Constraint]:
    value = body.get("format")
    if value is None or value == "":
        return None
    if value == "json":
        return pb.Constraint(json_object=True)
    if isinstance(value, dict):
        return pb.Constraint(json_schema=fields.schema_text(value, "format"))
    raise invalid(f"invalid format: {quote(value)}; expected \"json\" or a JSON schema (an object).",
                  param="format", code="invalid_value")


# Options that would change the answer and that this server does not have: (neutral value, why).
_OPTIONS_REFUSED = {
    "typical_p": (1.0, "locally typical sampling is not supported"),
    "mirostat": (0, "Mirostat sampling is not supported"),
    "tfs_z": (1.0, "tail-free sampling is not supported"),
}


def _option_number(opts: dict, key: str, range_name: str) -> Optional[float]:
    value = opts.get(key)
    if value is None:
        return None
    param = f"options.{key}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error(param, "a number", value)
    bounds = RANGES[range_name]
    if value not in bounds:
        raise fields.range_error(param, bounds.describe(), value)
    return float(value)


def _option_int(opts: dict, key: str) -> Optional[int]:
    return fields.opt_int(opts, key, fields.INT64_MIN, fields.INT64_MAX, param=f"options.{key}")


def _options(body: dict, req: pb.GenerateRequest) -> Optional[int]:
    """``options`` onto ``req``; returns ``num_ctx`` when asked (checked against the model later)."""
    opts = body.get("options")
    if opts is None:
        return None
    if not isinstance(opts, dict):
        raise type_error("options", "an object", opts)
    for key, (neutral, why) in _OPTIONS_REFUSED.items():
        value = opts.get(key)
        if value is not None and value != neutral:
            raise invalid(f"Unsupported option 'options.{key}': {why} (only {neutral} is accepted).",
                          param=f"options.{key}", code="unsupported_parameter")
    for key, name in (("temperature", "temperature"), ("top_p", "top_p"), ("min_p", "min_p"),
                      ("repeat_penalty", "repetition_penalty"), ("presence_penalty", "presence_penalty"),
                      ("frequency_penalty", "frequency_penalty")):
        value = _option_number(opts, key, name)
        if value is not None:
            setattr(req, name, value)
    top_k = _option_int(opts, "top_k")
    if top_k is not None:
        req.top_k = min(max(top_k, 0), fields.UINT32_MAX)
    seed = _option_int(opts, "seed")
    if seed is not None and seed != -1:
        req.seed = seed
    num_predict = _option_int(opts, "num_predict")
    if num_predict is not None and num_predict not in (-1, -2):
        if num_predict < 1 or num_predict > fields.UINT32_MAX:
            raise invalid(f"Invalid 'options.num_predict': expected -1 (no limit), -2 or 1 to {fields.UINT32_MAX}, "
                          f"but got {quote(num_predict)}.", param="options.num_predict", code="invalid_value")
        req.max_tokens = num_predict
    repeat_last_n = _option_int(opts, "repeat_last_n")
    if repeat_last_n == 0:
        req.ClearField("repetition_penalty")  # Ollama: 0 turns the repeat penalty off
    elif repeat_last_n not in (None, -1) and req.HasField("repetition_penalty") and req.repetition_penalty != 1.0:
        raise invalid("Unsupported value for 'options.repeat_last_n': this server applies repeat_penalty to every "
                      "token of the context (repeat_last_n -1), or not at all (0).",
                      param="options.repeat_last_n", code="unsupported_parameter")
    stop = opts.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    req.stop.extend(s for s in fields.opt_str_list({"stop": stop}, "stop", "options.stop", limits.MAX_STOP_STRINGS,
                                                   limits.MAX_STOP_CHARS) if s)
    num_ctx = _option_int(opts, "num_ctx")
    if num_ctx is not None and num_ctx < 1:
        raise fields.range_error("options.num_ctx", ">= 1", num_ctx)
    return num_ctx


def _check_num_ctx(client: Client, model: str, num_ctx: Optional[int]) -> None:
    if num_ctx is None:
        return
    info = next((m for m in client.list_models() if m.name == model), None)
    if info is None or not info.context_length or num_ctx <= info.context_length:
        return  # an unknown model gets the service's own 404
    raise invalid(f"Invalid 'options.num_ctx': {num_ctx} is above the served context of {quote(model)} "
                  f"({info.context_length} tokens); this server does not resize contexts.",
                  param="options.num_ctx", code="invalid_value")


def served_name(client: Client, model: str) -> str:
    """The served model a client means, by Ollama's rule that a name without a tag is
    ``name:latest`` (and the other way round); else the name as sent."""
    served = {m.name for m in client.list_models()}
    if model in served:
        return model
    base, _, tag = model.rpartition(":")
    for other in ((base,) if tag == "latest" and base else ()) + ((f"{model}:latest",) if ":" not in model else ()):
        if other in served:
            return other
    return model


def _check_served(client: Client, model: str) -> None:
    served = [m.name for m in client.list_models()]
    if model not in served:
        raise errors.model_not_served(model, served)


def _common(body: dict, model: str, req: pb.GenerateRequest) -> Optional[int]:
    """What chat and generate share: think, keep_alive, format, options; returns num_ctx."""
    _think(body, req)
    _keep_alive(body)
    for name in ("truncate", "shift"):
        fields.opt_bool(body, name)
    if fields.opt_bool(body, "logprobs") or body.get("top_logprobs"):
        raise invalid("Unsupported parameter: 'logprobs' on /api; log probabilities are served on "
                      "/v1/chat/completions.", param="logprobs", code="unsupported_parameter")
    constraint = _format(body)
    if constraint is not None:
        req.constraint.CopyFrom(constraint)
    return _options(body, req)


def _stream(body: dict) -> bool:
    value = fields.opt_bool(body, "stream")
    return value is not False  # Ollama streams unless told not to


# --- /api/chat -------------------------------------------------------------------------------

_ROLES = ("system", "user", "assistant", "tool")


def _call_arguments(value: Any, param: str) -> str:
    if isinstance(value, str):  # some clients send the arguments as JSON text
        return fields.arguments_text(value, param)
    if value is None:
        return "{}"
    return fields.object_json(value, param)


class _Conversation:
    """Ollama's messages as the contract's turns. Calls sent back without ``id`` get one, and a
    ``tool`` turn answers the call named by its ``tool_call_id``, else the first unanswered
    call of its ``tool_name``, else the first unanswered call."""

    def __init__(self, model: str):
        self.model = model
        self.turns: list[pb.ChatMessage] = []
        self._unanswered: list[tuple[str, str]] = []  # (id, name) of the last assistant turn's calls

    def add(self, msg: Any, i: int) -> None:
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise type_error(param, "an object", msg)
        role = msg.get("role")
        if role is None:
            raise missing(f"{param}.role")
        if not isinstance(role, str):
            raise type_error(f"{param}.role", "a string", role)
        role = role.lower()
        if role not in _ROLES:
            raise invalid(f"Invalid value for '{param}.role': {quote(role)}; supported roles are system, user, "
                          "assistant and tool.", param=f"{param}.role", code="invalid_value")
        _no_images(msg, f"{param}.images", self.model)
        content = fields.opt_str_at(msg, "content", f"{param}.content") or ""
        fields.opt_str_at(msg, "thinking", f"{param}.thinking")  # an earlier turn's thinking: not sent on
        turn = pb.ChatMessage(role=role, content=content)
        calls = msg.get("tool_calls")
        if calls not in (None, []):
            if role != "assistant":
                raise invalid(f"Invalid '{param}.tool_calls': only assistant messages have tool calls.",
                              param=f"{param}.tool_calls", code="invalid_value")
            turn.tool_calls.extend(self._calls(calls, i))
        if role == "assistant":
            self._unanswered = [(c.id, c.name) for c in turn.tool_calls]
        if role == "tool":
            turn.tool_call_id, turn.name = self._answered(msg, i)
        self.turns.append(turn)

    def _calls(self, value: Any, i: int) -> list[pb.ToolCall]:
        param = f"messages[{i}].tool_calls"
        if not isinstance(value, list):
            raise type_error(param, "an array", value)
        calls = []
        for j, (call_param, call) in enumerate(fields.objects_in(value, param)):
            function = fields.object_at(call, "function", f"{call_param}.function")
            name = fields.function_name(function.get("name"), f"{call_param}.function.name")
            arguments = _call_arguments(function.get("arguments"), f"{call_param}.function.arguments")
            given = call.get("id")
            call_id = fields.call_id(given, f"{call_param}.id") if given not in (None, "") else f"call_{i}_{j}"
            calls.append(pb.ToolCall(id=call_id, name=name, arguments_json=arguments))
        return calls

    def _answered(self, msg: dict, i: int) -> tuple[str, str]:
        param = f"messages[{i}]"
        name = fields.opt_str_at(msg, "tool_name", f"{param}.tool_name", limits.MAX_NAME_CHARS) or ""
        given = msg.get("tool_call_id")
        if given not in (None, ""):
            call_id = fields.call_id(given, f"{param}.tool_call_id")
            match = next((c for c in self._unanswered if c[0] == call_id), None)
        else:
            match = next((c for c in self._unanswered if c[1] == name), None) if name else None
            match = match or (self._unanswered[0] if self._unanswered else None)
            call_id = match[0] if match else f"call_{i}"
        if match is not None:
            self._unanswered.remove(match)
            name = name or match[1]
        return call_id, name


def _tools(body: dict) -> list[pb.Tool]:
    taken: dict[str, str] = {}
    out = []
    for param, tool in tools.tool_objects(body):
        kind = tool.get("type")
        if kind not in (None, "function"):
            raise invalid(f"Unsupported value for '{param}.type': {quote(kind)}; only 'function' is supported.",
                          param=f"{param}.type", code="unsupported_parameter")
        function = fields.object_at(tool, "function", f"{param}.function")
        out.append(tools.function_tool(function, f"{param}.function", taken=taken))
    return out


def _tool_choice(body: dict, req: pb.GenerateRequest) -> None:
    """``options.tool_choice``, this server's extension (Ollama has no tool choice and ignores
    options it does not know): "auto", "required", "none" or the name of one of the tools.
    Small models seldom call a tool unasked; this makes them."""
    opts = body.get("options")
    value = opts.get("tool_choice") if isinstance(opts, dict) else None
    if value is None:
        return
    param = "options.tool_choice"
    if not isinstance(value, str):
        raise type_error(param, "a string", value)
    if not req.tools:
        raise invalid(f"Invalid '{param}': it needs 'tools'.", param=param, code="invalid_value")
    if value in tools.MODES:
        req.tool_choice.CopyFrom(pb.ToolChoice(mode=tools.MODES[value]))
        return
    name = tools.check_named(value, req.tools, param)
    req.tool_choice.CopyFrom(pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name=name))


@dataclass
class _Request:
    """What the renderer needs besides the events."""

    model: str
    started_ns: int = field(default_factory=time.monotonic_ns)


def load_answer(model: str, chat: bool) -> dict:
    """Ollama's answer to an empty chat or prompt (``done_reason`` "load"): the model is loaded,
    and stays so (``keep_alive`` 0 does not unload it here)."""
    answer: dict = {"model": model, "created_at": timestamp()}
    if chat:
        answer["message"] = {"role": "assistant", "content": ""}
    else:
        answer["response"] = ""
    answer.update(done=True, done_reason="load")
    return answer


def parse_chat(body: dict, request_id: str = "") -> tuple[Parsed, Optional[int]]:
    """POST /api/chat body → the request (or the load answer), and ``options.num_ctx``."""
    echo = _Request(_model(body))
    model = echo.model
    req = pb.GenerateRequest(model=model, request_id=request_id)
    num_ctx = _common(body, model, req)
    req.tools.extend(_tools(body))
    _tool_choice(body, req)
    messages = body.get("messages")
    if messages is not None and not isinstance(messages, list):
        raise type_error("messages", "an array", messages)
    conversation = _Conversation(model)
    for i, msg in enumerate(messages or []):
        conversation.add(msg, i)
    parsed = Parsed(req, model, _stream(body), echo)
    if not conversation.turns:
        parsed.answer = load_answer(model, chat=True)
    req.messages.extend(conversation.turns)
    return parsed, num_ctx


# --- /api/generate ---------------------------------------------------------------------------

def parse_generate(body: dict, request_id: str = "") -> tuple[Parsed, Optional[int]]:
    """POST /api/generate body → the request (or the load answer), and ``options.num_ctx``."""
    echo = _Request(_model(body))
    model = echo.model
    req = pb.GenerateRequest(model=model, request_id=request_id)
    num_ctx = _common(body, model, req)
    _no_images(body, "images", model)
    _refuse_if_set(body, "suffix", "inserting text before a suffix is not supported")
    _refuse_if_set(body, "context", "the deprecated 'context' is not supported; keep a conversation with /api/chat")
    raw = bool(fields.opt_bool(body, "raw"))
    system = fields.opt_str_at(body, "system", "system") or ""
    template = fields.opt_str_at(body, "template", "template") or ""
    if raw and (system or template):
        raise invalid("raw mode does not support template, system, or context", param="raw", code="invalid_value")
    if template:
        raise invalid("Unsupported parameter: 'template': the model's own chat template is always used (or none, "
                      "with raw).", param="template", code="unsupported_parameter")
    prompt = fields.opt_str_at(body, "prompt", "prompt") or ""
    parsed = Parsed(req, model, _stream(body), echo)
    if not prompt:
        parsed.answer = load_answer(model, chat=False)
    elif raw:
        req.prompt, req.raw = prompt, True
    elif system:
        req.messages.extend([pb.ChatMessage(role="system", content=system),
                             pb.ChatMessage(role="user", content=prompt)])
    else:
        req.prompt = prompt  # one user turn of the chat template
    return parsed, num_ctx


# --- answers -----------------------------------------------------------------------------

def tool_call_object(call: pb.ToolCall, index: int) -> dict:
    return {"id": call.id, "function": {"index": index, "name": call.name,
                                        "arguments": json.loads(call.arguments_json or "{}")}}


class _Rendering:
    """One answer of /api/chat (``chat``) or /api/generate, streamed or whole."""

    def __init__(self, parsed: Parsed, response_id: str, chat: bool):
        self.id = response_id
        self._model = parsed.model
        self._chat = chat
        self._started_ns = parsed.echo.started_ns
        self._first_ns: Optional[int] = None
        self._calls = 0

    def _object(self, text: str, calls: tuple = (), thinking: str = "") -> dict:
        obj: dict = {"model": self._model, "created_at": timestamp()}
        if self._chat:
            message: dict = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = [tool_call_object(c, self._calls + k) for k, c in enumerate(calls)]
                self._calls += len(calls)
            obj["message"] = message
        else:
            obj["response"] = text
            if thinking:
                obj["thinking"] = thinking
        return obj

    def _seen(self) -> None:
        if self._first_ns is None:
            self._first_ns = time.monotonic_ns()

    def _final(self, obj: dict, finish: responses.Finish) -> dict:
        now = time.monotonic_ns()
        first = self._first_ns if self._first_ns is not None else now
        obj.update(done=True, done_reason="length" if finish.finish_reason == "length" else "stop",
                   total_duration=now - self._started_ns, load_duration=0,
                   prompt_eval_count=finish.usage["prompt_tokens"], prompt_eval_duration=first - self._started_ns,
                   eval_count=finish.usage["completion_tokens"], eval_duration=now - first)
        return obj

    # --- a stream ---

    def opening(self) -> list[bytes]:
        return []

    def frames(self, event: responses.Event) -> list[bytes]:
        self._seen()
        if isinstance(event, responses.Reasoning):
            return [ndjson(dict(self._object("", thinking=event.text), done=False))]
        if isinstance(event, responses.Text):
            return [ndjson(dict(self._object(event.text), done=False))]
        if isinstance(event, responses.ToolCalls):
            return [ndjson(dict(self._object("", event.calls), done=False))]
        return [ndjson(self._final(self._object(""), event))]

    def error_frames(self, err: RequestError) -> list[bytes]:
        return [ndjson(error_shape(err)[1])]

    # --- a whole answer ---

    def body(self, events: Iterable[responses.Event]) -> dict:
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list = []
        for event in events:
            self._seen()
            if isinstance(event, responses.Finish):
                return self._final(self._object("".join(texts), tuple(calls), "".join(thoughts)), event)
            if isinstance(event, responses.ToolCalls):
                calls.extend(event.calls)
            elif isinstance(event, responses.Reasoning):
                thoughts.append(event.text)
            else:
                texts.append(event.text)
        raise AssertionError("events() ends with a Finish or raises")


class _Adapter:
    id_prefix = "ollama"
    stream_content_type = NDJSON

    def __init__(self, client: Client, parse, chat: bool):
        self._client = client
        self._parse = parse
        self._chat = chat

    def parse(self, body: dict, request_id: str) -> Parsed:
        parsed, num_ctx = self._parse(body, request_id)
        parsed.request.model = model = served_name(self._client, parsed.model)  # answers echo the name sent
        if parsed.answer is not None:
            _check_served(self._client, model)
        _check_num_ctx(self._client, model, num_ctx)
        return parsed

    def rendering(self, parsed: Parsed, response_id: str) -> _Rendering:
        return _Rendering(parsed, response_id, self._chat)


def chat_adapter(client: Client) -> _Adapter:
    return _Adapter(client, parse_chat, chat=True)


def generate_adapter(client: Client) -> _Adapter:
    return _Adapter(client, parse_generate, chat=False)


# --- embeddings ----------------------------------------------------------------------------

def _embed_inputs(body: dict, legacy: bool) -> list[pb.EmbedInput]:
    if legacy:  # /api/embeddings: one "prompt"
        prompt = fields.opt_str_at(body, "prompt", "prompt", limits.MAX_EMBEDDING_INPUT_CHARS)
        return [pb.EmbedInput(text=prompt)] if prompt else []
    value = body.get("input")
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [pb.EmbedInput(text=checked_text(value, "input", limits.MAX_EMBEDDING_INPUT_CHARS))]
    if not isinstance(value, list):
        raise type_error("input", "a string or an array of strings", value)
    if len(value) > limits.MAX_EMBEDDING_INPUTS:
        raise invalid(limits.too_many_inputs_message("input", len(value)), param="input", code="invalid_value")
    inputs = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise type_error(f"input[{i}]", "a string", item)
        if not item:
            raise invalid(f"Invalid 'input[{i}]': must not be an empty string.", param=f"input[{i}]",
                          code="invalid_value")
        inputs.append(pb.EmbedInput(text=checked_text(item, f"input[{i}]", limits.MAX_EMBEDDING_INPUT_CHARS)))
    return inputs


class EmbedResource(CallingResource):
    """POST /api/embed (``legacy``: /api/embeddings)."""

    def __init__(self, client: Client, *, legacy: bool, **settings: Any):
        super().__init__(client, **settings)
        self._legacy = legacy

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        started = time.monotonic_ns()
        body = self._json_body(req)
        model = _model(body)
        _keep_alive(body)
        fields.opt_bool(body, "truncate")
        options = body.get("options")
        if options is not None and not isinstance(options, dict):
            raise type_error("options", "an object", options)
        inputs = _embed_inputs(body, self._legacy)
        dimensions = None if self._legacy else fields.opt_int(body, "dimensions", 0, fields.UINT32_MAX)
        served = served_name(self._client, model)
        if dimensions or not inputs:
            self._check(served, dimensions)
        if not inputs:  # Ollama loads the model and answers with no vectors
            json_response(resp, {"embedding": []} if self._legacy else {"model": model, "embeddings": []})
            return
        request = pb.EmbedRequest(model=served, inputs=inputs, request_id=request_id_of(req, new_id("embd")))
        call = self._client.embed(request, timeout=self._request_timeout)
        result = self._watched(req, call, call.result, cancel=False)
        if self._legacy:
            json_response(resp, {"embedding": list(result.embeddings[0].values)})
            return
        json_response(resp, {"model": model,
                             "embeddings": [[float32_text(v) for v in e.values] for e in result.embeddings],
                             "total_duration": time.monotonic_ns() - started, "load_duration": 0,
                             "prompt_eval_count": result.prompt_tokens})

    def _check(self, model: str, dimensions: Optional[int]) -> None:
        info = next((m for m in self._client.list_models() if m.name == model), None)
        if info is None:
            raise errors.model_not_served(model, [m.name for m in self._client.list_models()])
        if dimensions and info.can_embed and dimensions != info.embedding_dimensions:
            raise invalid(f"Unsupported value for 'dimensions': {dimensions}. This server returns the model's full "
                          f"vectors, {info.embedding_dimensions} dimensions for {quote(model)}; leave 'dimensions' "
                          "out or send that.", param="dimensions", code="unsupported_parameter")


# --- models ----------------------------------------------------------------------------------

def _find(client: Client, model: str) -> pb.ModelInfo:
    infos = client.list_models()
    for info in infos:
        if info.name == model:
            return info
    raise RequestError(404, f"model {quote(model)} not found", param="model", code="model_not_found")


def tag_object(info: pb.ModelInfo) -> dict:
    return {"name": info.name, "model": info.name, "modified_at": timestamp(info.created * 10**9), "size": 0,
            "digest": name_digest(info.name), "details": details(info)}


def capabilities(info: pb.ModelInfo) -> list[str]:
    out = ["completion"]
    if info.has_chat_template:
        out.append("tools")
    if info.can_embed:
        out.append("embedding")
    return out


def show_body(info: pb.ModelInfo) -> dict:
    arch = info.architecture or "unknown"
    model_info: dict = {"general.architecture": arch, f"{arch}.context_length": info.context_length}
    if info.can_embed:
        model_info[f"{arch}.embedding_length"] = info.embedding_dimensions
    parameters = f"{'num_ctx':<30} {info.context_length}"
    modelfile = (f"# Modelfile of {info.name} as this server serves it (engine {info.engine})\n"
                 f"FROM {info.name}\n\nPARAMETER num_ctx {info.context_length}\n")
    return {"modelfile": modelfile, "parameters": parameters, "details": details(info), "model_info": model_info,
            "capabilities": capabilities(info), "modified_at": timestamp(info.created * 10**9)}


class TagsResource:
    """GET /api/tags: the served models."""

    def __init__(self, client: Client):
        self._client = client

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        json_response(resp, {"models": [tag_object(m) for m in self._client.list_models()]})


class PsResource:
    """GET /api/ps: every served model is loaded, and stays so."""

    def __init__(self, client: Client):
        self._client = client

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        models = [{"name": m.name, "model": m.name, "size": 0, "digest": name_digest(m.name), "details": details(m),
                   "expires_at": NEVER, "size_vram": 0, "context_length": m.context_length}
                  for m in self._client.list_models()]
        json_response(resp, {"models": models})


class ShowResource(CallingResource):
    """POST /api/show."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self._json_body(req)
        fields.opt_bool(body, "verbose")
        json_response(resp, show_body(_find(self._client, served_name(self._client, _model(body)))))


class VersionResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        json_response(resp, {"version": VERSION})


class PullResource(CallingResource):
    """POST /api/pull. The gRPC contract has no pull: a served model is already here
    (``success``); any other is a 404 that says how models get onto the service."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = self._json_body(req)
        model = _model(body)
        stream = _stream(body)
        served = [m.name for m in self._client.list_models()]
        if served_name(self._client, model) not in served:
            raise RequestError(404, f"model {quote(model)} is not served here, and this server cannot pull models "
                                    "over its API: models are pulled on the inference service's host "
                                    f"(python -m inference_service pull {quote(model)}) and served when it starts. "
                                    f"Served: {', '.join(served) or 'none'}.", param="model", code="model_not_found")
        if stream:
            resp.content_type = NDJSON
            resp.data = ndjson({"status": "success"})
        else:
            json_response(resp, {"status": "success"})
