"""Typed readers of JSON request fields, shared by every API adapter of the edge.

Pure functions, no I/O. Each reader takes the JSON path of the field it reads (``param``,
e.g. ``messages[0].content[1].text``) and raises :class:`RequestError` (400, naming that
path in ``param``) when the value has the wrong JSON type, is out of its range, or is text
the service cannot take (too long, lone surrogates). ``null`` counts as absent. An adapter
whose API has another error shape renders the same ``RequestError`` its own way.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Iterator, Optional

from inference_service import limits
from inference_service.limits import RANGES, quote

from rest_edge.errors import RequestError, invalid

# Bounds of the proto's integer types (the service's own limits are in inference_service.limits).
UINT32_MAX = 2**32 - 1
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# A tool's ``parameters`` when the client sends none: a function without arguments.
NO_PARAMETERS = '{"type":"object","properties":{}}'


# --- body ---------------------------------------------------------------------------------

def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(data: bytes) -> dict:
    """A request body as a JSON object, or a 400."""
    if not data or not data.strip():
        raise invalid("The request body is empty; expected a JSON object.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("The request body is not valid UTF-8.") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise invalid(f"The request body is not valid JSON: {_short(exc)}") from None
    if not isinstance(body, dict):
        raise invalid(f"The request body must be a JSON object, not {json_type(body)}.")
    return body


def _short(exc: Exception) -> str:
    msg = str(exc) or type(exc).__name__
    return msg if len(msg) <= 200 else msg[:200] + "…"


# --- typed field readers ------------------------------------------------------------------

# JSON's name of each Python type json.loads makes (bool before int: a bool is an int).
_JSON_TYPES = ((type(None), "null"), (bool, "a boolean"), (int, "an integer"), (float, "a number"),
               (str, "a string"), (list, "an array"), (dict, "an object"))


def json_type(value: Any) -> str:
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), type(value).__name__)


def type_error(param: str, expected: str, value: Any) -> RequestError:
    return invalid(
        f"Invalid type for '{param}': expected {expected}, but got {json_type(value)} instead.",
        param=param,
        code="invalid_type",
    )


def objects_in(items: Iterable[Any], param: str, expected: str = "an object") -> Iterator[tuple[str, dict]]:
    """The items of the array at ``param``, each with its own path (``param[i]``); an item that
    is not an object is refused as not ``expected``."""
    for i, item in enumerate(items):
        item_param = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise type_error(item_param, expected, item)
        yield item_param, item


def joined_text(value: Any, param: str, part_text: Callable[[dict, str], str], *,
                expected: str = "a string or an array of content parts", part: str = "a content part object") -> str:
    """A string, or the texts of an array of parts (``part_text(part, its path)``) joined as
    they are, as text-generation-inference does."""
    if isinstance(value, str):
        return checked_text(value, param)
    if not isinstance(value, list):
        raise type_error(param, expected, value)
    return "".join(part_text(item, item_param) for item_param, item in objects_in(value, param, part))


def range_error(param: str, constraint: str, value: Any) -> RequestError:
    return invalid(
        f"Invalid '{param}': expected a value {constraint}, but got {quote(value)} instead.",
        param=param,
        code="invalid_value",
    )


def checked_text(value: str, param: str, max_chars: Optional[int] = None) -> str:
    """A string the client sent, checked before it goes anywhere: valid Unicode, not too long.

    ``param`` is the JSON path of the string (``messages[0].content[1].text``).
    """
    if max_chars is not None and len(value) > max_chars:
        raise invalid(limits.too_long_message(param, value, max_chars), param=param, code="string_above_max_length")
    index = limits.lone_surrogate(value)
    if index is not None:
        raise invalid(limits.surrogate_message(param, value, index), param=param, code="invalid_value")
    return value


def opt_bool(body: dict, name: str) -> Optional[bool]:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise type_error(name, "a boolean", value)
    return value


def opt_int(body: dict, name: str, lo: int, hi: int, param: Optional[str] = None) -> Optional[int]:
    param = param or name
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 256.0 is an integer in JSON's eyes
    if isinstance(value, bool) or not isinstance(value, int):
        raise type_error(param, "an integer", value)
    if value < lo:
        raise range_error(param, f">= {lo}", value)
    if value > hi:
        raise range_error(param, f"<= {hi}", value)
    return value


def opt_number(body: dict, name: str) -> Optional[float]:
    """A number field of the shared table (``limits.RANGES``), in its range."""
    bounds = RANGES[name]
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise type_error(name, "a number", value)
    if value not in bounds:
        raise range_error(name, bounds.describe(), value)
    return float(value)


def missing(param: str) -> RequestError:
    return invalid(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def opt_str_at(obj: dict, key: str, param: str, max_chars: Optional[int] = None) -> Optional[str]:
    """``obj[key]``, a string at JSON path ``param``, or None when absent."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise type_error(param, "a string", value)
    return checked_text(value, param, max_chars)


def text_at(obj: dict, key: str, param: str) -> str:
    """The string at ``key`` of the object at ``param`` (required), checked as text."""
    text = obj.get(key)
    if not isinstance(text, str):
        raise type_error(f"{param}.{key}", "a string", text)
    return checked_text(text, f"{param}.{key}")


def opt_bool_at(obj: dict, key: str, param: str) -> Optional[bool]:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise type_error(param, "a boolean", value)
    return value


def object_at(obj: dict, key: str, param: str) -> dict:
    """``obj[key]``, a required object at JSON path ``param``."""
    value = obj.get(key)
    if value is None:
        raise missing(param)
    if not isinstance(value, dict):
        raise type_error(param, "an object", value)
    return value


def required_str(body: dict, name: str, max_chars: Optional[int] = None) -> str:
    value = body.get(name)
    if value is None:
        raise invalid(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    if not isinstance(value, str):
        raise type_error(name, "a string", value)
    if not value:
        raise invalid(f"Invalid '{name}': must not be empty.", param=name, code="invalid_value")
    return checked_text(value, name, max_chars)


# --- unsupported fields -------------------------------------------------------------------

def unsupported(param: str, message: str) -> RequestError:
    return invalid(message, param=param, code="unsupported_parameter")


def call_id(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise type_error(param, "a string", value)
    if not value:
        raise invalid(f"Invalid '{param}': must not be empty.", param=param, code="invalid_value")
    return checked_text(value, param, limits.MAX_TOOL_CALL_ID_CHARS)


def function_name(value: Any, param: str) -> str:
    """A function's (or a schema's) name: OpenAI's rule, 1 to 64 of ``[a-zA-Z0-9_-]``."""
    if value is None:
        raise missing(param)
    if not isinstance(value, str):
        raise type_error(param, "a string", value)
    if not value:
        raise invalid(f"Invalid '{param}': empty string. Expected a string with minimum length 1, but got an "
                      "empty string instead.", param=param, code="empty_string")
    checked_text(value, param, limits.MAX_FUNCTION_NAME_CHARS)
    if not limits.FUNCTION_NAME.fullmatch(value):
        raise invalid(f"Invalid '{param}': string does not match pattern. Expected a string that matches the "
                      f"pattern '{limits.FUNCTION_NAME_PATTERN}', got {quote(value)}.", param=param,
                      code="invalid_value")
    return value


def schema_text(value: Any, param: str) -> str:
    """A JSON schema (an object) as compact JSON text, keys in the client's order."""
    if not isinstance(value, dict):
        raise type_error(param, "an object (a JSON schema)", value)
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, RecursionError):
        raise invalid(f"Invalid '{param}': the schema cannot be written as JSON.", param=param,
                      code="invalid_value") from None
    if len(text) > limits.MAX_SCHEMA_CHARS:
        raise invalid(f"Invalid '{param}': the schema is {len(text)} characters long as JSON; at most "
                      f"{limits.MAX_SCHEMA_CHARS} are accepted.", param=param, code="string_above_max_length")
    return checked_text(text, param)



def arguments_text(value: Any, param: str) -> str:
    """A tool call's arguments sent back as history: JSON text of an object."""
    if not isinstance(value, str):
        raise type_error(param, "a string (the arguments as JSON text)", value)
    checked_text(value, param, limits.MAX_TOOL_ARGUMENTS_CHARS)
    problem = limits.json_object_problem(value)
    if problem is not None:
        raise invalid(f"Invalid '{param}': the arguments {problem}.", param=param, code="invalid_value")
    return value


def object_json(value: Any, param: str) -> str:
    """A JSON object the client sent as a value (Anthropic's ``tool_use.input``) as compact JSON
    text, for a call's ``arguments_json``."""
    if not isinstance(value, dict):
        raise type_error(param, "an object", value)
    try:
        dumped = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, RecursionError):
        raise invalid(f"Invalid '{param}': the value cannot be written as JSON.", param=param,
                      code="invalid_value") from None
    return checked_text(dumped, param, limits.MAX_TOOL_ARGUMENTS_CHARS)


def opt_str_list(obj: dict, key: str, param: str, max_items: int, max_chars: Optional[int] = None) -> list[str]:
    """``obj[key]``: an array of at most ``max_items`` strings (absent: empty)."""
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise type_error(param, "an array of strings", value)
    if len(value) > max_items:
        raise invalid(f"Invalid '{param}': expected an array of at most {max_items} strings, but got {len(value)}.",
                      param=param, code="invalid_value")
    for k, item in enumerate(value):
        if not isinstance(item, str):
            raise type_error(f"{param}[{k}]", "a string", item)
        checked_text(item, f"{param}[{k}]", max_chars)
    return list(value)
