"""Old home of the benchmark helpers, kept only so that bench/soak.py and bench/contention.py
keep importing them from here. New code imports from where they live:

* bench/measure.py - the stream record, timing, the one decode formula, N streams at once;
* bench/sse.py     - one streamed OpenAI chat completion over HTTP, timed;
* bench/procfs.py  - memory and CPU of processes, from /proc;
* bench/prompts.py - prompts, filler text, the no-end-of-turn logit bias;
* tests/processes.py - starting, waiting for and stopping processes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

from bench.procfs import CpuAudit, cpu_busy_fraction  # noqa: F401
from bench.procfs import proc_ticks as _proc_ticks  # noqa: F401
from bench.prompts import filler_text  # noqa: F401
from bench.sse import chat_stream as measure_stream  # noqa: F401
from tests.processes import free_port, stop_process  # noqa: F401


def wait_ready(base_url: str, model: Optional[str], proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    """Waits until GET base_url/v1/models answers 200; RuntimeError if ``proc`` exits or time runs out."""
    from tests.processes import HttpServer, http_ok, wait_until

    wait_until(HttpServer(proc, Path("/dev/null"), base_url), lambda: http_ok(base_url + "/v1/models"), "server", timeout_s)
