"""One object per process, made on first use: for objects that own a thread.

A thread does not survive ``fork``: a child that kept its parent's object would wait forever on
a thread that is not there. So a forked child forgets the object and makes its own on first use
(gunicorn forks its workers after importing the app; a service may be forked by its host).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

_instances: "weakref.WeakSet[PerProcess]" = weakref.WeakSet()


class PerProcess(Generic[T]):
    def __init__(self, make: Callable[[], T]):
        self._make = make
        self._lock = threading.Lock()
        self._value: T | None = None
        _instances.add(self)

    def get(self) -> T:
        with self._lock:
            if self._value is None:
                self._value = self._make()
            return self._value

    def forget(self) -> None:
        """Drops the object (what a forked child does); the next ``get`` makes a new one."""
        self._lock = threading.Lock()  # another thread of the parent may have held it at the fork
        self._value = None


def _forget_all_in_child() -> None:
    for instance in list(_instances):
        instance.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all_in_child)
