"""Chat templates: the model's own Jinja template, rendered in a sandbox."""

from __future__ import annotations

from functools import cached_property
from typing import Sequence

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inference_service.engine.types import ChatMessage
from inference_service.errors import InvalidRequest
from inference_service.limits import ELLIPSIS, ROLES, quote

_MAX_REASON_CHARS = 200  # of a template's own error message, quoted in ours


# Templates for architectures whose GGUF files often come without one (base models, older
# conversions), as Ollama's model files and llama.cpp's built-in templates supply them.
# Gemma has no system role: a system message opens the first user turn.
_GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{{ (prefix if loop.first else '') + message['content'] }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
FALLBACK_TEMPLATES = {"gemma": _GEMMA_TEMPLATE, "gemma2": _GEMMA_TEMPLATE, "gemma3": _GEMMA_TEMPLATE}


def _message(message: ChatMessage) -> dict:
    """A message as templates read it (a tool result carries its call's id)."""
    out = {"role": message.role, "content": message.content}
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    return out


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    """Renders a list of messages the way the model was trained to read them.

    Same conventions as Hugging Face's ``apply_chat_template``: ``trim_blocks`` and
    ``lstrip_blocks``, a ``raise_exception`` helper, ``bos_token``/``eos_token``
    variables, and ``add_generation_prompt`` to open the assistant's turn.
    """

    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        self.source = source
        self._bos_token = bos_token
        self._eos_token = eos_token

    @cached_property
    def _template(self):
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        return env.from_string(self.source)

    @property
    def renders_tools(self) -> bool:
        """Whether the template itself writes a ``tools`` list (Qwen, Llama 3, Hermes...)."""
        return "tools" in self.source

    def render(self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True,
               tools: list[dict] | None = None, thinking: bool | None = None) -> str:
        for i, message in enumerate(messages):
            if message.role not in ROLES:
                raise InvalidRequest(
                    f"messages[{i}].role must be one of {', '.join(ROLES)}, not {quote(message.role)}",
                    param=f"messages[{i}].role",
                )
        try:
            return self._template.render(
                messages=[_message(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
                tools=tools,
                # Qwen3's switch (other thinking templates read the same name, or ignore it).
                **({} if thinking is None else {"enable_thinking": thinking}),
            )
        except TemplateError as exc:  # the template itself refused these messages
            # The template's own words, cut short: a template may quote the messages back.
            reason = str(exc)
            if len(reason) > _MAX_REASON_CHARS:
                reason = reason[:_MAX_REASON_CHARS] + ELLIPSIS
            raise InvalidRequest(f"the model's chat template rejected the messages: {reason}", "messages") from exc
