"""The one thread of the process that runs llama.cpp's compute (``llama_decode``, ``llama_encode``).

Why one thread: the llama.cpp build here runs ggml's CPU threads with OpenMP. Every thread
that calls ``llama_decode`` becomes the master of an OpenMP team of its own, and libgomp keeps
that team for as long as the calling thread lives. Once the process holds more OpenMP threads
than there are cores, libgomp stops spinning at its barriers ("throttled" spinning) and every
one of ggml's few hundred barriers per step sleeps and wakes in the kernel. Measured on the
default model, 2 cores: a bare decode loop ran 106 and 97 tok/s, and 55 and 41 tok/s once a
second thread that had called ``llama_decode`` stayed alive; the engine's single stream went
from 95 to 60 tok/s after one embeddings request served by a gRPC worker thread (which lives
on). ``OMP_WAIT_POLICY=active`` made it worse (27 tok/s: the idle team spins on a core).

So every llama.cpp compute call of the process runs here:

* each ``BatchedDecoder`` (one per loaded llama.cpp model) registers as a *stepper*; the loop
  takes one step of one stepper at a time, round robin among those with work;
* anything else (an embedding's decode) is a *job*: ``call(fn)`` runs ``fn`` on this thread
  and returns its result (inline when already on it).

Jobs and steps share the thread by compute time: while steps are wanted, jobs get
``job_share`` of it (a quarter by default; ``serve --embeddings-share``). One embedding decode
of a 20-token text takes ~85 ms on the default model, 2 cores, against ~10 ms a decode step;
taking turns one for one, a chat stream beside a client embedding back to back fell from 98
to 9 tok/s. Steps are
"wanted" while a stepper has work or had a step within the last few milliseconds (its
sequences are sampling their next token). With nothing else to do, jobs take all of it.

On 2 cores one computation at a time is also what is fastest: two concurrent 2-thread decodes
would spin-wait on each other's cores.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Protocol, TypeVar

from inference_service.per_process import PerProcess

T = TypeVar("T")

JOB_SHARE = 0.25
# A stepper that stepped this recently is sampling its next token: a job waits this long for it.
_STEP_COMING_SECONDS = 0.005
# Bounds on the jobs' credit (seconds of compute): a job arriving after a long run of steps
# goes at once but no burst of jobs follows; a long run of jobs alone is not paid back for
# more than this once steps come.
_MOST_CREDIT = 0.05
_MOST_DEBT = 0.25


class Stepper(Protocol):
    """Work that comes in steps (a decoder). Every method but ``run_step`` is called holding
    the compute thread's ``condition``; ``run_step`` is called without it."""

    def has_work(self) -> bool: ...

    def plan_step(self) -> Any:
        """What the next step computes, or None for nothing after all. May wait on the condition."""

    def run_step(self, plan: Any) -> BaseException | None:
        """Computes the step; returns (or raises) the error that ended it, if any."""

    def finish_step(self, plan: Any, error: BaseException | None) -> None: ...


class _Job:
    __slots__ = ("fn", "result", "error", "done")

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class ComputeThread:
    def __init__(self, name: str = "llamacpp-compute", job_share: float = JOB_SHARE,
                 clock: Callable[[], float] = time.perf_counter):
        self._mutex = threading.RLock()
        self.condition = threading.Condition(self._mutex)
        self._steppers: list[Stepper] = []
        self._jobs: deque[_Job] = deque()
        self.set_job_share(job_share)
        self._job_credit = 0.0  # seconds of compute jobs may take before the next wanted step
        self._clock = clock
        self._last_step_end = float("-inf")  # time.monotonic()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def set_job_share(self, share: float) -> None:
        """The share of compute time jobs get while steps are wanted (0 < share < 1)."""
        if not 0 < share < 1:
            raise ValueError(f"the jobs' share must be between 0 and 1, not {share}")
        with self.condition:
            self.job_share = share
            self._credit_per_step_second = share / (1 - share)

    def waiter(self) -> threading.Condition:
        """A condition on ``condition``'s lock for one waiter to be woken alone (``notify`` on
        ``condition`` wakes everyone waiting there: the compute thread and every caller)."""
        return threading.Condition(self._mutex)

    def on_it(self) -> bool:
        return threading.current_thread() is self._thread

    def register(self, stepper: Stepper) -> None:
        with self.condition:
            self._steppers.append(stepper)
            self.condition.notify_all()

    def unregister(self, stepper: Stepper) -> None:
        """No step of ``stepper`` starts after this returns (one already running may finish)."""
        with self.condition:
            if stepper in self._steppers:
                self._steppers.remove(stepper)

    def call(self, fn: Callable[[], T]) -> T:
        """Runs ``fn`` on the compute thread and returns what it returns (raises what it raises)."""
        if self.on_it():
            return fn()
        job = _Job(fn)
        with self.condition:
            self._jobs.append(job)
            self.condition.notify_all()
            while not job.done:
                self.condition.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _next(self) -> tuple[_Job | None, Stepper | None]:
        """Under the condition: the job or the stepper to serve now (waits for one)."""
        while True:
            ready = [s for s in self._steppers if s.has_work()]
            coming = 0.0 if ready else self._last_step_end + _STEP_COMING_SECONDS - time.monotonic()
            if self._jobs and (self._job_credit >= 0 or not (ready or coming > 0)):
                return self._jobs.popleft(), None
            if ready:
                stepper = ready[0]
                # Round robin: the stepper served goes to the back.
                self._steppers.remove(stepper)
                self._steppers.append(stepper)
                return None, stepper
            self.condition.wait(coming if self._jobs else None)

    def _run(self) -> None:
        while True:
            with self.condition:
                job, stepper = self._next()
                plan = stepper.plan_step() if stepper is not None else None
            started = self._clock()
            if job is not None:
                try:
                    job.result = job.fn()
                except BaseException as error:  # handed to the caller, raised there
                    job.error = error
                with self.condition:
                    self._job_credit = max(self._job_credit - (self._clock() - started), -_MOST_DEBT)
                    job.done = True
                    self.condition.notify_all()
                continue
            if plan is None:
                continue
            try:
                outcome = stepper.run_step(plan)
            except Exception as error:  # the stepper's to report; the thread serves on
                outcome = error
            with self.condition:
                earned = (self._clock() - started) * self._credit_per_step_second
                self._job_credit = min(self._job_credit + earned, _MOST_CREDIT)
                self._last_step_end = time.monotonic()
                stepper.finish_step(plan, outcome)
                self.condition.notify_all()


_shared: PerProcess[ComputeThread] = PerProcess(ComputeThread)  # a forked child makes its own


def shared() -> ComputeThread:
    """The process's compute thread, started on first use."""
    return _shared.get()
