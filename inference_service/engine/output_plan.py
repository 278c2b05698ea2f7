"""What shapes a request's output besides sampling: a grammar from the first token (a
``response_format`` constraint, or a forced tool call), or tool calls the model may start
on its own (``auto``). Worked out and checked before the request takes a slot, so a schema
llguidance cannot compile is a 400 naming the field, never an unconstrained answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from inference_service.engine.grammar import GrammarTokenizer, constraint_grammar
from inference_service.engine.tool_calls import call_grammar, check_tools
from inference_service.engine.types import GenerationRequest, Tool
from inference_service.errors import InvalidRequest

ToolMode = Literal["none", "forced", "auto"]


@dataclass(frozen=True)
class OutputPlan:
    grammar: Optional[str] = None  # constrains every token from the first
    tool_mode: ToolMode = "none"
    tools: tuple[Tool, ...] = ()
    # auto: the grammar of what follows the call marker once the model writes it
    grammar_after_marker: Optional[str] = None

    @property
    def renders_tools(self) -> bool:
        return self.tool_mode != "none"


NO_PLAN = OutputPlan()


def plan_output(request: GenerationRequest, grammar_tokenizer) -> OutputPlan:
    """``grammar_tokenizer``: a callable returning the model's GrammarTokenizer (built lazily)."""
    tools_active = bool(request.tools) and request.tool_choice != "none"
    if request.constraint is None and not tools_active:
        if request.tools or request.tool_choice != "auto":
            check_tools(request.tools, request.tool_choice, request.tool_choice_name)
        return NO_PLAN
    if request.constraint is not None and tools_active:
        raise InvalidRequest(
            "response_format with tools is not supported: use tool_choice \"none\" or drop response_format",
            "response_format")
    if not request.messages and tools_active:
        raise InvalidRequest("tools need a chat (messages)", "tools")
    tokenizer: GrammarTokenizer = grammar_tokenizer()
    if request.constraint is not None:
        grammar = constraint_grammar(request.constraint)
        tokenizer.check(grammar, request.constraint.param)
        return OutputPlan(grammar=grammar)

    check_tools(request.tools, request.tool_choice, request.tool_choice_name)
    for i, tool in enumerate(request.tools):
        tokenizer.check(call_grammar((tool,), parallel=False), f"tools[{i}].function.parameters")
    only = request.tool_choice_name if request.tool_choice == "function" else ""
    parallel = request.parallel_tool_calls and not only
    if request.tool_choice in ("required", "function"):
        return OutputPlan(grammar=call_grammar(request.tools, only=only, parallel=parallel),
                          tool_mode="forced", tools=request.tools)
    return OutputPlan(tool_mode="auto", tools=request.tools,
                      grammar_after_marker=call_grammar(request.tools, parallel=parallel, opened=True))
