"""Settings that come from a flag, else an environment variable, else a default.

A value from the environment is checked as the flag's would be (its type, its choices): a bad
one stops the start with a message naming the variable, never silently means the default or
another choice (``INFERENCE_PREFIX_REUSE=exatc``). Plain ``os`` and ``argparse``: the edge's
gunicorn configuration uses it too, in the arbiter.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Optional, Sequence

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class SettingError(ValueError):
    """A setting from the environment that its flag would refuse; the message names it."""


def _alternatives(choices: Sequence[str]) -> str:
    choices = [str(c) for c in choices]
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def _kind(convert: Callable) -> str:
    return {int: "an integer", float: "a number"}.get(convert, "valid")


def from_environment(name: str, default: Any = None, convert: Callable[[str], Any] = str,
                     choices: Optional[Sequence] = None) -> Any:
    """``name``'s value converted (an unset or blank variable gives ``default``); raises
    :class:`SettingError` naming the variable when it does not convert or is not a choice."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = convert(raw)
    except (TypeError, ValueError):
        raise SettingError(f"{name} must be {_kind(convert)}, not {raw!r}") from None
    if choices is not None and value not in choices:
        raise SettingError(f"{name} must be {_alternatives(choices)}, not {raw!r}")
    return value


_FROM_ENVIRONMENT = object()  # the default of a flag not given: its variable decides


def add_setting(parser: argparse.ArgumentParser, flag: str, *, env: str, default: Any, help: str = "",
                shown_default: Optional[str] = None, least: Optional[float] = None, most: Optional[float] = None,
                **kwargs) -> argparse.Action:
    """``parser.add_argument(flag, ...)`` whose value, when the flag is not given, comes from
    ``env`` (checked by :func:`resolve`), else ``default``; the help says both
    (``shown_default``: how to say a default that depends on the machine). A numeric setting
    may have bounds (``least``, ``most``), which :func:`resolve` checks whatever the source."""
    shown = shown_default or ("none" if default is None else default)
    action = parser.add_argument(flag, default=_FROM_ENVIRONMENT, help=f"{help} (env {env}, default {shown})".lstrip(),
                                 **kwargs)
    action.env, action.fallback, action.least, action.most = env, default, least, most
    return action


def resolve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Fills in every setting of ``parser`` not given as a flag from its variable or default;
    a bad variable, or a value outside a setting's bounds, is ``parser.error`` naming it (exit
    status 2, as a bad flag)."""
    for action in parser._actions:
        if getattr(args, action.dest, None) is _FROM_ENVIRONMENT:
            try:
                value = from_environment(action.env, action.fallback, action.type or str, action.choices)
            except SettingError as error:
                parser.error(str(error))
            setattr(args, action.dest, value)
        least, most = getattr(action, "least", None), getattr(action, "most", None)
        value = getattr(args, action.dest, None)
        if value is not None and ((least is not None and value < least) or (most is not None and value > most)):
            bounds = f"at least {least}" if most is None else f"{least} to {most}"
            parser.error(f"{action.option_strings[0]} (env {action.env}) must be {bounds}, not {value:g}")
    return args

