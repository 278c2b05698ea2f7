"""gunicorn settings of the REST edge (plain module-level settings, hooks are functions).

Run:  gunicorn -c python:rest_edge.gunicorn_conf
      (the app, ``rest_edge.app:create_app()``, comes from ``wsgi_app`` below)

Environment: EDGE_BIND, EDGE_WORKERS, EDGE_THREADS, EDGE_WORKER_TIMEOUT, EDGE_LOG_LEVEL,
EDGE_LOG_FORMAT, EDGE_CONTROL_SOCKET, PROMETHEUS_MULTIPROC_DIR (see the metrics hooks below);
the app itself reads INFERENCE_TARGET, EDGE_ROUTING, EDGE_API_KEYS, EDGE_MAX_BODY_BYTES (see rest_edge.app).

This module is read in the arbiter: importing it imports no prometheus_client, grpc or app.
A bad numeric or enumerated variable stops it with an error naming the variable
(inference_service.settings), as the matching flag of ``python -m rest_edge`` would.
"""

import glob as _glob
import logging as _logging
import os as _os
import shutil as _shutil
import tempfile as _tempfile

from inference_service.settings import LOG_LEVELS as _LOG_LEVELS
from inference_service.settings import from_environment as _from_environment

wsgi_app = "rest_edge.app:create_app()"

bind = _from_environment("EDGE_BIND", "127.0.0.1:8000")

# gthread: a stream holds one thread, not the worker; the main loop keeps heartbeating, so a
# long stream is not killed by ``timeout``. ``threads`` caps concurrent streams per worker.
# The subclass (rest_edge/worker.py) only changes the body of the answers gunicorn itself
# gives to requests it refuses before the app (bad request line, headers, Content-Length):
# OpenAI-shaped JSON, same status; and it never answers a request twice.
worker_class = "rest_edge.worker.JsonErrorThreadWorker"
workers = _from_environment("EDGE_WORKERS", 2, int)
threads = _from_environment("EDGE_THREADS", 8, int)

# Never fork with a gRPC channel open: the app (and its channel) is built in each worker.
preload_app = False

# The hung-worker detector, not a request limit: a gthread worker's main loop heartbeats
# about once a second whatever its request threads are doing, so a long stream never trips
# it; a worker silent for this long is stuck and gets restarted. A request's own limit is
# EDGE_REQUEST_TIMEOUT (the gRPC deadline, see rest_edge.app).
timeout = _from_environment("EDGE_WORKER_TIMEOUT", 30, int)
graceful_timeout = 30
keepalive = 5

# gunicorn >= 25.1 opens a control socket at one fixed per-user path by default, so two
# instances on a host (the edge next to another gunicorn, parallel test runs) collide on it.
# Off unless EDGE_CONTROL_SOCKET names a path for this instance.
_control_socket = _os.environ.get("EDGE_CONTROL_SOCKET")
if _control_socket:
    control_socket = _control_socket
else:
    control_socket_disable = True

accesslog = "-"
errorlog = "-"
loglevel = _from_environment("EDGE_LOG_LEVEL", "info", str.lower, _LOG_LEVELS)

# EDGE_LOG_FORMAT=json: the error log, the app's log and the access log as JSON lines
# (rest_edge/gunicorn_logging.py); text (the default) is gunicorn's own format, untouched.
if _from_environment("EDGE_LOG_FORMAT", "text", str.lower, ("text", "json")) == "json":
    logger_class = "rest_edge.gunicorn_logging.JsonLogger"


def post_fork(server, worker):
    """Send the app's ``rest_edge`` log records to gunicorn's error log, at its level."""
    app_log = _logging.getLogger("rest_edge")
    error_log = _logging.getLogger("gunicorn.error")
    app_log.handlers = list(error_log.handlers)
    app_log.setLevel(error_log.level)
    app_log.propagate = False


# --- /metrics means the whole edge --------------------------------------------------------
# prometheus_client's multiprocess mode (see rest_edge.metrics): the workers write their
# metric values into files of one directory, named by PROMETHEUS_MULTIPROC_DIR, and /metrics
# merges them. The arbiter sets it up before the first fork, so every worker inherits it.

_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Set to the directory's path when on_starting created it (it is removed on exit).
_PRIVATE_DIR = "EDGE_PRIVATE_METRICS_DIR"


def on_starting(server):
    """The workers' metrics directory, before any worker exists.

    PROMETHEUS_MULTIPROC_DIR set by the operator: created if missing, and its ``*.db`` files
    (the counts of a previous run) removed. Unset: a fresh private directory (mode 0700) under
    the temporary directory, removed when the arbiter exits. A master started by USR2 shares
    its parent's directory as it is: both generations' workers serve during the handover and
    their counts add up.
    """
    path = _os.environ.get(_MULTIPROC_DIR)
    if path and server.master_pid:  # started by USR2; the old master's workers are writing here
        _os.makedirs(path, exist_ok=True)
        server.log.info("Metrics: workers share %s (with the old master's)", path)
        return
    if not path or _os.environ.get(_PRIVATE_DIR) == path:  # unset, or another edge's private one
        path = _tempfile.mkdtemp(prefix="rest-edge-metrics-")
        _os.environ[_MULTIPROC_DIR] = path
        _os.environ[_PRIVATE_DIR] = path
        server.log.info("Metrics: workers share %s (private, removed on exit)", path)
        return
    _os.makedirs(path, exist_ok=True)
    for name in _glob.glob(_os.path.join(path, "*.db")):
        _os.remove(name)
    server.log.info("Metrics: workers share %s (emptied at start)", path)


def child_exit(server, worker):
    """Arbiter, once a worker has died (any cause, SIGKILL too): drop its share of the
    ``live*`` gauges (in flight). Its counters and histograms stay: totals never go back."""
    if _os.environ.get(_MULTIPROC_DIR):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def pre_exec(server):
    """USR2, in the child about to exec the new master (whose environment is the one gunicorn
    started with): hand it the metrics directory, so the two generations share it."""
    path = _os.environ.get(_MULTIPROC_DIR)
    if path:
        server.cfg.env_orig[_MULTIPROC_DIR] = path
        if _os.environ.get(_PRIVATE_DIR) == path:
            server.cfg.env_orig[_PRIVATE_DIR] = path


def _old_master_alive(server):
    """A USR2 child's old master still runs while it is our parent. gunicorn itself notices
    the parent is gone only on its next loop turn (up to a second later), so a TERM in that
    window would otherwise find ``master_pid`` still set and leave the directory behind."""
    return bool(server.master_pid) and server.master_pid == _os.getppid()


def on_exit(server):
    """Remove the private metrics directory, unless another master still uses it (a USR2
    child not reaped yet, or the old master still alive beside us)."""
    path = _os.environ.get(_MULTIPROC_DIR)
    if (path and _os.environ.get(_PRIVATE_DIR) == path
            and server.reexec_pid == 0 and not _old_master_alive(server)):
        _shutil.rmtree(path, ignore_errors=True)
