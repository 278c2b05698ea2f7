"""Writes docs/settings.md: every flag and environment variable of the service and the edge,
generated from their argument parsers (``make docs-settings``; tests/test_docs.py fails when
the committed file differs).

    python tools/settings_table.py > docs/settings.md
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference_service.__main__ import ENVIRONMENT_ONLY as SERVICE_ENVIRONMENT_ONLY  # noqa: E402
from inference_service.__main__ import build_parser as service_parser  # noqa: E402
from rest_edge.__main__ import ENVIRONMENT_ONLY  # noqa: E402
from rest_edge.__main__ import build_parser as edge_parser  # noqa: E402

ENV_AND_DEFAULT = re.compile(r"\s*\(env (\S+), default (.+)\)$", re.S)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def rows(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        text = action.help or ""
        env, default = "", action.default
        found = ENV_AND_DEFAULT.search(text)
        if found:
            text, env, default = text[:found.start()], f"`{found.group(1)}`", found.group(2)
        choices = f" ({', '.join(f'`{c}`' for c in action.choices)})" if action.choices else ""
        shown = "" if default is None else f"`{default}`"
        out.append(f"| `{action.option_strings[0]}` | {env} | {shown} | {_cell(text)}{choices} |")
    return out


def environment_only(settings) -> list[str]:
    return [f"| | `{name}` | {_cell(default)} | {_cell(what)} |" for name, default, what in settings]


def document() -> str:
    _, serve = service_parser()
    edge = edge_parser()
    head = "| flag | environment | default | what |\n| --- | --- | --- | --- |"
    return "\n".join([
        "# Settings",
        "",
        "Generated from the argument parsers by `make docs-settings` (tools/settings_table.py); a test",
        "fails when this file differs from them. A flag wins over its environment variable; a variable's",
        "value is checked as the flag's would be, and a bad one stops the start with an error naming it.",
        "",
        "## Inference service: `python -m inference_service serve`",
        "",
        head, *rows(serve), *environment_only(SERVICE_ENVIRONMENT_ONLY),
        "",
        "## REST edge: `python -m rest_edge` (or `gunicorn -c python:rest_edge.gunicorn_conf`, environment only)",
        "",
        head, *rows(edge), *environment_only(ENVIRONMENT_ONLY),
        "",
    ])


if __name__ == "__main__":
    sys.stdout.write(document())
