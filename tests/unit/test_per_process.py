"""``PerProcess``: one object per process, and a forked child makes its own (threads do not
survive a fork: a child using its parent's compute thread or disconnect watcher would hang)."""

from __future__ import annotations

import os
import signal

import pytest

from inference_service.engine import compute_thread
from inference_service.per_process import PerProcess
from rest_edge import disconnect

HANG_SECONDS = 20


def test_the_object_is_made_once_then_again_after_forget():
    made = []
    one = PerProcess(lambda: made.append(object()) or made[-1])
    first = one.get()
    assert one.get() is first and len(made) == 1
    one.forget()
    assert one.get() is not first and len(made) == 2


def in_forked_child(check) -> int:
    """Runs ``check()`` in a forked child; its exit status (0: true, 1: false, 2: raised, 3: hung)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
        signal.alarm(HANG_SECONDS)
        try:
            os._exit(0 if check() else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_working_compute_thread_of_its_own():
    parent = compute_thread.shared()
    assert parent.call(lambda: "parent") == "parent"  # the parent's thread runs
    assert in_forked_child(lambda: compute_thread.shared() is not parent
                           and compute_thread.shared().call(lambda: "child") == "child") == 0
    assert compute_thread.shared() is parent


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_disconnect_watcher_of_its_own():
    parent = disconnect.default_watcher()
    assert in_forked_child(lambda: disconnect.default_watcher() is not parent) == 0
    assert disconnect.default_watcher() is parent
