"""``python -m rest_edge --target HOST:PORT --bind HOST:PORT``: the edge on gunicorn.

Settings come from ``rest_edge.gunicorn_conf``; flags override them. The app is built in each
worker after the fork (``create_app`` in ``load``), so the gRPC channel never crosses a fork.
"""

from __future__ import annotations

import argparse
import importlib
import os
from typing import Any, Optional

from gunicorn.app.base import BaseApplication

from inference_service.settings import LOG_LEVELS
from rest_edge.app import (
    resolve_chat_stream,
    resolve_first_token_timeout,
    resolve_max_body_bytes,
    resolve_request_timeout,
    resolve_routing,
    resolve_target,
)


class EdgeApplication(BaseApplication):
    def __init__(self, options: dict[str, Any], app_kwargs: dict[str, Any]):
        self._options = options
        self._app_kwargs = app_kwargs
        super().__init__()

    def load_config(self) -> None:
        conf = vars(importlib.import_module("rest_edge.gunicorn_conf"))
        for key, value in conf.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)
        for key, value in self._options.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self):
        from rest_edge.app import create_app

        return create_app(**self._app_kwargs)


# Read from the environment only (by rest_edge.app and rest_edge.gunicorn_conf): name, default, what.
ENVIRONMENT_ONLY = (
    ("EDGE_ROUTING", "prefix-affinity", "how calls are spread over replicas: prefix-affinity, least-loaded or "
                                        "round-robin"),
    ("EDGE_API_KEYS", "none", "comma-separated keys; when set, /v1/* needs `Authorization: Bearer KEY`"),
    ("EDGE_CORS_ORIGINS", "none (loopback origins only)", "origins besides loopback ones whose pages may call the "
                                                          "edge from a browser: comma-separated, `*` matches any "
                                                          "characters"),
    ("EDGE_WORKER_TIMEOUT", "30", "seconds: gunicorn's hung-worker detector, not a request limit (a gthread worker "
                                  "heartbeats while its threads stream)"),
    ("EDGE_CHAT_STREAM", "reference", "reference (the chunks of the server this replaces) or openai (role only in the "
                                      "first chunk, content null beside tool calls: for SDK stream helpers)"),
    ("EDGE_CONTROL_SOCKET", "none", "gunicorn's control socket path (off unless set)"),
    ("PROMETHEUS_MULTIPROC_DIR", "a private temporary directory", "where the workers share /metrics values; its "
                                                                   "*.db files are deleted at start"),
)


def build_parser() -> argparse.ArgumentParser:
    """The edge's command line (docs/settings.md is generated from it)."""
    epilog = "environment only: " + "; ".join(f"{name} (default {default}): {what}"
                                               for name, default, what in ENVIRONMENT_ONLY)
    parser = argparse.ArgumentParser(prog="python -m rest_edge", description="OpenAI-compatible REST edge.",
                                     epilog=epilog)
    parser.add_argument("--target", default=None,
                        help="the inference service: HOST:PORT, a comma-separated list of replicas, or "
                             "dns:///NAME:PORT (every address it resolves to) (env INFERENCE_TARGET, default "
                             "127.0.0.1:50051)")
    parser.add_argument("--bind", default=None, help="address to listen on (env EDGE_BIND, default 127.0.0.1:8000)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (env EDGE_WORKERS, default 2)")
    parser.add_argument("--threads", type=int, default=None, help="threads per worker: its concurrent streams (env EDGE_THREADS, default 8)")
    parser.add_argument("--request-timeout", type=float, default=None,
                        help="deadline of a generation in seconds (env EDGE_REQUEST_TIMEOUT, default 600)")
    parser.add_argument("--first-token-timeout", type=float, default=None,
                        help="seconds a generation waits for its replica's first answer before it moves to another "
                             "replica (env EDGE_FIRST_TOKEN_TIMEOUT, default 0: no limit)")
    parser.add_argument("--max-body-bytes", type=int, default=None,
                        help="largest request body (env EDGE_MAX_BODY_BYTES, default 1 MiB)")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default=None,
                        help="gunicorn log level (env EDGE_LOG_LEVEL, default info)")
    parser.add_argument("--log-format", choices=("text", "json"), default=None,
                        help="text (gunicorn's) or json: one JSON object per line for the error, app and access "
                             "logs (env EDGE_LOG_FORMAT, default text)")
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = {"EDGE_BIND": args.bind, "EDGE_WORKERS": args.workers, "EDGE_THREADS": args.threads,
             "EDGE_LOG_LEVEL": args.log_level, "EDGE_LOG_FORMAT": args.log_format}
    for name, value in flags.items():
        if value is not None:  # a flag wins over its variable, here and in rest_edge.gunicorn_conf
            os.environ[name] = str(value)
    try:  # every other setting from the environment, checked before gunicorn starts
        importlib.import_module("rest_edge.gunicorn_conf")
        resolve_routing()
        resolve_max_body_bytes(args.max_body_bytes)
        resolve_request_timeout(args.request_timeout)
        resolve_first_token_timeout(args.first_token_timeout)
        resolve_chat_stream()
    except ValueError as error:
        parser.error(str(error))

    target = resolve_target(args.target)
    os.environ["INFERENCE_TARGET"] = target  # workers (and reloads) see the same target
    options: dict[str, Any] = {
        "bind": args.bind,
        "workers": args.workers,
        "threads": args.threads,
        "loglevel": args.log_level,
    }
    if args.log_format is not None:  # the flag wins over an EDGE_LOG_FORMAT set before
        options["logger_class"] = ("rest_edge.gunicorn_logging.JsonLogger" if args.log_format == "json"
                                   else "gunicorn.glogging.Logger")
    app_kwargs = {
        "target": target,
        "max_body_bytes": args.max_body_bytes,
        "request_timeout": args.request_timeout,
        "first_token_timeout": args.first_token_timeout,
    }
    EdgeApplication(options, app_kwargs).run()


if __name__ == "__main__":
    main()
