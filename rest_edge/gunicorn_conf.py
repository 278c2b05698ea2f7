"""gunicorn settings of the REST edge (plain module-level settings, hooks are functions).

Run:  gunicorn -c python:rest_edge.gunicorn_conf
      (the app, ``rest_edge.app:create_app()``, comes from ``wsgi_app`` below)

Environment: EDGE_BIND, EDGE_WORKERS, EDGE_THREADS, EDGE_WORKER_TIMEOUT, EDGE_LOG_LEVEL,
EDGE_CONTROL_SOCKET; the app itself reads INFERENCE_TARGET, EDGE_API_KEYS,
EDGE_MAX_BODY_BYTES (see rest_edge.app).
"""

import logging as _logging
import os as _os

wsgi_app = "rest_edge.app:create_app()"

bind = _os.environ.get("EDGE_BIND", "127.0.0.1:8000")

# gthread: a stream holds one thread, not the worker; the main loop keeps heartbeating, so a
# long stream is not killed by ``timeout``. ``threads`` caps concurrent streams per worker.
# The subclass (rest_edge/worker.py) only changes the body of the answers gunicorn itself
# gives to requests it refuses before the app (bad request line, headers, Content-Length):
# OpenAI-shaped JSON, same status; and it never answers a request twice.
worker_class = "rest_edge.worker.JsonErrorThreadWorker"
workers = int(_os.environ.get("EDGE_WORKERS", "2"))
threads = int(_os.environ.get("EDGE_THREADS", "8"))

# Never fork with a gRPC channel open: the app (and its channel) is built in each worker.
preload_app = False

# The hung-worker detector, not a request limit: a gthread worker's main loop heartbeats
# about once a second whatever its request threads are doing, so a long stream never trips
# it; a worker silent for this long is stuck and gets restarted. A request's own limit is
# EDGE_REQUEST_TIMEOUT (the gRPC deadline, see rest_edge.app).
timeout = int(_os.environ.get("EDGE_WORKER_TIMEOUT", "30"))
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
loglevel = _os.environ.get("EDGE_LOG_LEVEL", "info")


def post_fork(server, worker):
    """Send the app's ``rest_edge`` log records to gunicorn's error log, at its level."""
    app_log = _logging.getLogger("rest_edge")
    error_log = _logging.getLogger("gunicorn.error")
    app_log.handlers = list(error_log.handlers)
    app_log.setLevel(error_log.level)
    app_log.propagate = False
