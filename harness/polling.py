"""One way to wait for something another thread or process makes happen: poll it, bounded.

The bound is a safety net against a hang on a busy shared machine, never a measured limit: a
test states *what* must happen, and only a run that never sees it fails.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")


class NeverHappened(AssertionError):
    """What was awaited did not happen within the bound (or could no longer happen)."""


def eventually(sample: Callable[[], T], what: str, *, until: Callable[[T], object] = bool, timeout: float = 30.0,
               interval: float = 0.01, give_up: Callable[[], Optional[str]] = lambda: None) -> T:
    """Calls ``sample()`` until ``until(value)`` holds and returns that value.

    Raises :class:`NeverHappened` naming ``what`` (and the last value) after ``timeout``
    seconds, or at once when ``give_up()`` returns a reason (a process that exited).
    """
    deadline = time.monotonic() + timeout
    while True:
        reason = give_up()
        if reason:
            raise NeverHappened(f"{what}: {reason}")
        value = sample()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise NeverHappened(f"never happened within {timeout:g} s: {what}; last: {value!r:.2000}")
        time.sleep(interval)
