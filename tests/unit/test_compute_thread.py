"""The process's one llama.cpp compute thread (``compute_thread.ComputeThread``), with fake work."""

from __future__ import annotations

import threading

import pytest

from inference_service.engine.compute_thread import ComputeThread

TIMEOUT = 10


class CountingStepper:
    """Work of ``steps`` steps; records each step's thread and the order of all steps."""

    def __init__(self, name: str, steps: int, log: list, fail_on: int | None = None, clock=None, seconds=0.0):
        self.name, self.left, self.log, self.fail_on = name, steps, log, fail_on
        self.clock, self.seconds = clock, seconds
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
        if self.clock is not None:
            self.clock.now += self.seconds
        if plan == self.fail_on:
            raise ValueError(f"step {plan} failed")

    def finish_step(self, plan, error):
        self.errors.append(error)
        self.left -= 1
        if self.left == 0:
            self.done.set()


class FakeClock:
    """Compute time as the fake work says it passed."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


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


STEP_SECONDS, JOB_SECONDS = 1 / 64, 3 / 64  # exact in binary, so credit sums are too


@pytest.mark.parametrize("share, steps_between_jobs", [(0.2, 12), (0.5, 3)])
def test_jobs_get_their_share_of_compute_time_while_steps_are_wanted(share, steps_between_jobs):
    # A job takes 3 times a step: with a fifth of the time for jobs, 12 steps come between jobs.
    clock = FakeClock()
    compute = ComputeThread(name="test-compute", job_share=share, clock=clock)
    log: list[str] = []
    stepper = CountingStepper("step", 2 * steps_between_jobs + 2, log, clock=clock, seconds=STEP_SECONDS)
    results = []
    running, release = threading.Event(), threading.Event()

    def hold():
        running.set()
        release.wait(TIMEOUT)

    blocker = threading.Thread(target=compute.call, args=(hold,))
    blocker.start()  # holds the compute thread (no compute time) while the work below queues up
    assert running.wait(TIMEOUT)

    def job(i):
        log.append("job")
        clock.now += JOB_SECONDS
        return i

    callers = [threading.Thread(target=lambda i=i: results.append(compute.call(lambda: job(i)))) for i in range(3)]
    for caller in callers:
        caller.start()
        while True:  # one at a time, in order
            with compute.condition:
                if len(compute._jobs) == callers.index(caller) + 1:
                    break
            running.wait(0.001)
    compute.register(stepper)
    release.set()
    for caller in [*callers, blocker]:
        caller.join(TIMEOUT)
    assert stepper.done.wait(TIMEOUT)
    assert sorted(results) == [0, 1, 2]
    between = ["step"] * steps_between_jobs
    assert log == ["job", *between, "job", *between, "job", "step", "step"]


@pytest.mark.parametrize("share", [0, 1, -0.5, 2])
def test_a_share_outside_0_to_1_is_refused(compute, share):
    with pytest.raises(ValueError, match="between 0 and 1"):
        compute.set_job_share(share)
    assert compute.job_share == 0.25


def test_jobs_alone_take_the_whole_thread(compute):
    assert [compute.call(lambda i=i: i) for i in range(5)] == list(range(5))


def test_a_job_waits_no_longer_than_a_moment_for_a_step_that_does_not_come():
    clock = FakeClock()
    compute = ComputeThread(name="test-compute", clock=clock)
    stepper = CountingStepper("step", 1, [], clock=clock, seconds=STEP_SECONDS)
    compute.register(stepper)
    assert stepper.done.wait(TIMEOUT)
    compute.call(lambda: setattr(clock, "now", clock.now + 1))  # deep in debt now
    assert compute.call(lambda: "served")  # no step is coming: served all the same


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
