"""The fields each OpenAI route accepts, and what becomes of each: one table per route.

A field we accept is a field we honour (or one that cannot change the answer, type-checked as
OpenAI's reference types it); anything else is a 400 naming it. :data:`TABLES` says, per route,
every accepted field and where it comes from (OpenAI, llama.cpp's server, vLLM); the field
tables of docs/apis.md are made from it (``python -m rest_edge.field_tables``). Fields that
other servers define and we do not implement are in :data:`REFUSED` (a 400 unless they hold
their neutral value, which clients such as llama.cpp's web UI send), and a field nobody here
knows is a 400 too, as OpenAI's own API answers ("Unrecognized request argument supplied").

This module reads the fields that :mod:`rest_edge.requests` does not: llama.cpp's (``grammar``,
``json_schema``, ``n_predict``, ``repeat_penalty`` with ``penalty_last_n``, ``n_probs``,
``cache_prompt``), vLLM's structured outputs (``structured_outputs``, ``guided_*``) and OpenAI's
inert fields (``user``, ``metadata``, ``store``, ``service_tier``, ...).
"""

from __future__ import annotations

import json
from typing import Any, Optional

from inference_service import limits
from inference_service.limits import quote
from inference_service.v1 import inference_pb2 as pb

from rest_edge.apis import fields
from rest_edge.errors import RequestError, invalid

OPENAI, LLAMACPP, VLLM, OURS = "OpenAI", "llama.cpp", "vLLM", "this server"

# --- what each route accepts ------------------------------------------------------------------
# name: (who defines it, what it does here)

_SAMPLING = {
    "temperature": (OPENAI, "honoured (0 is greedy)"),
    "top_p": (OPENAI, "honoured"),
    "frequency_penalty": (OPENAI, "honoured"),
    "presence_penalty": (OPENAI, "honoured"),
    "seed": (OPENAI, "honoured: the same request gives the same text"),
    "stop": (OPENAI, "honoured (at most 4 strings, never returned)"),
    "logit_bias": (OPENAI, "honoured"),
    "stream": (OPENAI, "honoured (server-sent events)"),
    "stream_options": (OPENAI, "honoured: include_usage; include_obfuscation type-checked, no obfuscation is sent"),
    "n": (OPENAI, "honoured: 1 to 16 answers, each in a slot of its own (the prompt evaluated once on llama.cpp)"),
    "user": (OPENAI, "type-checked (a string), not used: it only labels the caller"),
    "top_k": (LLAMACPP + ", " + VLLM, "honoured (0 or -1: no limit)"),
    "min_p": (LLAMACPP + ", " + VLLM, "honoured"),
    "typical_p": (LLAMACPP, "honoured (locally typical sampling; 1 is off)"),
    "repetition_penalty": (VLLM, "honoured, over every prompt and generated token"),
    "repeat_penalty": (LLAMACPP, "honoured as llama.cpp does: over the last penalty_last_n tokens (64)"),
    "penalty_last_n": (LLAMACPP, "honoured: the repetition penalty's window (-1 all, 0 off)"),
    "n_predict": (LLAMACPP, "honoured as max_tokens (-1: no limit)"),
    "n_probs": (LLAMACPP, "honoured as top logprobs (in OpenAI's logprobs shape)"),
    "cache_prompt": (LLAMACPP, "type-checked; prompts are always reused from the slot's cache"),
    "ignore_eos": (VLLM + ", " + LLAMACPP, "honoured"),
    "min_tokens": (VLLM, "honoured"),
    "grammar": (LLAMACPP, "honoured: GBNF, converted by llguidance (a bad one is a 400 with the reason)"),
    "json_schema": (LLAMACPP, "honoured: the answer is JSON valid against the schema"),
    "structured_outputs": (VLLM, "honoured: json, regex, choice, grammar (GBNF), json_object"),
    "guided_json": (VLLM, "honoured (vLLM's older spelling of structured_outputs.json)"),
    "guided_regex": (VLLM, "honoured"),
    "guided_choice": (VLLM, "honoured"),
    "guided_grammar": (VLLM, "honoured (GBNF)"),
}
_STORED = {
    "metadata": (OPENAI, "type-checked (at most 16 string pairs), not stored: nothing is"),
    "store": (OPENAI, "type-checked (a boolean), nothing is stored"),
    "safety_identifier": (OPENAI, "type-checked (a string of at most 64), not used"),
    "prompt_cache_key": (OPENAI, "type-checked (a string), not needed: the edge routes by prefix"),
    "prompt_cache_retention": (OPENAI, "type-checked (in-memory or 24h), not used"),
    "service_tier": (OPENAI, "type-checked (auto, default, flex, scale, priority), one tier here"),
    "verbosity": (OPENAI, "type-checked (low, medium, high), not used"),
}

CHAT = {
    "model": (OPENAI, "honoured"),
    "messages": (OPENAI, "honoured: system/developer, user, assistant, tool; text parts"),
    "max_tokens": (OPENAI, "honoured"),
    "max_completion_tokens": (OPENAI, "honoured (wins over max_tokens)"),
    "logprobs": (OPENAI, "honoured"),
    "top_logprobs": (OPENAI, "honoured (at most 20)"),
    "response_format": (OPENAI, "honoured: text, json_object (with llama.cpp's schema), json_schema"),
    "tools": (OPENAI, "honoured (functions)"),
    "tool_choice": (OPENAI, "honoured"),
    "parallel_tool_calls": (OPENAI, "honoured"),
    "function_call": (OPENAI, "none and auto only (deprecated)"),
    "functions": (OPENAI, "empty only (deprecated: use tools)"),
    "reasoning_effort": (OPENAI, "honoured for thinking models: none and minimal switch thinking off"),
    "reasoning_format": (LLAMACPP, "honoured: auto/deepseek put thinking in reasoning_content, none leaves it "
                                   "inline; absent: in reasoning"),
    "chat_template_kwargs": (VLLM + ", " + LLAMACPP, "enable_thinking only (switches thinking)"),
    **_SAMPLING,
    **_STORED,
}
COMPLETIONS = {
    "model": (OPENAI, "honoured"),
    "prompt": (OPENAI, "honoured: a string or an array of one string"),
    "max_tokens": (OPENAI, "honoured"),
    "logprobs": (OPENAI, "honoured (top alternatives per token, at most 20)"),
    "echo": (OPENAI, "false only"),
    "suffix": (OPENAI, "empty only"),
    "best_of": (OPENAI, "1 only"),
    "raw": (OURS, "honoured: the prompt is not wrapped in the chat template"),
    "response_format": (OPENAI, "text only"),
    "tools": (OPENAI, "empty only"),
    "tool_choice": (OPENAI, "none and auto only"),
    **_SAMPLING,
    **_STORED,
}
EMBEDDINGS = {
    "model": (OPENAI, "honoured"),
    "input": (OPENAI, "honoured: texts or token arrays, at most 2048"),
    "encoding_format": (OPENAI, "honoured: float or base64"),
    "dimensions": (OPENAI, "the model's own dimension only"),
    "user": (OPENAI, "type-checked (a string), not used"),
}

# Fields other servers define that would change the answer and that we do not implement:
# refused unless absent or their neutral value. (rest_edge.requests refuses a few more, with
# reasons of their own: n, best_of, echo, suffix, stop_token_ids, reasoning_effort, ...)
REFUSED: dict[str, tuple[Any, str]] = {
    # llama.cpp's samplers, neutral at llama.cpp's defaults (its web UI sends them all)
    "mirostat": (0, "mirostat sampling is not supported"),
    "dynatemp_range": (0, "dynamic temperature is not supported"),
    "xtc_probability": (0, "XTC sampling is not supported"),
    "dry_multiplier": (0, "DRY sampling is not supported"),
    "top_n_sigma": (-1, "top-n-sigma sampling is not supported"),
    "samplers": (None, "the sampler order is fixed: penalties, top_k, typical_p, top_p, min_p, temperature"),
    "n_keep": (0, "the context is never shifted: an over-long prompt is refused"),
    "n_discard": (0, "the context is never shifted"),
    "n_indent": (0, "indentation stops are not supported"),
    "t_max_predict_ms": (0, "time limits are not supported; use max_tokens"),
    "id_slot": (-1, "slots are assigned by the server"),
    "lora": (None, "LoRA adapters are not supported"),
    "post_sampling_probs": (False, "post-sampling probabilities are not supported"),
    "return_tokens": (False, "token ids are not returned"),
    "grammar_lazy": (False, "lazy grammars are not supported"),
    "grammar_triggers": (None, "lazy grammars are not supported"),
    "preserved_tokens": (None, "lazy grammars are not supported"),
    "timings_per_token": (False, "timings are not returned"),
    "return_progress": (False, "progress is not returned"),
    # vLLM's
    "guided_decoding_backend": (None, "the grammar engine is always llguidance"),
    "guided_whitespace_pattern": (None, "JSON is laid out as json.dumps lays it out"),
    "structural_tag": (None, "structural tags are not supported"),
    "bad_words": (None, "bad words are not supported; use logit_bias"),
    "allowed_token_ids": (None, "allowed token ids are not supported; use logit_bias"),
    "spaces_between_special_tokens": (True, "special tokens are never part of the output"),
}
# Settings of a refused sampler that are inert while it is off (sent with its defaults).
_INERT_WHILE_OFF = {
    "mirostat_tau": "mirostat", "mirostat_eta": "mirostat",
    "dynatemp_exponent": "dynatemp_range",
    "xtc_threshold": "xtc_probability",
    "dry_base": "dry_multiplier", "dry_allowed_length": "dry_multiplier",
    "dry_penalty_last_n": "dry_multiplier", "dry_sequence_breakers": "dry_multiplier",
}

# Fields rest_edge.requests reads or refuses by name on every generation route (its table).
_REQUESTS_OWN = frozenset({
    "n", "best_of", "echo", "suffix", "functions", "function_call",
    "stop_token_ids", "include_stop_str_in_output", "skip_special_tokens", "use_beam_search", "length_penalty",
    "prompt_logprobs", "truncate_prompt_tokens", "add_generation_prompt", "continue_final_message",
    "chat_template", "chat_template_kwargs", "modalities", "audio", "prediction", "reasoning_effort",
    "reasoning_format",
    "web_search_options",
})

TABLES = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETIONS, "/v1/embeddings": EMBEDDINGS}


# --- readers ----------------------------------------------------------------------------------

def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def _type_error(param: str, expected: str, value: Any) -> RequestError:
    return invalid(f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
                   param=param, code="invalid_type")


def _unsupported(param: str, why: str) -> RequestError:
    return invalid(f"Unsupported parameter: '{param}': {why}.", param=param, code="unsupported_parameter")


def _string(value: Any, param: str, max_chars: Optional[int] = None) -> str:
    if not isinstance(value, str):
        raise _type_error(param, "a string", value)
    return fields.checked_text(value, param, max_chars)


def _enum(body: dict, name: str, values: tuple[str, ...]) -> None:
    value = body.get(name)
    if value is None:
        return
    if not isinstance(value, str):
        raise _type_error(name, "a string", value)
    if value not in values:
        listed = ", ".join(f"'{v}'" for v in values)
        raise invalid(f"Invalid value for '{name}': {quote(value)}. Supported values are: {listed}.", param=name,
                      code="invalid_value")


def _int(body: dict, name: str, low: int, high: int) -> Optional[int]:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(name, "an integer", value)
    if not low <= value <= high:
        raise invalid(f"Invalid '{name}': expected a value >= {low} and <= {high}, but got {quote(value)} instead.",
                      param=name, code="invalid_value")
    return value


def _bool(body: dict, name: str) -> Optional[bool]:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise _type_error(name, "a boolean", value)
    return value


# --- OpenAI's inert fields --------------------------------------------------------------------

MAX_METADATA_PAIRS = 16  # OpenAI's reference: 16 pairs, keys <= 64 characters, values <= 512
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_USER_CHARS = 256
MAX_SAFETY_IDENTIFIER_CHARS = 64


def check_inert(body: dict) -> None:
    """OpenAI's fields that cannot change the answer, type-checked as its reference types them."""
    if body.get("user") is not None:
        _string(body["user"], "user", MAX_USER_CHARS)
    if body.get("safety_identifier") is not None:
        _string(body["safety_identifier"], "safety_identifier", MAX_SAFETY_IDENTIFIER_CHARS)
    if body.get("prompt_cache_key") is not None:
        _string(body["prompt_cache_key"], "prompt_cache_key", limits.MAX_MODEL_CHARS)
    _bool(body, "store")
    _enum(body, "service_tier", ("auto", "default", "flex", "scale", "priority"))
    _enum(body, "verbosity", ("low", "medium", "high"))
    _enum(body, "prompt_cache_retention", ("in-memory", "24h"))
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _type_error("metadata", "an object of string values", metadata)
        if len(metadata) > MAX_METADATA_PAIRS:
            raise invalid(f"Invalid 'metadata': expected an object with at most {MAX_METADATA_PAIRS} properties, "
                          f"but got {len(metadata)}.", param="metadata", code="object_above_max_properties")
        for key, value in metadata.items():
            _string(key, "metadata", MAX_METADATA_KEY_CHARS)
            _string(value, f"metadata.{key}", MAX_METADATA_VALUE_CHARS)
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_obfuscation") is not None:
        if not isinstance(options["include_obfuscation"], bool):
            raise _type_error("stream_options.include_obfuscation", "a boolean", options["include_obfuscation"])


def check_known(body: dict, table: dict) -> None:
    """Every field is in the route's table, or a field refused by name elsewhere; else a 400."""
    for name in body:
        if name in table or name in REFUSED or name in _INERT_WHILE_OFF or name in _REQUESTS_OWN:
            continue
        raise invalid(f"Unrecognized request argument supplied: {quote(name)}.", param=name,
                      code="unknown_parameter")


def check_refused(body: dict) -> None:
    for name, (neutral, why) in REFUSED.items():
        value = body.get(name)
        if value is not None and value != neutral:
            raise _unsupported(name, why)
    for name, switch in _INERT_WHILE_OFF.items():
        if body.get(name) is not None and body.get(switch) not in (None, REFUSED[switch][0]):
            raise _unsupported(name, REFUSED[switch][1])


# --- llama.cpp's and vLLM's generation fields --------------------------------------------------

LLAMACPP_PENALTY_LAST_N = 64  # llama.cpp's default window of repeat_penalty


def _schema_text(value: Any, param: str) -> str:
    if isinstance(value, str):  # vLLM takes a schema as JSON text too
        try:
            value = json.loads(value)
        except ValueError:
            raise invalid(f"Invalid '{param}': not valid JSON text of a JSON schema.", param=param,
                          code="invalid_value") from None
    return fields.schema_text(value, param)  # the same reader as response_format's schemas


def _bounded(text: str, param: str) -> str:
    if len(text) > limits.MAX_SCHEMA_CHARS:
        raise invalid(f"Invalid '{param}': {len(text)} characters; at most {limits.MAX_SCHEMA_CHARS} are accepted.",
                      param=param, code="string_above_max_length")
    return _string(text, param)


def _choice_grammar(value: Any, param: str) -> str:
    """vLLM's ``choice``: exactly one of these strings, as a Lark grammar of literals."""
    if not isinstance(value, list) or not value:
        raise _type_error(param, "a non-empty array of strings", value)
    for k, item in enumerate(value):
        _string(item, f"{param}[{k}]")
        if not item:
            raise invalid(f"Invalid '{param}[{k}]': must not be empty.", param=f"{param}[{k}]", code="invalid_value")
    return _bounded("start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in value), param)


def _structured(kind: str, value: Any, param: str) -> Optional[pb.Constraint]:
    """One vLLM structured-output member (or llama.cpp's field) as a constraint."""
    if kind == "json":
        return pb.Constraint(json_schema=_schema_text(value, param), param=param)
    if kind == "regex":
        return pb.Constraint(regex=_bounded(_string(value, param), param), param=param)
    if kind == "choice":
        return pb.Constraint(lark=_choice_grammar(value, param), param=param)
    if kind == "grammar":
        return pb.Constraint(gbnf=_bounded(_string(value, param), param), param=param)
    if kind == "json_object":
        if not isinstance(value, bool):
            raise _type_error(param, "a boolean", value)
        return pb.Constraint(json_object=True, param=param) if value else None
    raise AssertionError(kind)


_STRUCTURED_MEMBERS = ("json", "regex", "choice", "grammar", "json_object")
_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
_STRUCTURED_INERT = {"disable_fallback": False, "disable_any_whitespace": False,
                     "disable_additional_properties": False, "whitespace_pattern": None, "structural_tag": None}


def _constraints(body: dict) -> list[pb.Constraint]:
    """Every constraint the body asks for through llama.cpp's or vLLM's fields."""
    found: list[pb.Constraint] = []
    if body.get("grammar") is not None:
        found.append(_structured("grammar", body["grammar"], "grammar"))
    if body.get("json_schema") is not None:
        found.append(_structured("json", body["json_schema"], "json_schema"))
    for name, kind in _GUIDED.items():
        if body.get(name) is not None:
            found.append(_structured(kind, body[name], name))
    outputs = body.get("structured_outputs")
    if outputs is not None:
        if not isinstance(outputs, dict):
            raise _type_error("structured_outputs", "an object", outputs)
        for key, value in outputs.items():
            param = f"structured_outputs.{key}"
            if value is None:
                continue
            if key in _STRUCTURED_MEMBERS:
                constraint = _structured(key, value, param)
                if constraint is not None:
                    found.append(constraint)
            elif key in _STRUCTURED_INERT:
                if value != _STRUCTURED_INERT[key]:
                    raise _unsupported(param, "only the constraint itself is supported")
            else:
                raise invalid(f"Unrecognized request argument supplied: {quote(param)}.", param=param,
                              code="unknown_parameter")
    return found


def apply_generation_fields(body: dict, req: pb.GenerateRequest, *, chat: bool) -> None:
    """llama.cpp's and vLLM's fields onto ``req`` (after OpenAI's: conflicts are 400s)."""
    check_refused(body)
    cache_prompt = _bool(body, "cache_prompt")
    del cache_prompt  # always reused: accepted, type-checked

    n_predict = _int(body, "n_predict", -1, 2**32 - 1)
    if n_predict is not None:
        if n_predict == 0:
            raise invalid("Invalid 'n_predict': 0 generates nothing; send at least 1, or -1 for no limit.",
                          param="n_predict", code="invalid_value")
        if req.HasField("max_tokens") and (n_predict == -1 or n_predict != req.max_tokens):
            raise invalid("Invalid 'n_predict': it differs from the max_tokens also sent; send one of them.",
                          param="n_predict", code="invalid_value")
        if n_predict > 0:
            req.max_tokens = n_predict

    repeat = body.get("repeat_penalty")
    if repeat is not None:
        bounds = limits.RANGES["repetition_penalty"]
        if isinstance(repeat, bool) or not isinstance(repeat, (int, float)):
            raise _type_error("repeat_penalty", "a number", repeat)
        if repeat not in bounds:
            raise invalid(f"Invalid 'repeat_penalty': expected a value {bounds.describe()}, but got {quote(repeat)} "
                          "instead.", param="repeat_penalty", code="invalid_value")
        if req.HasField("repetition_penalty") and req.repetition_penalty != float(repeat):
            raise invalid("Invalid 'repeat_penalty': it differs from the repetition_penalty also sent; send one of "
                          "them.", param="repeat_penalty", code="invalid_value")
        req.repetition_penalty = float(repeat)
    window = _int(body, "penalty_last_n", -1, 2**31 - 1)
    if window is not None:
        req.penalty_last_n = window
    elif repeat is not None:
        req.penalty_last_n = LLAMACPP_PENALTY_LAST_N

    n_probs = _int(body, "n_probs", 0, limits.MAX_TOP_LOGPROBS)
    if n_probs:
        if req.logprobs and req.top_logprobs != n_probs:
            field = "top_logprobs" if chat else "logprobs"
            raise invalid(f"Invalid 'n_probs': it differs from the {field} also sent; send one of them.",
                          param="n_probs", code="invalid_value")
        req.logprobs = True
        req.top_logprobs = n_probs

    constraints = _constraints(body)
    if not constraints:
        return
    clash = constraints[0] if req.HasField("constraint") else (constraints[1] if len(constraints) > 1 else None)
    if clash is not None:
        raise invalid(f"Invalid '{clash.param}': only one output constraint can be sent (response_format, "
                      "grammar, json_schema, structured_outputs or a guided_* field).", param=clash.param,
                      code="invalid_value")
    if len(req.tools) and req.tool_choice.mode != pb.ToolChoice.MODE_NONE:
        raise invalid(f"Invalid '{constraints[0].param}': an output constraint with tools is not supported; use "
                      "tool_choice \"none\" or drop it.", param=constraints[0].param, code="invalid_value")
    req.constraint.CopyFrom(constraints[0])


def json_object_schema(fmt: dict) -> Optional[pb.Constraint]:
    """llama.cpp's ``response_format: {"type": "json_object", "schema": {...}}``: JSON valid
    against the schema; None when there is no schema."""
    if fmt.get("schema") is None:
        return None
    return pb.Constraint(json_schema=_schema_text(fmt["schema"], "response_format.schema"),
                         param="response_format.schema")


# --- the tables of docs/apis.md -------------------------------------------------------------

def markdown() -> str:
    out = []
    for route, table in TABLES.items():
        out.append(f"`{route}`\n\n| field | from | here |\n| --- | --- | --- |")
        out.extend(f"| `{name}` | {origin} | {what} |" for name, (origin, what) in table.items())
        out.append("")
    refused = ", ".join(f"`{name}`" for name in [*REFUSED, *sorted(_REQUESTS_OWN - set(CHAT))])
    out.append(f"Refused unless absent or neutral (a 400 naming the field): {refused}. Any other field is a 400 "
               "(`unknown_parameter`).")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
