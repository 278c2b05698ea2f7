"""`make bench-structured`: what grammar-constrained decoding costs, one run, in process.

For each engine on the default model: decode tok/s of the same chat unconstrained, with a
20-field JSON schema (response_format) and with a forced tool call (tool_choice required),
all at temperature 0 with the same prompt; constrained over unconstrained as ratios of this
run, and the time to compile each grammar (llguidance, checked before a request takes a
slot). Rate: all generated tokens over the generation's whole time, the prompt being cached.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.prompts import MODEL  # noqa: E402

SCHEMA_FIELDS = 20


def twenty_field_schema() -> dict:
    kinds = [{"type": "string", "maxLength": 12}, {"type": "integer", "minimum": 0, "maximum": 1000},
             {"type": "boolean"}, {"enum": ["red", "green", "blue"]}, {"type": "number"}]
    properties = {f"field_{i:02d}": kinds[i % len(kinds)] for i in range(SCHEMA_FIELDS)}
    return {"type": "object", "properties": properties, "required": sorted(properties),
            "additionalProperties": False}


def tools():
    from inference_service.engine.types import Tool

    return (
        Tool("get_weather", "Get the weather of a city", json.dumps(
            {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
             "required": ["city", "days"]})),
        Tool("add", "Add two numbers", json.dumps(
            {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
             "required": ["a", "b"]})),
    )


def timed(engine, request) -> tuple[float, int, str]:
    """(tok/s, tokens, finish reason) of one generation: all its tokens over its whole time.

    The prompt is cached by the warm-up run, so the time is the decode of every token; a
    tool call's tokens come out in one piece when the call completes, so per-piece timing
    would not do.
    """
    start = time.perf_counter()
    final = None
    for chunk in engine.generate(request):
        final = chunk
    elapsed = time.perf_counter() - start
    tokens = final.usage.completion_tokens
    return tokens / elapsed, tokens, final.finish_reason


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--engines", default="ctransformers,llamacpp")
    args = parser.parse_args(argv)

    from inference_service.engine.engine import Engine, EngineConfig
    from inference_service.engine.grammar import constraint_grammar
    from inference_service.engine.tool_calls import call_grammar
    from inference_service.engine.types import ChatMessage, Constraint, GenerationRequest, SamplingParams
    from inference_service.models.registry import ModelRegistry

    model_file = ModelRegistry().resolve(MODEL)
    schema = Constraint("json_schema", json.dumps(twenty_field_schema()))
    rows = []
    for engine_name in args.engines.split(","):
        engine = Engine.load([model_file], EngineConfig(slots=1, thread_policy="fixed"), engines=[engine_name])
        model = engine.model(MODEL)
        grammar_tokenizer = model.grammar.get()
        compile_ms = {}
        for label, grammar in (("schema", constraint_grammar(schema)), ("tools", call_grammar(tools()))):
            start = time.perf_counter()
            grammar_tokenizer.check(grammar, label)
            grammar_tokenizer.guide(grammar)
            compile_ms[label] = (time.perf_counter() - start) * 1000
        question = (ChatMessage("user", "Fill in a record about a weather station, and say what 2 + 3 is."),)
        variants = {
            "unconstrained": dict(ignore_eos=True),
            f"{SCHEMA_FIELDS}-field schema": dict(constraint=schema),
            "tools (required)": dict(tools=tools(), tool_choice="required"),
        }
        measured = {}
        for label, fields in variants.items():
            request = GenerationRequest(model=MODEL, messages=question, max_tokens=args.max_tokens,
                                        sampling=SamplingParams(temperature=0.0), **fields)
            timed(engine, request)  # warm-up (and the prompt cached for every variant alike)
            runs = [timed(engine, request) for _ in range(args.repeats)]
            measured[label] = (statistics.median(r[0] for r in runs), runs[0][1], runs[0][2])
        base = measured["unconstrained"][0]
        for label, (rate, tokens, finish) in measured.items():
            rows.append((engine_name, label, rate, rate / base, tokens, finish,
                         compile_ms.get("schema" if "schema" in label else "tools" if "tools" in label else "", None)))
        engine.close()

    print(f"{MODEL}; temperature 0; median of {args.repeats} after a warm-up; in process, 1 slot, fixed threads\n")
    print("| engine | output | decode tok/s | x unconstrained | tokens | finish | grammar compile ms |")
    print("|---|---|---:|---:|---:|---|---:|")
    for engine_name, label, rate, ratio, tokens, finish, compile_ms in rows:
        compiled = f"{compile_ms:.1f}" if compile_ms is not None else ""
        print(f"| {engine_name} | {label} | {rate:.1f} | {ratio:.2f} | {tokens} | {finish} | {compiled} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
