"""The process's one llama.cpp compute thread (``compute_thread.ComputeThread``), with fake work."""

from __future__ import annotations

import threading

import pytest

from inference_service.engine.compute_thread import ComputeThread

TIMEOUT = 10


class CountingStepper:
    """Work of ``steps`` steps; records each step's thread and the order of all steps."""

    def __init__(self, name: str, steps: int, log: list, fail_on: int | None = None):
        self.name, self.left, self.log, self.fail_on = name, steps, log, fail_on
        self.threads: set[int] = set()
        self.errors: list[BaseException | None] = []
        self.done = threading.Event()

    def has_work(self) -> bool:
        return self.left > 0

    def plan_step(self):
        return self.left

    def run_step(self, plan):
        self.threads.add(threading.get_ident())
        self.log.append(self.name)
        if plan == self.fail_on:
            raise ValueError(f"step {plan} failed")

    def finish_step(self, plan, error):
        self.errors.append(error)
        self.left -= 1
        if self.left == 0:
            self.done.set()


@pytest.fixture
def compute():
    return ComputeThread(name="test-compute")


def test_call_runs_on_the_compute_thread_and_returns_or_raises(compute):
    where = compute.call(threading.get_ident)
    assert where != threading.get_ident()
    assert compute.call(threading.get_ident) == where
    with pytest.raises(KeyError):
        compute.call(lambda: {}["missing"])
    assert compute.call(lambda: 41 + 1) == 42  # still serving after a failed job


def test_a_call_from_the_compute_thread_runs_inline(compute):
    assert compute.call(lambda: compute.call(lambda: compute.on_it()))


def test_steppers_take_turns_on_one_thread(compute):
    log: list[str] = []
    a, b = CountingStepper("a", 4, log), CountingStepper("b", 4, log)
    with compute.condition:  # both registered before either steps
        compute.register(a)
        compute.register(b)
    assert a.done.wait(TIMEOUT) and b.done.wait(TIMEOUT)
    assert log == ["a", "b"] * 4
    assert a.threads == b.threads and len(a.threads) == 1


def test_jobs_interleave_with_steps(compute):
    log: list[str] = []
    stepper = CountingStepper("step", 3, log)
    results = []
    running, release = threading.Event(), threading.Event()

    def hold():
        running.set()
        release.wait(TIMEOUT)

    blocker = threading.Thread(target=compute.call, args=(hold,))
    blocker.start()  # holds the compute thread while the work below queues up
    assert running.wait(TIMEOUT)
    callers = [threading.Thread(target=lambda i=i: results.append(compute.call(lambda: log.append("job") or i)))
               for i in range(3)]
    for caller in callers:
        caller.start()
    while True:
        with compute.condition:
            if len(compute._jobs) == 3:
                compute.register(stepper)
                break
        running.wait(0.001)
    release.set()
    for caller in callers + [blocker]:
        caller.join(TIMEOUT)
    assert stepper.done.wait(TIMEOUT)
    assert sorted(results) == [0, 1, 2]
    # The blocker was a job, so a step comes first, then jobs and steps alternate.
    assert log == ["step", "job"] * 3


def test_a_failing_step_reaches_its_stepper_and_the_thread_serves_on(compute):
    stepper = CountingStepper("s", 3, [], fail_on=2)
    compute.register(stepper)
    assert stepper.done.wait(TIMEOUT)
    assert [type(e).__name__ if e else None for e in stepper.errors] == [None, "ValueError", None]
    assert compute.call(lambda: "alive") == "alive"


def test_an_unregistered_stepper_gets_no_more_steps(compute):
    stepper = CountingStepper("s", 5, [])
    with compute.condition:
        compute.register(stepper)
        compute.unregister(stepper)
    compute.call(lambda: None)  # a full turn of the loop
    assert stepper.errors == []
