"""gunicorn's logs as JSON lines (``EDGE_LOG_FORMAT=json``, ``python -m rest_edge --log-format json``).

``JsonLogger`` is a ``logger_class``: gunicorn's error log (and with it the app's ``rest_edge``
logger, which ``post_fork`` sends there) and its access log get the JSON formatter of
``inference_service.log_format``. An access line's fields are the request's, not
``access_log_format``'s text: ``method``, ``path``, ``query``, ``status``, ``duration_s``,
``bytes``, ``remote_addr``, ``user_agent`` and ``request_id`` (the ``X-Request-Id`` response
header, else the request's). Records of other libraries (warnings included), which gunicorn
leaves to Python's last-resort handler, become JSON lines on stderr too.

The text format is gunicorn's own Logger, untouched: this module is only loaded for JSON.
Imported in the arbiter: no grpc, prometheus_client or app here.
"""

from __future__ import annotations

import logging

from gunicorn import glogging

from inference_service.log_format import JsonFormatter, json_handler

LOGGER_CLASS = "rest_edge.gunicorn_logging.JsonLogger"


def _status_code(status) -> int | str | None:
    if isinstance(status, str):
        status = status.split(None, 1)[0] if status.strip() else None
    try:
        return int(status) if status is not None else None
    except ValueError:
        return status


class JsonLogger(glogging.Logger):
    def setup(self, cfg) -> None:
        super().setup(cfg)
        formatter = JsonFormatter()
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                if getattr(handler, "_gunicorn", False):
                    handler.setFormatter(formatter)
        # Everything else (grpc's Python logger, py.warnings, ...) would reach Python's
        # last-resort handler: plain text on stderr. Same level (WARNING), but JSON.
        root = logging.getLogger()
        if not root.handlers:
            root.addHandler(json_handler(level=logging.WARNING))
        logging.captureWarnings(True)

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        try:
            atoms = self.atoms(resp, req, environ, request_time)
            method = environ.get("REQUEST_METHOD") or "-"
            path = environ.get("PATH_INFO") or "-"
            status = _status_code(atoms.get("s"))
            request_id = atoms.get("{x-request-id}o") or atoms.get("{x-request-id}i")
            fields = {
                "remote_addr": atoms.get("h"),
                "method": method,
                "path": path,
                "query": environ.get("QUERY_STRING") or None,
                "protocol": environ.get("SERVER_PROTOCOL"),
                "status": status,
                "duration_s": round(request_time.total_seconds(), 6),
                "bytes": atoms.get("B"),
                "user_agent": environ.get("HTTP_USER_AGENT"),
                "request_id": request_id,
            }
            self.access_log.info("%s %s %s", method, path, status, extra=fields)
        except Exception:  # noqa: BLE001 - as gunicorn's own access(): never fail a request
            self.error_log.exception("access log failed")
