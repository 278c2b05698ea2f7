"""ChatTemplate: the default model's own template, rendered exactly, in a sandbox."""

from __future__ import annotations

import pytest

from inference_service.engine.chat_template import ChatTemplate
from inference_service.engine.types import ChatMessage
from inference_service.errors import InvalidRequest

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Tests taking the ``template`` fixture read the default model's GGUF.
uses_model_file = pytest.mark.model


@uses_model_file
def test_default_system_prompt_is_added_when_there_is_none(template):
    rendered = template.render([ChatMessage("user", "Hi")])
    assert rendered == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@uses_model_file
def test_explicit_system_message_replaces_the_default(template):
    messages = [
        ChatMessage("system", "You are a helpful assistant."),
        ChatMessage("user", "What is the capital of France?"),
        ChatMessage("assistant", "Paris."),
        ChatMessage("user", "And of Italy?"),
    ]
    assert template.render(messages) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n"
        "<|im_start|>user\nAnd of Italy?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


@uses_model_file
def test_without_generation_prompt(template):
    rendered = template.render([ChatMessage("system", "S"), ChatMessage("user", "U")], add_generation_prompt=False)
    assert rendered == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"


@uses_model_file
def test_content_is_not_html_escaped_or_trimmed(template):
    content = "  <b>a & b</b> \"q\" {{ not_a_var }}\n"
    rendered = template.render([ChatMessage("system", "S"), ChatMessage("user", content)], add_generation_prompt=False)
    assert rendered == f"<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n"


@pytest.mark.parametrize("role", ["function", "developer", "", "User"])
@uses_model_file
def test_unknown_role_is_an_invalid_request_naming_the_message(template, role):
    with pytest.raises(InvalidRequest) as info:
        template.render([ChatMessage("user", "hi"), ChatMessage(role, "x")])
    assert info.value.param == "messages[1].role"
    assert repr(role) in str(info.value)


def test_raise_exception_in_a_template_is_an_invalid_request():
    template = ChatTemplate("{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok")
    assert template.render([ChatMessage("user", "x")]) == "ok"
    with pytest.raises(InvalidRequest) as info:
        template.render([ChatMessage("system", "x")])
    assert info.value.param == "messages"
    assert "first must be user" in str(info.value)


def test_bos_and_eos_variables():
    template = ChatTemplate("{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}", "<s>", "</s>")
    assert template.render([ChatMessage("user", "x")], add_generation_prompt=False) == "<s>x</s>"


def test_trim_and_lstrip_blocks_like_hugging_face():
    source = "{% for m in messages %}\n  {% if true %}\n[{{ m['content'] }}]\n  {% endif %}\n{% endfor %}"
    template = ChatTemplate(source)
    assert template.render([ChatMessage("user", "a"), ChatMessage("user", "b")]) == "[a]\n[b]\n"


# --- sandbox ------------------------------------------------------------------------

ESCAPES = [
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ raise_exception.__globals__['__builtins__'] }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_refuses_attribute_escapes(source):
    with pytest.raises(InvalidRequest) as info:
        ChatTemplate(source).render([ChatMessage("user", "x")])
    assert info.value.param == "messages"


def test_sandbox_hides_dunder_attributes():
    # A bare unsafe attribute renders as nothing rather than leaking the object.
    rendered = ChatTemplate("[{{ messages.__class__ }}]").render([ChatMessage("user", "x")])
    assert rendered == "[]"


def test_sandbox_is_immutable():
    with pytest.raises(InvalidRequest):
        ChatTemplate("{{ messages.append({'role': 'system', 'content': 'x'}) }}").render([ChatMessage("user", "x")])
