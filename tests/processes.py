"""Moved to harness/processes.py (shared by tests/ and bench/ without either importing the
other). Kept only for tests/cluster/conftest.py until it imports harness.processes."""

from harness.processes import *  # noqa: F401,F403
from harness.processes import _serving, _spawn  # noqa: F401
